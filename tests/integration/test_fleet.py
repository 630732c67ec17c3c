"""Fleet mode on real processes: three offload instances behind HAProxy (``mode tcp``,
``send-proxy-v2``, round robin) sharing one redis-server of the test's own; a Sentinel set-up
(a primary, a replica, three sentinels) for failover. All on 127.0.0.1.

Clients named in PROXY v2 headers are documentation addresses (RFC 5737): the test connects to
an instance directly from 127.0.0.1 (the trusted balancer address) with a header of its own,
as HAProxy would, to act as many clients.
"""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import http_config
from fleet_harness import HaProxy, RedisServer, SentinelServer
from harness import Offload, client_context, free_port
from test_admin import admin, api, samples, value, with_admin
from test_automatic_bans import DENY_ATTACKS, wait_until

from offload.proto.proxy_protocol import encode_v2

pytestmark = pytest.mark.peers

ACCEPT = 'accept_proxy = true\nproxy_sources = ["127.0.0.1/32"]\nhandshake_timeout = "2s"\n'
BANS = '\n[bans]\nthreshold = 3\nwindow = "1m"\nban_time = "10m"\n'
VIP = ("198.51.100.1", 443)


@dataclass
class Node:
    name: str
    port: int
    admin_port: int
    config: str
    instance: Offload

    def fleet(self) -> dict:
        return api(self.admin_port, "/api/fleet")


def node_config(name: str, port: int, admin_port: int, bundle: Path, backend: str,
                fleet: str) -> str:
    return with_admin(http_config(port, [bundle], [backend], frontend=ACCEPT + DENY_ATTACKS),
                      admin_port) + BANS + f'\n[fleet]\nnode = "{name}"\n' + fleet


@pytest.fixture
def fleet_of(pki, localhost_bundle, http_backend, offload) -> Callable[..., list[Node]]:
    """Start instances on the given ports (the balancer may be started first)."""
    backend = http_backend()

    def start(ports: list[int], fleet: str) -> list[Node]:
        nodes = []
        for index, port in enumerate(ports):
            admin_port = free_port()
            config = node_config(f"node-{index}", port, admin_port, localhost_bundle,
                                 backend.address, fleet)
            nodes.append(Node(f"node-{index}", port, admin_port, config, offload(config)))
        return nodes
    return start


@functools.cache
def _client_context(ca: Path) -> ssl.SSLContext:
    """One client context: a session resumes only through the context that made it."""
    return client_context(ca, alpn=["http/1.1"])


def https_get(port: int, ca: Path, *, session: ssl.SSLSession | None = None,
              header: bytes = b"", path: str = "/") -> tuple[int, ssl.SSLSession | None, bool]:
    """One request on a new connection; (status, session to resume, whether resumed)."""
    context = _client_context(ca)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        if header:
            raw.sendall(header)
        with context.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                        .encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
            return int(data.split(b" ", 2)[1]), tls.session, tls.session_reused


def as_client(address: str) -> bytes:
    return encode_v2((address, 40001), VIP if ":" not in address else ("2001:db8::1", 443))


def refused(port: int, ca: Path, address: str) -> bool:
    try:
        https_get(port, ca, header=as_client(address))
    except (ssl.SSLError, OSError, IndexError):
        return True
    return False


def fleet_ready(nodes: list[Node], *, keys: bool = True) -> bool:
    for node in nodes:
        fleet = node.fleet()
        if len(fleet["nodes"]) < len(nodes) or not fleet["store"]["up"]:
            return False
        if keys and fleet.get("ticket_keys", {}).get("keys", 0) < 1:
            return False
    return True


def resumption_rate(port: int, ca: Path, pairs: int) -> float:
    """Pairs of connections through the round-robin balancer: the second of each resumes the
    first's session on the next instance."""
    resumed = 0
    for _ in range(pairs):
        status, session, _ = https_get(port, ca)
        assert status == 200
        status, _, reused = https_get(port, ca, session=session)
        assert status == 200
        resumed += reused
    return resumed / pairs


@contextlib.contextmanager
def balancer(tmp_path: Path, ports: list[int]) -> Iterator[HaProxy]:
    proxy = HaProxy(tmp_path, ports)
    try:
        yield proxy
    finally:
        proxy.kill()


