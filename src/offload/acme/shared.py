"""The ACME process's side of the fleet's shared store (``acme.shared = true``).

Blocking calls for the ACME process's main thread (it orders certificates, which blocks), and
one background task on the process's fleet loop (:class:`~offload.fleet.loop_thread.
LoopThread`) that every :data:`MIRROR_INTERVAL`:

* says this node is alive (the nodes a challenge must reach);
* copies pending challenge answers from Redis into the local storage directory, where this
  node's workers answer them, and acknowledges each; removes them when they leave Redis;
* copies a certificate another node obtained into the local storage directory, when it is
  newer than the local one; the supervisor's file watcher then swaps it into the workers, as
  for any certificate file. A node started empty serves the fleet's certificates this way
  within about a second.

Certificates stay files on every node (the supervisor, the workers and a restart without Redis
read them from there); Redis is where nodes agree on who orders and hand the result around.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from offload.acme.storage import AcmeStorage, replace_private, valid_name, valid_token
from offload.fleet.acme_store import AcmeStore, Lease
from offload.fleet.loop_thread import LoopThread
from offload.observe.log import fields
from offload.tls.keys import key_pem

_log = logging.getLogger("offload.acme")

MIRROR_INTERVAL: Final = 0.5
"""Seconds between two looks at the shared store (challenges and certificates)."""
LEASE: Final = 120.0
"""Seconds a lock is held without renewal; renewed every third of it while ordering."""
CHALLENGE_WAIT: Final = 10.0
"""Longest wait for every live node to hold a challenge answer before the CA is told."""
SETTLE: Final = 3.0
"""Seconds an ACME process with a shared store waits after start before it orders (it takes
certificates from the fleet at once): time for nodes started together to heartbeat."""
CALL_TIMEOUT: Final = 10.0
"""Longest wait of the main thread for one store operation."""


def leaf_expiry(bundle: bytes) -> dt.datetime | None:
    """The first certificate's notAfter, or None when ``bundle`` holds none."""
    try:
        return x509.load_pem_x509_certificate(bundle).not_valid_after_utc
    except ValueError:
        return None


