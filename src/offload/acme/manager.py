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
from offload.acme.shared import SharedAcme, leaf_expiry
from offload.acme.storage import AcmeStorage, replace_private
from offload.config.model import AcmeConfig
from offload.observe.log import fields

_log = logging.getLogger("offload.acme")

LOCK_RETRY = dt.timedelta(seconds=5)
"""With a shared store: how soon to look again when another node is ordering a name."""
ALONE_WITHIN = dt.timedelta(days=7)
"""With a shared store that cannot be reached: a node orders on its own only when its
certificate is missing or expires within this long (a fleet must not go dark because Redis
did, nor order once per node when it need not)..."""
ALONE_AFTER = dt.timedelta(seconds=30)
"""... and only once the store has been unreachable this long (a blip, or a slow first
connection while the machine starts, must not make every node order)."""

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
                 rng: random.Random | None = None, shared: SharedAcme | None = None) -> None:
        self._storage = storage
        self._issuer = issuer
        self._shared = shared
        self._unreachable_since: dt.datetime | None = None
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
        shared = self._shared
        if shared is None:
            self._order(entry, now)
            return
        if self._adopt(shared, entry, now):
            return
        lease = shared.lock(entry.names)
        if lease is not None:
            self._unreachable_since = None
        if lease is False:
            entry.due = now + LOCK_RETRY
            _log.info("ACME certificate being ordered by another node", extra=fields(
                names=list(entry.names), node=shared.holder(entry.names)))
            return
        if lease is None or lease is True:  # the store is unreachable
            since = self._unreachable_since = self._unreachable_since or now
            expiry = leaf_expiry(self._local(entry))
            if now - since >= ALONE_AFTER and (expiry is None or expiry - now < ALONE_WITHIN):
                _log.warning("ACME store unreachable: ordering without the fleet",
                             extra=fields(names=list(entry.names)))
                self._order(entry, now)
            else:
                entry.due = now + LOCK_RETRY
            return
        try:
            if self._adopt(shared, entry, now):  # finished by another node meanwhile
                return
            if shared.account_key():
                self._issuer.forget_account()
            with shared.keeping(lease):
                bundle = self._order(entry, now)
            if bundle is not None:
                shared.publish(entry.names, lease, bundle)
        finally:
            shared.release(lease)

    def _local(self, entry: _Entry) -> bytes:
        try:
            return self._storage.certificate(entry.names).read_bytes()
        except OSError:
            return b""

    def _adopt(self, shared: SharedAcme, entry: _Entry, now: dt.datetime) -> bool:
        """Use the fleet's certificate for ``entry`` if it is not due; whether it was."""
        bundle = shared.fetch(entry.names)
        if bundle is None:
            return False
        try:
            issued = x509.load_pem_x509_certificate(bundle)
        except ValueError:
            return False
        due = next_attempt(issued, entry.names, entry.jitter, now)
        if due <= now:
            return False
        if shared.install(entry.names, bundle):
            _log.info("ACME certificate taken from the fleet", extra=fields(
                names=list(entry.names), renew_at=due.isoformat()))
        entry.due = due
        entry.backoff.succeeded()
        return True

    def _order(self, entry: _Entry, now: dt.datetime) -> bytes | None:
        """Order ``entry`` from the CA and write it; the bundle, or None when it failed."""
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
            return None
        replace_private(path, bundle)
        entry.backoff.succeeded()
        issued = x509.load_pem_x509_certificate(bundle)  # the first certificate: the leaf
        entry.due = next_attempt(issued, entry.names, entry.jitter, now)
        _log.info("ACME certificate obtained", extra=fields(
            names=list(entry.names), file=str(path), renew_at=entry.due.isoformat()))
        return bundle