def test_sessions_resume_across_the_fleet_and_after_a_rotation(tmp_path, pki, fleet_of):
    store = RedisServer(tmp_path / "redis")
    try:
        fleet = (f'redis = "{store.url}"\nticket_key_rotation = "3s"\n'
                 f'ticket_key_lifetime = "9s"\n')
        ports = [free_port() for _ in range(3)]
        with balancer(tmp_path, ports) as proxy:
            nodes = fleet_of(ports, fleet)
            assert wait_until(lambda: fleet_ready(nodes), timeout=15)
            view = nodes[0].fleet()
            assert sorted(n["node"] for n in view["nodes"]) == ["node-0", "node-1", "node-2"]
            assert not any(n["config_differs"] for n in view["nodes"])
            assert view["ticket_sharing"] == "on"
            assert resumption_rate(proxy.port, pki.ca, 20) >= 0.95
            first = sum(n.fleet()["ticket_keys"]["rotations_made"] for n in nodes)
            # A ticket issued now must still resume after the next rotation.
            _, session, _ = https_get(proxy.port, pki.ca)
            assert wait_until(lambda: sum(n.fleet()["ticket_keys"]["rotations_made"]
                                          for n in nodes) > first, timeout=10)
            time.sleep(0.3)
            resumed = [https_get(proxy.port, pki.ca, session=session)[2] for _ in range(3)]
            assert all(resumed), "a ticket from before the rotation did not resume"
            assert resumption_rate(proxy.port, pki.ca, 20) >= 0.95
            metrics = samples(nodes[1].admin_port)
            assert value(metrics, "offload_fleet_tickets_total", result="resumed") >= 1
            assert value(metrics, "offload_fleet_ticket_key_sets_total") >= 2
            # A node reloaded with another configuration is flagged, and its new workers
            # get the fleet's keys at once.
            mark = len(nodes[2].instance.events)
            nodes[2].instance.config.write_text(nodes[2].config.replace("threshold = 3",
                                                                        "threshold = 4"))
            nodes[2].instance.signal(signal.SIGHUP)
            nodes[2].instance.wait_msg("reload complete", after=mark)
            assert resumption_rate(proxy.port, pki.ca, 20) >= 0.95
            assert wait_until(lambda: [n["config_differs"] for n in nodes[0].fleet()["nodes"]]
                              == [False, False, True], timeout=10)
    finally:
        store.kill()


def banned_everywhere(nodes: list[Node], ca: Path, client: str) -> bool:
    return all(refused(node.port, ca, client) for node in nodes)


def test_a_ban_through_one_node_refuses_the_client_on_the_others_within_a_second(
        tmp_path, pki, fleet_of):
    store = RedisServer(tmp_path / "redis")
    try:
        nodes = fleet_of([free_port() for _ in range(3)], f'redis = "{store.url}"\n')
        assert wait_until(lambda: fleet_ready(nodes, keys=True), timeout=15)
        attacker, bystander = "198.51.100.7", "198.51.100.8"
        for _ in range(3):  # through node 0 only; the PROXY v2 header names the client
            assert https_get(nodes[0].port, pki.ca, header=as_client(attacker),
                             path="/attack")[0] == 403
        nodes[0].instance.wait_msg("client banned", client=attacker, reason="rule_denied")
        # The access log names the client of the PROXY v2 header, not the balancer.
        nodes[0].instance.wait_for(lambda e: e.get("client") == f"{attacker}:40001"
                                   and e.get("status") == 403)
        started = time.monotonic()
        assert wait_until(lambda: refused(nodes[1].port, pki.ca, attacker)
                          and refused(nodes[2].port, pki.ca, attacker), timeout=5)
        assert time.monotonic() - started <= 1.0, "the ban took over a second to spread"
        for node in nodes:  # others still served
            assert https_get(node.port, pki.ca, header=as_client(bystander))[0] == 200
        nodes[2].instance.wait_msg("client banned by the fleet", client=attacker)
        listed = api(nodes[2].admin_port, "/api/bans")["bans"]
        assert [b["client"] for b in listed] == [attacker]
        # Lifted through node 2's API: every node serves the client again.
        status, _, _ = admin(nodes[2].admin_port, f"/api/bans/{attacker}", method="DELETE")
        assert status == 200
        assert wait_until(lambda: not any(refused(n.port, pki.ca, attacker) for n in nodes),
                          timeout=5)
        # Offences spread over the nodes count for the fleet: one on each bans the client.
        second = "198.51.100.9"
        for node in nodes:
            assert https_get(node.port, pki.ca, header=as_client(second),
                             path="/attack")[0] == 403
        assert wait_until(lambda: banned_everywhere(nodes, pki.ca, second), timeout=5)
        # IPv6 clients count by their /64 in the fleet, as in each node's jail.
        for node, host in zip(nodes, ("2001:db8:1:2::a", "2001:db8:1:2::b", "2001:db8:1:2::c"),
                              strict=True):
            assert https_get(node.port, pki.ca, header=as_client(host), path="/attack")[0] == 403
        assert wait_until(lambda: banned_everywhere(nodes, pki.ca, "2001:db8:1:2::d"), timeout=5)
        # Bans live in Redis: a restarted node refuses the client again.
        nodes[1].instance.stop()
        restarted = Offload(tmp_path / "offload1.toml")
        try:
            restarted.wait_ready()
            assert wait_until(lambda: refused(nodes[1].port, pki.ca, second), timeout=5)
        finally:
            restarted.kill()
    finally:
        store.kill()


