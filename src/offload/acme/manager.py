"""The ACME process: keep every configured certificate issued and renewed.

The supervisor forks it beside the workers (it must neither block nor run threads itself).
It looks at each certificate file in the storage directory, sleeps until the earliest one is
due (:mod:`offload.acme.schedule`), orders it (:mod:`offload.acme.issuer`) and writes the
result by rename. Writing is all it does to deploy: the supervisor watches the directory and
swaps the new certificate into every worker like any other changed file. A failed order is
logged and retried with backoff while the current certificate keeps serving.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from offload.acme.issuer import AcmeFailure, AcmeIssuer
from offload.acme.schedule import Backoff, next_attempt
from offload.acme.storage import AcmeStorage, replace_private
from offload.config.model import AcmeConfig
from offload.observe.log import fields

_log = logging.getLogger("offload.acme")

Wait = Callable[[float], bool]
"""Sleep up to this many seconds; True when the process must stop."""


@dataclass
class _Entry:
    names: tuple[str, ...]
    jitter: float
    backoff: Backoff
    due: dt.datetime | None = field(default=None)


def _read_certificate(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


class AcmeManager:
    """Issues and renews the certificates of one ``[acme]`` section."""

    def __init__(self, config: AcmeConfig, storage: AcmeStorage, issuer: AcmeIssuer,
                 rng: random.Random | None = None) -> None:
        self._storage = storage
        self._issuer = issuer
        rng = rng or random.Random()  # noqa: S311 (jitter, not a secret)
        first = dt.timedelta(seconds=config.retry_after)
        self._entries = [_Entry(c.names, rng.random(), Backoff(first))
                         for c in config.certificates]

    def run(self, wait: Wait, now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
            ) -> None:
        """Until ``wait`` says stop: renew what is due, then sleep until the next is."""
        self._storage.create()
        while True:
            current = now()
            for entry in self._entries:
                if entry.due is None:
                    certificate = _read_certificate(self._storage.certificate(entry.names))
                    entry.due = next_attempt(certificate, entry.names, entry.jitter, current)
                    if entry.due > current:
                        _log.info("ACME certificate valid", extra=fields(
                            names=list(entry.names), renew_at=entry.due.isoformat()))
                if entry.due <= current:
                    self._obtain(entry, current)
                    current = now()
            earliest = min(entry.due for entry in self._entries if entry.due is not None)
            if wait(max(0.0, (earliest - now()).total_seconds())):
                return

    def _obtain(self, entry: _Entry, now: dt.datetime) -> None:
        path = self._storage.certificate(entry.names)
        _log.info("ACME certificate requested", extra=fields(names=list(entry.names)))
        try:
            bundle = self._issuer.issue(entry.names)
        except Exception as failure:  # any failure: log it, back off, keep serving
            reason = str(failure) if isinstance(failure, AcmeFailure) else (
                f"{type(failure).__name__}: {failure}")
            delay = entry.backoff.failed()
            entry.due = now + delay
            _log.error("ACME certificate request failed; the current certificate keeps "
                       "serving", extra=fields(names=list(entry.names), reason=reason,
                                               retry_in=int(delay.total_seconds())))
            return
        replace_private(path, bundle)
        entry.backoff.succeeded()
        issued = x509.load_pem_x509_certificate(bundle)  # the first certificate: the leaf
        entry.due = next_attempt(issued, entry.names, entry.jitter, now)
        _log.info("ACME certificate obtained", extra=fields(
            names=list(entry.names), file=str(path), renew_at=entry.due.isoformat()))
