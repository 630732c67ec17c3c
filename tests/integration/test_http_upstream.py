"""HTTP mode towards the backends: balancing, health checks, ejection, retries, server errors."""

from __future__ import annotations

import socket
import struct
import time
from collections import Counter

from conftest import http_config
from harness import TcpBackend, free_port
from http_client import get, https


def _backend_names(conn, path: str, count: int) -> Counter[str]:
    names: Counter[str] = Counter()
    for _ in range(count):
        response, _ = get(conn, path)
        assert response.status == 200
        names[response.getheader("X-Backend")] += 1
    return names


def _server(name: str, backend, **options: object) -> str:
    extra = "".join(f", {key} = {value}" for key, value in options.items())
    return f'{{ name = "{name}", address = "{backend.address}"{extra} }}'


def test_weighted_round_robin(pki, localhost_bundle, http_backend, offload, port):
    a, b, c = http_backend("a"), http_backend("b"), http_backend("c")
    offload(http_config(port, [localhost_bundle],
                        [_server("a", a, weight=3), _server("b", b), _server("c", c)]))
    conn = https(port, pki.ca)
    assert _backend_names(conn, "/bytes/1", 50) == {"a": 30, "b": 10, "c": 10}


def test_backup_only_when_primaries_are_down(pki, localhost_bundle, http_backend, offload, port):
    primary, spare = http_backend("primary"), http_backend("spare")
    offload(http_config(port, [localhost_bundle],
                        [_server("primary", primary), _server("spare", spare, backup="true")],
                        backend='health_check = { path = "/health", interval = "100ms", '
                                'timeout = "500ms", rise = 1, fall = 1 }'))
    conn = https(port, pki.ca)
    assert _backend_names(conn, "/bytes/1", 6) == {"primary": 6}
    primary.healthy = False
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _backend_names(conn, "/bytes/1", 1) != {"spare": 1}:
        time.sleep(0.05)
    assert _backend_names(conn, "/bytes/1", 6) == {"spare": 6}


