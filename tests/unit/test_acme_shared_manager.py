"""The ACME manager's decisions with a shared store, driven by a scripted store and issuer:
who orders, when a node waits, when it takes the fleet's certificate, when it goes alone."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

from tls_helpers import authority

from offload.acme.manager import ALONE_AFTER, LOCK_RETRY, AcmeManager
from offload.acme.storage import AcmeStorage
from offload.config.model import AcmeConfig
from offload.fleet.acme_store import Lease

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)
NAMES = ("site.test",)
LEASE = Lease("t:acme:lock:site.test", "me 7", 7)


def bundle(days_left: int) -> bytes:
    issued = authority().issue(list(NAMES), not_before=NOW - dt.timedelta(days=90 - days_left),
                               not_after=NOW + dt.timedelta(days=days_left))
    return issued.bundle()


class Store:
    """What the shared store answers, scripted; what the manager asked, recorded."""

    def __init__(self, lock: Lease | bool | None, fetched: list[bytes | None]) -> None:
        self._lock = lock
        self._fetched = fetched
        self.calls: list[str] = []
        self.installed: list[bytes] = []

    def fetch(self, names: tuple[str, ...]) -> bytes | None:
        self.calls.append("fetch")
        return self._fetched.pop(0) if self._fetched else None

    def lock(self, names: tuple[str, ...]) -> Lease | bool | None:
        self.calls.append("lock")
        return self._lock

    def holder(self, names: tuple[str, ...]) -> str | None:
        return "other"

    def release(self, lease: Lease) -> None:
        self.calls.append("release")

    @contextlib.contextmanager
    def keeping(self, lease: Lease) -> Iterator[list[bool]]:
        self.calls.append("keep")
        yield [True]

    def publish(self, names: tuple[str, ...], lease: Lease, data: bytes) -> bool:
        self.calls.append("publish")
        return True

    def account_key(self) -> bool:
        self.calls.append("account")
        return False

    def install(self, names: tuple[str, ...], data: bytes) -> bool:
        self.installed.append(data)
        return True


class Issuer:
    def __init__(self) -> None:
        self.orders = 0

    def issue(self, names: tuple[str, ...]) -> bytes:
        self.orders += 1
        return bundle(90)

    def forget_account(self) -> None:
        pass


def manager(tmp_path: Path, store: Store) -> tuple[AcmeManager, Issuer]:
    config = AcmeConfig(agree_to_terms=True, certificates=[{"names": list(NAMES)}])
    storage = AcmeStorage(tmp_path)
    storage.create()
    issuer = Issuer()
    return AcmeManager(config, storage, issuer, shared=store), issuer  # type: ignore[arg-type]


def run_once(acme: AcmeManager, at: dt.datetime) -> dt.datetime:
    """One pass of the manager's loop at ``at``; when it wants to run next."""
    waited: list[float] = []

    def wait(seconds: float) -> bool:
        waited.append(seconds)
        return True
    acme.run(wait, now=lambda: at)
    return at + dt.timedelta(seconds=waited[0])


def test_the_lease_holder_orders_once_publishes_and_releases(tmp_path: Path) -> None:
    store = Store(LEASE, [None, None])
    acme, issuer = manager(tmp_path, store)
    run_once(acme, NOW)
    assert issuer.orders == 1
    assert store.calls == ["fetch", "lock", "fetch", "account", "keep", "publish", "release"]


def test_a_node_that_finds_the_name_locked_waits_and_then_takes_the_result(
        tmp_path: Path) -> None:
    store = Store(False, [None])
    acme, issuer = manager(tmp_path, store)
    assert run_once(acme, NOW) == NOW + LOCK_RETRY
    assert issuer.orders == 0
    assert "release" not in store.calls
    fresh = bundle(90)
    store._fetched = [fresh]
    run_once(acme, NOW + LOCK_RETRY)
    assert issuer.orders == 0
    assert store.installed == [fresh]


def test_the_lock_is_checked_again_after_it_is_taken(tmp_path: Path) -> None:
    fresh = bundle(90)
    store = Store(LEASE, [None, fresh])  # finished by another node just before our lock
    acme, issuer = manager(tmp_path, store)
    run_once(acme, NOW)
    assert issuer.orders == 0
    assert store.calls == ["fetch", "lock", "fetch", "release"]
    assert store.installed == [fresh]


def test_a_certificate_due_for_renewal_in_the_store_is_not_taken(tmp_path: Path) -> None:
    store = Store(LEASE, [bundle(10), bundle(10)])  # a third of its life is long gone
    acme, issuer = manager(tmp_path, store)
    run_once(acme, NOW)
    assert issuer.orders == 1


def test_an_unreachable_store_makes_a_node_without_certificate_order_alone_later(
        tmp_path: Path) -> None:
    store = Store(None, [])
    acme, issuer = manager(tmp_path, store)
    at = NOW
    while at < NOW + ALONE_AFTER:
        at = run_once(acme, at)
        assert issuer.orders == 0, "ordered alone at the first blip"
    run_once(acme, at)
    assert issuer.orders == 1
    assert "publish" not in store.calls


def test_an_unreachable_store_never_makes_a_node_with_a_good_certificate_order(
        tmp_path: Path) -> None:
    store = Store(None, [])
    acme, issuer = manager(tmp_path, store)
    (tmp_path / "certificates" / "site.test.pem").write_bytes(bundle(29))  # due, not urgent
    at = NOW
    for _ in range(20):
        at = run_once(acme, at)
    assert at > NOW + ALONE_AFTER
    assert issuer.orders == 0
