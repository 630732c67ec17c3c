"""When to ask the CA for a certificate: renewal at a third of the lifetime left, with jitter,
and exponential backoff after a failure. Plain functions of the time they are given.

Renewing when a third of the lifetime remains (day 60 of 90, day 31 of 47) leaves two
attempts' worth of backoff and a CA outage of days before the old certificate expires. The
jitter (up to 5 % of the lifetime earlier) spreads the renewals of many certificates, and of a
fleet restarted together, instead of sending them all to the CA in the same second.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509

JITTER_FRACTION = 0.05
BACKOFF_MAX = dt.timedelta(days=1)


def renewal_time(certificate: x509.Certificate, jitter: float) -> dt.datetime:
    """When to renew ``certificate``; ``jitter`` in [0, 1) picks the point in the window."""
    not_before = certificate.not_valid_before_utc
    not_after = certificate.not_valid_after_utc
    lifetime = not_after - not_before
    return not_after - lifetime / 3 - lifetime * (JITTER_FRACTION * jitter)


def covers(certificate: x509.Certificate, names: tuple[str, ...]) -> bool:
    """Whether ``certificate`` lists every one of ``names`` (the config may have grown)."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return False
    listed = {name.lower() for name in san.value.get_values_for_type(x509.DNSName)}
    return set(names) <= listed


def next_attempt(certificate: x509.Certificate | None, names: tuple[str, ...],
                 jitter: float, now: dt.datetime) -> dt.datetime:
    """When the certificate for ``names`` should next be requested (``now`` if at once)."""
    if certificate is None or not covers(certificate, names):
        return now
    return max(now, renewal_time(certificate, jitter))


@dataclass
class Backoff:
    """Delays after consecutive failures: ``first``, doubling, at most a day."""

    first: dt.timedelta
    failures: int = 0

    def failed(self) -> dt.timedelta:
        delay: dt.timedelta = min(self.first * (2 ** min(self.failures, 32)), BACKOFF_MAX)
        self.failures += 1
        return delay

    def succeeded(self) -> None:
        self.failures = 0
