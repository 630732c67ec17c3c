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
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import http_config
from fleet_harness import HaProxy, RedisServer
from harness import Offload, client_context, free_port
from test_admin import api, samples, value, with_admin
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
    return encode_v2((address, 40001), VIP)


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
    finally:
        store.kill()