def test_least_connections_prefers_the_idle_server(pki, localhost_bundle, http_backend, offload,
                                                   port):
    from harness import TlsPipe, client_context

    a, b = http_backend("a"), http_backend("b")
    offload(http_config(port, [localhost_bundle], [_server("a", a), _server("b", b)],
                        backend='balance = "leastconn"'))
    slow = TlsPipe(port, client_context(pki.ca))
    slow.send(b"GET /slow/2 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    deadline = time.monotonic() + 5
    while not (a.requests or b.requests) and time.monotonic() < deadline:
        time.sleep(0.02)
    busy = "a" if a.requests else "b"
    conn = https(port, pki.ca)
    names = _backend_names(conn, "/bytes/1", 6)
    assert busy not in names, "requests went to the server with a request in flight"
    slow.close()


def test_hash_keeps_a_client_on_one_server(pki, localhost_bundle, http_backend, offload, port):
    servers = [http_backend(name) for name in "abcd"]
    offload(http_config(port, [localhost_bundle],
                        [_server(s.name, s) for s in servers], backend='balance = "hash"'))
    seen: set[str] = set()
    for _ in range(3):
        conn = https(port, pki.ca)
        seen |= set(_backend_names(conn, "/bytes/1", 5))
    assert len(seen) == 1, "one client address must always reach the same server"


def test_random_of_two_spreads_load(pki, localhost_bundle, http_backend, offload, port):
    a, b, c = http_backend("a"), http_backend("b"), http_backend("c")
    offload(http_config(port, [localhost_bundle], [_server(s.name, s) for s in (a, b, c)],
                        backend='balance = "random"'))
    conn = https(port, pki.ca)
    names = _backend_names(conn, "/bytes/1", 60)
    assert set(names) == {"a", "b", "c"}


def test_active_health_check_ejects_and_restores(pki, localhost_bundle, http_backend, offload,
                                                 port):
    a, b = http_backend("a"), http_backend("b")
    instance = offload(http_config(
        port, [localhost_bundle], [_server("a", a), _server("b", b)],
        backend='health_check = { path = "/health", interval = "100ms", timeout = "500ms", '
                'rise = 2, fall = 2 }'))
    conn = https(port, pki.ca)
    assert set(_backend_names(conn, "/bytes/1", 4)) == {"a", "b"}
    a.healthy = False
    instance.wait_for(lambda e: e.get("msg") == "backend server down" and e.get("server") == "a")
    assert _backend_names(conn, "/bytes/1", 6) == {"b": 6}
    a.healthy = True
    instance.wait_for(lambda e: e.get("msg") == "backend server up" and e.get("server") == "a")
    assert set(_backend_names(conn, "/bytes/1", 4)) == {"a", "b"}
    assert any(r.target == "/health" and r.header("User-Agent") == "offload-health-check"
               for r in a.requests)


def test_tcp_health_check_marks_a_dead_server_down(pki, localhost_bundle, http_backend, offload,
                                                   port):
    alive = http_backend("alive")
    dead = f"127.0.0.1:{free_port()}"
    instance = offload(http_config(
        port, [localhost_bundle], [_server("alive", alive), f'{{ name = "dead", address = "{dead}" }}'],
        backend='health_check = { kind = "tcp", interval = "100ms", timeout = "300ms", fall = 1 }'))
    instance.wait_for(lambda e: e.get("msg") == "backend server down" and e.get("server") == "dead")
    conn = https(port, pki.ca)
    assert _backend_names(conn, "/bytes/1", 4) == {"alive": 4}


def test_passive_ejection_after_server_errors(pki, localhost_bundle, http_backend, offload, port):
    good, bad = http_backend("good"), http_backend("bad")
    bad.fail_status = 500
    instance = offload(http_config(
        port, [localhost_bundle], [_server("good", good), _server("bad", bad)],
        backend='ejection = { failures = 2, duration = "30s", count_5xx = true }'))
    conn = https(port, pki.ca)
    statuses = [get(conn, "/bytes/1")[0].status for _ in range(6)]
    assert statuses.count(500) == 2, "two 5xx answers, then the server is ejected"
    instance.wait_for(lambda e: e.get("msg") == "backend server ejected" and e.get("server") == "bad")
    assert _backend_names(conn, "/bytes/1", 5) == {"good": 5}


def test_a_path_answering_500_ejects_no_server(pki, localhost_bundle, http_backend, offload,
                                               port):
    """The attacker's move: hammer a path that makes every server answer 500. With the default
    ejection settings no server may go, so everyone else keeps getting answers from all."""
    servers = [http_backend(name) for name in "abc"]
    instance = offload(http_config(port, [localhost_bundle],
                                   [_server(s.name, s) for s in servers],
                                   backend='ejection = { failures = 2, duration = "60s" }'))
    attacker = https(port, pki.ca)
    statuses = [get(attacker, "/status/500")[0].status for _ in range(30)]
    assert statuses == [500] * 30, "every 500 is the backend's answer, passed on"
    assert all(len(s.requests) == 10 for s in servers)
    client = https(port, pki.ca)
    assert _backend_names(client, "/bytes/1", 6) == {"a": 2, "b": 2, "c": 2}
    assert not instance.messages("backend server ejected")


def test_with_5xx_counted_half_the_servers_stay(pki, localhost_bundle, http_backend, offload,
                                               port):
    """``count_5xx`` on: the attacker can eject, but at most half of the servers."""
    servers = [http_backend(name) for name in "abc"]
    instance = offload(http_config(
        port, [localhost_bundle], [_server(s.name, s) for s in servers],
        backend='ejection = { failures = 2, duration = "60s", count_5xx = true }'))
    attacker = https(port, pki.ca)
    for _ in range(30):
        get(attacker, "/status/500")
    ejected = {e["server"] for e in instance.messages("backend server ejected")}
    assert len(ejected) == 1, "3 servers at 50 %: one may go"
    client = https(port, pki.ca)
    assert set(_backend_names(client, "/bytes/1", 6)) == {"a", "b", "c"} - ejected


def test_connect_failure_moves_to_the_next_server(pki, localhost_bundle, http_backend, offload,
                                                  port):
    alive = http_backend("alive")
    dead = f"127.0.0.1:{free_port()}"
    offload(http_config(port, [localhost_bundle],
                        [f'{{ name = "dead", address = "{dead}" }}', _server("alive", alive)],
                        backend='ejection = { failures = 0 }'))
    conn = https(port, pki.ca)
    assert _backend_names(conn, "/bytes/1", 4) == {"alive": 4}


def _reset_after_reading(conn: socket.socket, recording) -> None:
    """Read a request head (and a short body), then reset the connection without answering."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    recording.data += data
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_idempotent_request_is_retried_elsewhere(pki, localhost_bundle, http_backend, offload,
                                                 port, backend):
    flaky = backend(_reset_after_reading)
    good = http_backend("good")
    offload(http_config(port, [localhost_bundle],
                        [f'{{ name = "flaky", address = "{flaky.address}" }}', _server("good", good)],
                        backend='ejection = { failures = 0 }'))
    conn = https(port, pki.ca)
    for _ in range(4):
        response, _ = get(conn, "/bytes/1")
        assert response.status == 200 and response.getheader("X-Backend") == "good"
    assert len(flaky.connections) >= 1


def test_request_with_a_body_is_never_retried(pki, localhost_bundle, http_backend, offload, port,
                                              backend):
    flaky = backend(_reset_after_reading)
    good = http_backend("good")
    offload(http_config(port, [localhost_bundle],
                        [f'{{ name = "flaky", address = "{flaky.address}" }}', _server("good", good)],
                        backend='ejection = { failures = 0 }'))
    statuses = []
    for _ in range(2):  # round robin: one of the two lands on the flaky server
        conn = https(port, pki.ca)
        conn.request("POST", "/sha", body=b"payload")
        statuses.append(conn.getresponse().status)
        conn.close()
    assert sorted(statuses) == [200, 502]
    assert not any(r.method == "POST" and r.target == "/sha" and r.body == b"payload"
                   for r in good.requests[1:]), "the failed POST must not be sent again"


def test_all_servers_down_gives_503_with_retry_after(pki, localhost_bundle, offload, port):
    offload(http_config(port, [localhost_bundle], [f"127.0.0.1:{free_port()}"]))
    conn = https(port, pki.ca)
    response, body = get(conn, "/")
    assert response.status == 503
    assert response.getheader("Retry-After") == "1"
    assert b"127.0.0.1" not in body and b"Error" not in body  # nothing internal leaks
    response, _ = get(conn, "/")  # keep-alive survives offload's own answers
    assert response.status == 503


def test_backend_garbage_gives_502(pki, localhost_bundle, offload, port):
    def garbage(conn: socket.socket, recording) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")

    server = TcpBackend(garbage)
    try:
        offload(http_config(port, [localhost_bundle], [server.address]))
        conn = https(port, pki.ca)
        response, _ = get(conn, "/")
        assert response.status == 502
    finally:
        server.close()


def test_server_header_policy(pki, localhost_bundle, http_backend, offload, port):
    server = http_backend("named")
    offload(http_config(port, [localhost_bundle], [server.address],
                        frontend='server_header = "offload"'))
    conn = https(port, pki.ca)
    response, _ = get(conn, "/bytes/1")
    assert response.getheader("Server") == "offload"
    response, _ = get(conn, "/status/404")
    assert response.status == 404 and response.getheader("X-Backend") == "named"


def test_max_connections_spills_to_the_next_server(pki, localhost_bundle, http_backend, offload,
                                                   port):
    from harness import TlsPipe, client_context

    a, b = http_backend("a"), http_backend("b")
    offload(http_config(port, [localhost_bundle],
                        [_server("a", a, max_connections=1), _server("b", b)],
                        backend='balance = "roundrobin"'))
    slow = [TlsPipe(port, client_context(pki.ca)) for _ in range(2)]
    for pipe in slow:
        pipe.send(b"GET /slow/1.5 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    deadline = time.monotonic() + 5
    while len(a.requests) + len(b.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    # a holds one request in flight, its maximum: every new request must go to b
    conn = https(port, pki.ca)
    assert _backend_names(conn, "/bytes/1", 4) == {"b": 4}
    for pipe in slow:
        pipe.close()


def test_idle_pooled_connections_expire(pki, localhost_bundle, http_backend, offload, port):
    server = http_backend()
    offload(http_config(port, [localhost_bundle], [server.address],
                        backend='pool_idle_timeout = "300ms"'))
    conn = https(port, pki.ca)
    get(conn, "/bytes/1")
    assert server.connections == 1
    time.sleep(1.6)  # the pool sweeps every second
    get(conn, "/bytes/1")
    assert server.connections == 2, "the idle pooled connection should have been closed"