class SharedAcme:
    """The shared store as the ACME manager and issuer use it."""

    def __init__(self, store: AcmeStore, thread: LoopThread, storage: AcmeStorage,
                 certificates: tuple[tuple[str, ...], ...]) -> None:
        self.store = store
        self.thread = thread
        self.storage = storage
        self._certificates = certificates
        self._seen_fences: dict[str, int] = {}
        self._mirrored: set[str] = set()  # challenge fields this node placed from Redis
        self._own: set[str] = set()  # challenge fields this node published itself
        self._nodes: list[str] = []

    # the manager's part (main thread)

    def start(self) -> None:
        self.thread.start()
        self.thread.spawn(self._mirror_forever())

    def stop(self) -> None:
        self.thread.stop()

    def fetch(self, names: tuple[str, ...]) -> bytes | None:
        """The fleet's certificate for ``names``, if there is one."""
        shared = self.thread.run(self.store.certificate(names[0]), CALL_TIMEOUT)
        return None if shared is None else shared.bundle

    def lock(self, names: tuple[str, ...]) -> Lease | bool | None:
        """The lease on ``names``; False: another node holds it; None: the store failed."""
        return self.thread.run(self.store.acquire(names[0], int(LEASE * 1000)), CALL_TIMEOUT)

    def holder(self, names: tuple[str, ...]) -> str | None:
        return self.thread.run(self.store.holder(names[0]), CALL_TIMEOUT)

    def release(self, lease: Lease) -> None:
        self.thread.run(self.store.release(lease), CALL_TIMEOUT)

    @contextlib.contextmanager
    def keeping(self, lease: Lease) -> Iterator[list[bool]]:
        """Renew ``lease`` in the background while the block runs; the list yielded holds
        False once a renewal found the lease lost."""
        held = [True]

        async def renew() -> None:
            while True:
                await asyncio.sleep(LEASE / 3)
                if not await self.store.renew(lease, int(LEASE * 1000)):
                    held[0] = False
                    _log.warning("ACME lease lost while ordering; the result will not "
                                 "replace the fleet's", extra=fields(lock=lease.key))
                    return
        future = self.thread.spawn(renew())
        try:
            yield held
        finally:
            future.cancel()

    def publish(self, names: tuple[str, ...], lease: Lease, bundle: bytes) -> bool:
        """Store an obtained certificate for the fleet (fenced); whether it was stored."""
        result = self.thread.run(self.store.put_certificate(names[0], lease, bundle),
                                 CALL_TIMEOUT)
        if result == 1:
            self._seen_fences[names[0]] = lease.token
            return True
        reason = ("the lease was lost" if result == -1
                  else "a later order was stored first" if result == -2
                  else "the store is unavailable")
        _log.warning("ACME certificate not stored for the fleet", extra=fields(
            names=list(names), reason=reason))
        return False

    def account_key(self) -> bool:
        """Make the local account key the fleet's (the first node's key wins); whether the
        local file changed (the issuer must then reconnect)."""
        path = self.storage.account_key
        try:
            local: bytes | None = path.read_bytes()
        except FileNotFoundError:
            local = None
        offer = local if local is not None else key_pem(ec.generate_private_key(ec.SECP256R1()))
        shared = self.thread.run(self.store.account_key(offer), CALL_TIMEOUT)
        chosen = shared if isinstance(shared, bytes) else offer
        if chosen == local:
            return False
        replace_private(path, chosen)
        _log.info("ACME account key taken from the fleet" if chosen != offer
                  else "ACME account key created for the fleet", extra=fields(file=str(path)))
        return True

    # challenges (the issuer's storage calls these, main thread)

    def publish_challenge(self, field: str, answer: bytes) -> None:
        """Put a challenge answer where every node finds it and wait (bounded) until every
        live node holds it: the CA may ask any of them."""
        if not self.thread.run(self.store.put_challenge(field, answer), CALL_TIMEOUT):
            _log.warning("ACME challenge not shared: only this node can answer it",
                         extra=fields(challenge=field))
            return
        self._own.add(field)
        deadline = time.monotonic() + CHALLENGE_WAIT
        waiting: set[str] = set()
        while time.monotonic() < deadline:
            nodes = self.thread.run(self.store.heartbeat(), CALL_TIMEOUT)
            acks = self.thread.run(self.store.acks(field), CALL_TIMEOUT)
            if not isinstance(nodes, list) or not isinstance(acks, set):
                break
            waiting = set(nodes) - acks - {self.store.node}
            if not waiting:
                return
            time.sleep(0.1)  # acknowledgements arrive in Redis; nothing here to wait on
        _log.warning("ACME challenge not acknowledged by every node in time",
                     extra=fields(challenge=field, waiting=sorted(waiting)))

    def withdraw_challenge(self, field: str) -> None:
        self._own.discard(field)
        self.thread.run(self.store.remove_challenge(field), CALL_TIMEOUT)

    # the background task (fleet loop thread)

    async def _mirror_forever(self) -> None:
        while True:
            try:
                await self.mirror()
            except (OSError, ValueError) as error:  # a local file problem: say so, go on
                _log.error("ACME mirror failed", extra=fields(reason=str(error)))
            except Exception:  # a bug, or data no check foresaw, must not end the mirroring
                _log.exception("ACME mirror failed")
            await asyncio.sleep(MIRROR_INTERVAL)

    async def mirror(self) -> None:
        """One look at the store: heartbeat, challenges, certificates."""
        nodes = await self.store.heartbeat()
        if nodes is None:
            return
        self._nodes = nodes
        pending = await self.store.challenges()
        if pending is not None:
            await self._mirror_challenges(pending)
        for names in self._certificates:
            await self._mirror_certificate(names)

    async def _mirror_challenges(self, pending: dict[str, bytes]) -> None:
        for field, answer in pending.items():
            if field in self._own or field in self._mirrored:
                continue
            kind, _, value = field.partition("/")
            if kind == "http-01" and valid_token(value):
                AcmeStorage.put_http01(self.storage, value, answer.decode("ascii", "replace"))
            elif kind == "tls-alpn-01" and valid_name(value):
                AcmeStorage.put_tls_alpn01(self.storage, value, answer)
            else:  # never a file name of anyone's choosing, even one the secret sealed
                continue
            self._mirrored.add(field)
            await self.store.ack(field)
        for field in self._mirrored - set(pending):
            kind, _, value = field.partition("/")
            if kind == "http-01":
                AcmeStorage.remove_http01(self.storage, value)
            else:
                AcmeStorage.remove_tls_alpn01(self.storage, value)
            self._mirrored.discard(field)

    async def _mirror_certificate(self, names: tuple[str, ...]) -> None:
        first = names[0]
        fence = await self.store.certificate_fence(first)
        if fence is None or fence == self._seen_fences.get(first):
            return
        shared = await self.store.certificate(first)
        if shared is None:
            return
        self._seen_fences[first] = fence
        if self.install(names, shared.bundle):
            _log.info("ACME certificate taken from the fleet", extra=fields(
                names=list(names), fence=shared.fence))

    def install(self, names: tuple[str, ...], bundle: bytes) -> bool:
        """Write ``bundle`` as the local certificate for ``names`` unless the local one is the
        same or expires later; whether it was written."""
        path: Path = self.storage.certificate(names)
        shared_expiry = leaf_expiry(bundle)
        if shared_expiry is None:
            return False
        try:
            local = path.read_bytes()
        except FileNotFoundError:
            local = b""
        if local == bundle:
            return False
        local_expiry = leaf_expiry(local) if local else None
        if local_expiry is not None and local_expiry >= shared_expiry:
            return False
        replace_private(path, bundle)
        return True


class SharedAcmeStorage(AcmeStorage):
    """The storage directory, with challenge answers also published to every node."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.shared: SharedAcme | None = None

    def put_http01(self, token: str, key_authorization: str) -> None:
        super().put_http01(token, key_authorization)
        if self.shared is not None:
            self.shared.publish_challenge(f"http-01/{token}", key_authorization.encode("ascii"))

    def remove_http01(self, token: str) -> None:
        super().remove_http01(token)
        if self.shared is not None:
            self.shared.withdraw_challenge(f"http-01/{token}")

    def put_tls_alpn01(self, name: str, bundle: bytes) -> None:
        super().put_tls_alpn01(name, bundle)
        if self.shared is not None:
            self.shared.publish_challenge(f"tls-alpn-01/{name}", bundle)

    def remove_tls_alpn01(self, name: str) -> None:
        super().remove_tls_alpn01(name)
        if self.shared is not None:
            self.shared.withdraw_challenge(f"tls-alpn-01/{name}")


__all__ = ["CALL_TIMEOUT", "CHALLENGE_WAIT", "LEASE", "MIRROR_INTERVAL", "SETTLE", "SharedAcme",
           "SharedAcmeStorage", "leaf_expiry"]
