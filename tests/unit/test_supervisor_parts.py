"""The supervisor's parts on their own: restart backoff, the ban relay, the admin API's host,
the certificate watch and the ACME component, each wired to a recording stand-in for the
worker pool (no processes, no sockets)."""

from __future__ import annotations

import os
import selectors
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tls_helpers import issued, write_bundle

from offload.config.loader import validate
from offload.config.model import BansConfig
from offload.observe.admin_api import WorkerInfo
from offload.observe.log import LogSetup
from offload.server.acme_child import AcmeComponent
from offload.server.admin_service import AdminService
from offload.server.ban_relay import BanRelay
from offload.server.cert_watch import CertificateWatch
from offload.server.children import BACKOFF_MAX, Forker, Instance, restart_delay
from offload.server.control import BanList, CertificatesChanged, Offences, ServerAdmin
from offload.server.prepare import Prepared, prepare
from offload.server.sockets import SocketSet
from offload.server.stats_hub import StatsHub


class RecordingWorkers:
    """The worker pool's side of :class:`~offload.server.admin_service.WorkerOps`, recording
    what would be sent to the workers."""

    def __init__(self) -> None:
        self.sent: list[object] = []
        self.restarts = 2

    def describe(self) -> tuple[WorkerInfo, ...]:
        return (WorkerInfo(101, 0, 1, "ready"), WorkerInfo(102, 1, 1, "draining"))

    def live(self) -> int:
        return 1

    def broadcast(self, message: object) -> None:
        self.sent.append(message)

    def collect(self, done: Callable[[], None]) -> None:
        done()


def _prepared(directory: Path, servers: list[str]) -> Prepared:
    write_bundle(directory, "site.pem", issued(("parts.test",)))
    config = validate({
        "frontends": [{"name": "web", "bind": "127.0.0.1:8443", "backend": "api",
                       "certificates": ["site.pem"]}],
        "backends": [{"name": "api", "servers": servers}],
    }, "test.toml")
    return prepare(config, "test.toml", base_dir=directory)


@pytest.fixture
def selector() -> Iterator[selectors.BaseSelector]:
    chosen = selectors.DefaultSelector()
    yield chosen
    chosen.close()


def _bans(threshold: int = 3) -> BansConfig:
    return BansConfig.model_validate({"threshold": threshold, "window": "1m", "ban_time": "10m"})


# ---------------------------------------------------------------------- restart backoff

def test_restart_delay_doubles_to_a_cap_and_resets_after_a_stable_life() -> None:
    failures, delays = 0, []
    for _ in range(10):
        failures, delay = restart_delay(1.0, failures)
        delays.append(delay)
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8]
    assert delays[-1] == BACKOFF_MAX and max(delays) == BACKOFF_MAX
    assert restart_delay(30.0, failures) == (0, 0.1)  # lived long enough: start over


# ---------------------------------------------------------------------- forking

def test_a_forked_child_closes_what_the_parts_hold_and_keeps_the_lifeline(
        selector: selectors.BaseSelector) -> None:
    held_r, held_w = os.pipe()
    forker = Forker(SocketSet(reuseport=False), selector, LogSetup(), lambda: [held_r, held_w])
    forker.open_lifeline()

    def child() -> int:
        forker.shed()
        for fd in (held_r, held_w):
            try:
                os.fstat(fd)
            except OSError:
                continue
            return 1  # still open in the child
        os.fstat(forker.lifeline)  # raises (exit 70) if the child lost it
        return 0

    def crash() -> int:
        raise RuntimeError("a bug in a child")

    try:
        codes = [os.waitstatus_to_exitcode(os.waitpid(forker.fork(body), 0)[1])
                 for body in (child, crash)]
        assert codes == [0, 70]
        os.fstat(held_r)  # the parent keeps its own
    finally:
        forker.close()
        os.close(held_r)
        os.close(held_w)


# ---------------------------------------------------------------------- bans

def test_ban_relay_tells_every_worker_of_bans_and_of_lifted_ones() -> None:
    sent: list[object] = []
    relay = BanRelay(_bans(), sent.append)
    relay.offences(Offences((("192.0.2.9", "rule_denied", 2),)))
    assert sent == []  # below the threshold
    relay.offences(Offences((("192.0.2.9", "handshake_failure", 5),)))
    (added,) = sent
    assert isinstance(added, BanList) and [c for c, _ in added.added] == ["192.0.2.9"]
    assert relay.totals() == (1, 1)
    (greeting,) = relay.greeting()  # what a worker forked now is told
    assert isinstance(greeting, BanList) and greeting.added == added.added
    listing = relay.listing()
    assert listing is not None and [b.client for b in listing] == ["192.0.2.9"]

    assert relay.unban("not an address", "test") == "'not an address' is not an address or network"
    assert relay.unban("192.0.2.10", "test") == "192.0.2.10 is not banned"
    assert relay.unban("192.0.2.9", "test") is None
    assert sent[-1] == BanList(removed=("192.0.2.9",))
    assert relay.totals() == (1, 0)