class Load:
    """Requests through the balancer in a thread until stopped; failures recorded."""

    def __init__(self, port: int, ca: Path) -> None:
        self.port, self.ca = port, ca
        self.done = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status = https_get(self.port, self.ca)[0]
                if status != 200:
                    self.failures.append(f"status {status}")
            except (ssl.SSLError, OSError, IndexError) as error:
                self.failures.append(repr(error))
            self.done += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_redis_killed_mid_load_fails_no_request_and_state_syncs_when_it_returns(
        tmp_path, pki, fleet_of):
    store = RedisServer(tmp_path / "redis")
    try:
        ports = [free_port() for _ in range(3)]
        with balancer(tmp_path, ports) as proxy:
            nodes = fleet_of(ports, f'redis = "{store.url}"\noperation_timeout = "300ms"\n'
                                    f'connect_timeout = "300ms"\n')
            assert wait_until(lambda: fleet_ready(nodes), timeout=15)
            before = samples(nodes[0].admin_port)
            trips_before = value(before, "offload_fleet_store_round_trips_total")
            load = Load(proxy.port, pki.ca)
            try:
                time.sleep(1.0)
                store.kill()
                nodes[0].instance.wait_msg("fleet store unavailable; serving with local state",
                                           timeout=10)
                # While Redis is away, a ban on node 0 holds there (local state) ...
                outage_client = "203.0.113.50"
                for _ in range(3):
                    assert https_get(nodes[0].port, pki.ca, header=as_client(outage_client),
                                     path="/attack")[0] == 403
                assert wait_until(lambda: refused(nodes[0].port, pki.ca, outage_client))
                time.sleep(1.0)
                store.start()
                # ... and reaches the others once it is back, without a restart.
                assert wait_until(lambda: refused(nodes[1].port, pki.ca, outage_client)
                                  and refused(nodes[2].port, pki.ca, outage_client), timeout=10)
                time.sleep(0.5)
            finally:
                load.stop()
            assert load.done >= 20
            assert load.failures == [], load.failures[:5]
            metrics = samples(nodes[0].admin_port)
            assert value(metrics, "offload_fleet_store_failures_total") >= 1
            assert value(metrics, "offload_fleet_store_outages_total") >= 1
            assert wait_until(lambda: value(samples(nodes[0].admin_port),
                                            "offload_fleet_store_up") == 1, timeout=10)
            # No Redis round trip on the request path: the fleet process's operations are
            # its own timers' (heartbeats, key and ban pulls), far fewer than the requests.
            trips = value(samples(nodes[0].admin_port), "offload_fleet_store_round_trips_total")
            handled = value(metrics, "offload_http_requests_total")
            assert trips - trips_before < handled / 2, (trips - trips_before, handled)
            assert wait_until(lambda: fleet_ready(nodes), timeout=15)
    finally:
        store.kill()


def test_sentinel_failover_is_followed_without_a_restart(tmp_path, pki, fleet_of):
    primary = RedisServer(tmp_path / "primary")
    replica = RedisServer(tmp_path / "replica", replica_of=primary.port)
    sentinels = [SentinelServer(tmp_path / f"sentinel{i}", primary.port) for i in range(3)]
    try:
        assert wait_until(lambda: replica.client().info("replication")["master_link_status"]
                          == "up", timeout=10)
        listed = ", ".join(f'"127.0.0.1:{s.port}"' for s in sentinels)
        (node,) = fleet_of([free_port()], f'redis = "redis://ignored:1/0"\n'
                                          f'sentinels = [{listed}]\nmaster = "fleetmaster"\n')
        assert wait_until(lambda: fleet_ready([node]), timeout=15)
        pid = node.instance.process.pid
        assert sentinels[0].client().execute_command("SENTINEL", "FAILOVER", "fleetmaster")
        assert wait_until(lambda: replica.client().info("replication")["role"] == "master",
                          timeout=15)
        promoted = time.time()

        def beats_on_new_primary() -> bool:
            raw = replica.client().hget("offload:nodes", "node-0")
            return raw is not None and json.loads(raw)["seen"] > promoted
        # The node keeps beating (every 5 s) into the new primary, without a restart.
        assert wait_until(beats_on_new_primary, timeout=15)
        assert node.instance.process.pid == pid and node.instance.process.poll() is None
        assert node.fleet()["store"]["up"]
    finally:
        for sentinel in sentinels:
            sentinel.kill()
        replica.kill()
        primary.kill()
