"""Offences and security counters of the HTTP path, read inside a real worker: the worker's
event loop runs in a thread of the test process (its real listener, TLS and backend pool, as
`offload run` builds them), so the test can read its counters and stand in for the ban jail
on the offence sink."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop
from conftest import http_config
from http_client import get, https

from offload.config.loader import load_file
from offload.observe.stats import Counters
from offload.security.bans import BanEvent
from offload.server.listener import ConnectionRegistry
from offload.server.prepare import prepare
from offload.server.sockets import bind_listener
from offload.server.worker import WorkerSpec, _Apps

RULES = '''
[frontends.inspect]
[[frontends.inspect.rules]]
name = "no-private"
action = "deny"
path = "^/private"

[[frontends.inspect.rules]]
name = "documentation-net"
action = "deny"
client = ["203.0.113.0/24"]
path = "^/net"

[[frontends.inspect.rules]]
name = "watch"
action = "log"
path = "^/watched"
'''


class Worker:
    """One worker's apps on a loop in a thread; ``offences`` records what the sink got."""

    def __init__(self, config: Path) -> None:
        prepared = prepare(load_file(config), str(config), base_dir=config.parent)
        frontend = prepared.frontends[0].config
        address = frontend.bind[0]
        self.counters = Counters()
        self.offences: list[tuple[str, BanEvent]] = []
        self._spec = WorkerSpec(prepared, 0, 0, {address: bind_listener(
            address, 16, reuseport=False)}, -1, -1, -1)
        self._loop = uvloop.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete,
                                        args=(self._main(),), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the worker did not start"

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        registry = ConnectionRegistry(100)
        apps = _Apps(self._spec, registry, self.counters)
        apps.security.offence = lambda client, event: self.offences.append((client, event))
        await apps.start()
        self._ready.set()
        await self._stop.wait()
        apps.stop_accepting()
        registry.close_all()
        await apps.stop()

    def close(self) -> None:
        stop = self._stop
        assert stop is not None
        self._loop.call_soon_threadsafe(stop.set)
        self._thread.join(10)
        self._loop.close()
        for sock in self._spec.sockets.values():
            sock.close()


@pytest.fixture
def worker(tmp_path, localhost_bundle, http_backend, port) -> Iterator[tuple[Worker, object]]:
    server = http_backend()
    started: list[Worker] = []

    def start(frontend: str = RULES) -> Worker:
        path = tmp_path / f"offload{len(started)}.toml"
        path.write_text(http_config(port, [localhost_bundle], [server.address],
                                    frontend=frontend, access_log="off"))
        started.append(Worker(path))
        return started[-1]

    yield start, server
    for instance in started:
        instance.close()


def test_backend_401_and_403_are_offences(pki, worker, port):
    start, _ = worker
    instance = start()
    conn = https(port, pki.ca)
    for status in (401, 403, 404, 200, 401):
        response, _ = get(conn, f"/status/{status}")
        assert response.status == status
    assert instance.counters.get("backend_auth_failure", "web") == 3
    assert instance.offences == [("127.0.0.1", "backend_auth_failure")] * 3
    assert not any(key[0] == "security" for key in dict(instance.counters.values))


def test_rule_decisions_are_counted_and_denies_are_offences(pki, worker, port):
    start, _ = worker
    instance = start()
    conn = https(port, pki.ca)
    for _ in range(2):
        response, _ = get(conn, "/private/x")
        assert response.status == 403  # offload's own 403 is not a backend_auth_failure
    response, _ = get(conn, "/watched")
    assert response.status == 200
    assert instance.counters.get("security", "web", "rule_denied", "no-private") == 2
    assert instance.counters.get("security", "web", "rule_logged", "watch") == 1
    assert instance.counters.get("backend_auth_failure", "web") == 0
    assert instance.offences == [("127.0.0.1", "rule_denied")] * 2


def test_dry_run_is_counted_as_logged_and_is_no_offence(pki, worker, port):
    start, _ = worker
    instance = start(RULES.replace("[frontends.inspect]", "[frontends.inspect]\ndry_run = true"))
    response, _ = get(https(port, pki.ca), "/private/x")
    assert response.status == 200
    assert instance.counters.get("security", "web", "rule_logged", "no-private") == 1
    assert instance.counters.get("security", "web", "rule_denied", "no-private") == 0
    assert instance.offences == []


def test_behind_a_trusted_proxy_rules_and_offences_see_the_forwarded_client(pki, worker, port):
    start, _ = worker
    instance = start('trusted_proxies = ["127.0.0.1/32"]\n' + RULES)
    conn = https(port, pki.ca)
    response, _ = get(conn, "/net", **{"X-Forwarded-For": "203.0.113.7, 127.0.0.1"})
    assert response.status == 403
    response, _ = get(conn, "/status/401", **{"X-Forwarded-For": "198.51.100.9"})
    assert response.status == 401
    response, _ = get(conn, "/net", **{"X-Forwarded-For": "198.51.100.9"})
    assert response.status == 200
    assert instance.offences == [("203.0.113.7", "rule_denied"),
                                 ("198.51.100.9", "backend_auth_failure")]


def test_an_untrusted_client_cannot_choose_its_address(pki, worker, port):
    start, _ = worker
    instance = start()
    response, _ = get(https(port, pki.ca), "/status/403", **{"X-Forwarded-For": "203.0.113.7"})
    assert response.status == 403
    assert instance.offences == [("127.0.0.1", "backend_auth_failure")]