def test_ban_relay_lifts_every_ban_when_bans_are_turned_off() -> None:
    sent: list[object] = []
    relay = BanRelay(_bans(threshold=1), sent.append)
    relay.offences(Offences((("192.0.2.9", "rule_denied", 1),)))
    relay.sync(_bans(threshold=1))  # unchanged section: the jail stays
    assert relay.totals() == (1, 1)
    relay.sync(None)
    assert sent[-1] == BanList(removed=("192.0.2.9",))
    assert relay.listing() is None and relay.greeting() == [] and relay.totals() == (0, 0)
    relay.offences(Offences((("192.0.2.9", "rule_denied", 5),)))  # ignored, no jail
    assert len(sent) == 2
    assert relay.unban("192.0.2.9", "test") == "automatic bans are not configured ([bans])"


# ---------------------------------------------------------------------- admin API host

def _admin(tmp_path: Path, selector: selectors.BaseSelector,
           reloads: list[str] | None = None) -> tuple[AdminService, Instance, RecordingWorkers]:
    instance = Instance(_prepared(tmp_path, ["127.0.0.1:8080", "127.0.0.1:8081"]))
    workers = RecordingWorkers()
    calls = reloads if reloads is not None else []

    def reload(who: str) -> tuple[bool, str]:
        calls.append(who)
        return True, "starting generation 2"

    service = AdminService(instance, selector, workers, stats=StatsHub(),
                           bans=BanRelay(None, workers.broadcast), reload=reload)
    return service, instance, workers


def test_server_admin_states_reach_every_worker_and_new_ones(
        tmp_path: Path, selector: selectors.BaseSelector) -> None:
    service, instance, workers = _admin(tmp_path, selector)
    labels = [s.label for s in instance.prepared.config.backends[0].servers]
    assert service.set_server_admin("nope", labels[0], "drain") == "no backend is called 'nope'"
    assert service.set_server_admin("api", "nope", "drain") == "backend 'api' has no server 'nope'"
    assert workers.sent == []

    assert service.set_server_admin("api", labels[0], "drain") is None
    assert service.set_server_admin("api", labels[1], "disabled") is None
    assert workers.sent == [ServerAdmin("api", labels[0], "drain"),
                            ServerAdmin("api", labels[1], "disabled")]
    assert service.greeting() == workers.sent
    assert service.set_server_admin("api", labels[0], "enabled") is None
    assert service.greeting() == [ServerAdmin("api", labels[1], "disabled")]

    # A reload that removes the server forgets its state.
    instance.prepared = _prepared(tmp_path, ["127.0.0.1:8080"])
    service.forget_missing_servers()
    assert service.greeting() == []


def test_overview_and_facts_follow_the_instance_and_the_rotation(
        tmp_path: Path, selector: selectors.BaseSelector) -> None:
    reloads: list[str] = []
    service, instance, _ = _admin(tmp_path, selector, reloads)
    assert service.sync() is None  # no [admin] section: nothing to listen on
    assert selector.get_map() == {}
    overview = service.overview()
    assert not overview.ready and overview.admin is None
    assert [w.pid for w in overview.workers] == [101, 102]
    instance.started, instance.generation = True, 3
    overview = service.overview()
    assert overview.ready and not overview.draining and overview.generation == 3
    service.set_in_rotation(False)
    assert service.overview().draining and not service.overview().ready
    service.set_in_rotation(True)
    instance.stopping = True
    assert service.overview().draining

    instance.reloads["success"] += 1
    facts = service.facts()
    assert facts.workers == 1 and facts.worker_restarts == 2
    assert facts.reloads == {"success": 1, "failure": 0}
    assert [(c.frontend, c.certificate.names) for c in service.certificates()] == [
        ("web", ("parts.test",))]
    assert [c.frontend for c in facts.certificates] == ["web"]
    assert service.bans() is None
    assert service.reload("api") == (True, "starting generation 2") and reloads == ["api"]


# ---------------------------------------------------------------------- certificate watch

def test_a_replaced_certificate_file_is_sent_to_the_workers(
        tmp_path: Path, selector: selectors.BaseSelector) -> None:
    instance = Instance(_prepared(tmp_path, ["127.0.0.1:8080"]))
    sent: list[object] = []
    watch = CertificateWatch(instance, selector, sent.append)
    assert watch.deadline() == 0.0  # the first expiry check is due at once
    watch.on_time(time.monotonic())
    next_check = watch.deadline()
    assert next_check is not None and next_check > time.monotonic() + 3000  # hourly

    watch.refresh("test")
    assert sent == []  # nothing changed on disk

    path = write_bundle(tmp_path, "site.pem", issued(("renewed.parts.test",)))
    still = time.time() - 60
    os.utime(path, (still, still))  # long still: read at once
    watch.refresh("test")
    (message,) = sent
    assert isinstance(message, CertificatesChanged) and message.frontend == "web"
    (group,) = [g for g in message.changed.values() if g is not None]
    assert "renewed.parts.test" in group[0].names
    store = instance.prepared.frontends[0].store
    assert [c.names for c in store.certificates()] == [group[0].names]  # for workers forked later
    watch.close()


# ---------------------------------------------------------------------- ACME component

def test_no_acme_section_no_acme_process(tmp_path: Path,
                                         selector: selectors.BaseSelector) -> None:
    instance = Instance(_prepared(tmp_path, ["127.0.0.1:8080"]))
    forker = Forker(SocketSet(reuseport=False), selector, LogSetup(), list)
    acme = AcmeComponent(instance, forker)
    acme.sync()
    acme.reap()
    acme.stop()
    assert not acme.running and acme.deadline() is None and acme.fds() == []
