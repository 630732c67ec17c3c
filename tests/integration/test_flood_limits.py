"""Flood limits over real TLS: each limit with a small, bounded burst from loopback.

Loopback has many addresses (127.0.0.0/8), so a test can be several clients at once: the one
over its limit (127.0.0.1) and a bystander (127.0.0.2) that must not notice. A connection
refused by a limit is closed before a TLS byte is exchanged: the client reads EOF without
having sent anything, where an admitted connection would wait for its ClientHello.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import time
from collections.abc import Iterator

import pytest
from conftest import http_config, tcp_config
from harness import Offload, client_context, echo, free_port
from http_client import get, https, read_responses

CLIENT, BYSTANDER, OTHER = "127.0.0.1", "127.0.0.2", "127.0.0.3"


def connect(port: int, source: str = CLIENT) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))


def closed_before_tls(sock: socket.socket, wait: float = 3.0) -> bool:
    """Whether offload closed the connection without waiting for a ClientHello."""
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    finally:
        sock.close()


@contextlib.contextmanager
def tls_from(port: int, context: ssl.SSLContext, source: str = CLIENT,
             session: ssl.SSLSession | None = None) -> Iterator[ssl.SSLSocket]:
    with connect(port, source) as raw, context.wrap_socket(
            raw, server_hostname="localhost", session=session) as tls:
        yield tls


def echoes(tls: ssl.SSLSocket, data: bytes = b"ping") -> bool:
    tls.sendall(data)
    return tls.recv(100) == data


def security_events(instance: Offload, kind: str, cause: str) -> list[dict[str, object]]:
    return [e for e in list(instance.events) if e.get("event") == kind and e.get("cause") == cause]


def wait_security_event(instance: Offload, kind: str, cause: str) -> dict[str, object]:
    return instance.wait_for(lambda e: e.get("event") == kind and e.get("cause") == cause)


def first_hello() -> bytes:
    """A real client's first flight, offering no session (a full handshake)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


# ------------------------------------------------------------------------------- connections


def test_per_ip_connection_limit(pki, localhost_bundle, backend, offload, port):
    server = backend(echo)
    instance = offload(tcp_config(port, [localhost_bundle], [server.address],
                                  frontend="limits = { max_connections_per_ip = 3 }"))
    context = client_context(pki.ca)
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(tls_from(port, context)) for _ in range(3)]
        assert all(echoes(tls) for tls in held)
        assert closed_before_tls(connect(port))  # the fourth, from the same address
        with tls_from(port, context, BYSTANDER) as other:  # another client is not affected
            assert echoes(other)
        event = wait_security_event(instance, "connection_refused", "per_ip_connections")
        assert event["client"] == CLIENT and event["frontend"] == "test"
        assert event["level"] == "warning"
        held.pop().close()
        # once the server has seen the close, the client may connect again
        deadline = time.monotonic() + 5
        while True:
            sock = connect(port)
            if not closed_before_tls(sock, wait=0.3):
                break
            assert time.monotonic() < deadline, "a closed connection was never released"
        with tls_from(port, context) as again:
            assert echoes(again)
    assert len(security_events(instance, "connection_refused", "per_ip_connections")) >= 1


def test_global_connection_limit(pki, localhost_bundle, backend, offload, port):
    server = backend(echo)
    instance = offload(tcp_config(port, [localhost_bundle], [server.address],
                                  frontend="limits = { max_connections = 2 }"))
    context = client_context(pki.ca)
    with tls_from(port, context) as first, tls_from(port, context, BYSTANDER) as second:
        assert echoes(first) and echoes(second)
        assert closed_before_tls(connect(port, OTHER))
    event = wait_security_event(instance, "connection_refused", "global_connections")
    assert event["client"] == OTHER


def test_per_ip_connection_rate(pki, localhost_bundle, backend, offload, port):
    server = backend(echo)
    instance = offload(tcp_config(port, [localhost_bundle], [server.address],
                                  frontend='limits = { connection_rate_per_ip = "1/m burst 3" }'))
    context = client_context(pki.ca)
    for _ in range(3):
        with tls_from(port, context) as tls:
            assert echoes(tls)
    assert [closed_before_tls(connect(port)) for _ in range(4)] == [True] * 4
    with tls_from(port, context, BYSTANDER) as tls:
        assert echoes(tls)
    assert len(security_events(instance, "connection_refused", "per_ip_connection_rate")) == 4
    assert server.wait_connections(4)  # the refused ones never reached the backend
    assert len(server.connections) == 4


def test_limits_are_counted_per_frontend(pki, localhost_bundle, backend, offload, port):
    """[defaults] limits reach every frontend; counters are exact where log lines are capped."""
    server = backend(echo)
    config = tcp_config(port, [localhost_bundle], [server.address])
    config = config.replace("[[frontends]]", "[defaults]\nlimits = { connection_rate = "
                            '"1/m burst 1" }\n\n[[frontends]]', 1)
    instance = offload(config)
    context = client_context(pki.ca)
    with tls_from(port, context) as tls:
        assert echoes(tls)
    refused = [closed_before_tls(connect(port, source)) for source in (CLIENT, BYSTANDER)]
    assert refused == [True, True]
    event = wait_security_event(instance, "connection_refused", "global_connection_rate")
    assert event["client"] in (CLIENT, BYSTANDER)


# ------------------------------------------------------------------------------- handshakes


def test_handshake_rate_refuses_full_handshakes_and_lets_resumptions_pass(
        pki, localhost_bundle, backend, offload, port):
    server = backend(echo)
    limited = offload(tcp_config(port, [localhost_bundle], [server.address],
                                 frontend='limits = { handshake_rate_per_ip = "1/m burst 2" }'))
    context = client_context(pki.ca)
    with tls_from(port, context) as tls:
        assert echoes(tls)  # reading takes the TLS 1.3 session ticket
        session = tls.session
        assert not tls.session_reused
    with tls_from(port, context) as tls:  # the second full handshake is still within the burst
        assert echoes(tls)
    # The third offers no session: refused before offload answers the ClientHello.
    sock = connect(port)
    sock.sendall(first_hello())
    assert closed_before_tls(sock)
    event = wait_security_event(limited, "connection_refused", "per_ip_handshake_rate")
    assert event["client"] == CLIENT
    with pytest.raises((ssl.SSLError, OSError)), tls_from(port, context):
        pass
    # Resumptions are cheap and not counted.
    for _ in range(5):
        with tls_from(port, context, session=session) as tls:
            assert tls.session_reused
            assert echoes(tls)
    # Another client has its own budget.
    with tls_from(port, context, BYSTANDER) as tls:
        assert echoes(tls)
    refusals = len(security_events(limited, "connection_refused", "per_ip_handshake_rate"))
    assert refusals == 2


def test_an_unusable_session_offer_still_counts_as_a_full_handshake(
        pki, localhost_bundle, backend, offload, port, tmp_path):
    """A client offering a ticket the server cannot use gets a full handshake: counted after
    it, so bogus tickets do not dodge the limit."""
    server = backend(echo)
    other_port = free_port()
    elsewhere = offload(tcp_config(other_port, [localhost_bundle], [server.address]))
    limited = offload(tcp_config(port, [localhost_bundle], [server.address],
                                 frontend='limits = { handshake_rate_per_ip = "1/m burst 1" }'))
    assert elsewhere.process.pid != limited.process.pid
    context = client_context(pki.ca)
    with tls_from(other_port, context) as tls:
        assert echoes(tls)
        foreign = tls.session  # a ticket sealed with the other instance's keys
    with tls_from(port, context) as tls:
        assert echoes(tls)  # the one full handshake of the burst
    with tls_from(port, context, session=foreign) as tls:
        assert not tls.session_reused
        tls.sendall(b"ping")
        try:
            answer = tls.recv(100)
        except (ssl.SSLError, OSError):
            answer = b""
        assert answer == b""  # closed after the handshake, nothing relayed
    event = wait_security_event(limited, "connection_refused", "per_ip_handshake_rate")
    assert event["client"] == CLIENT


# ------------------------------------------------------------------------------- requests


class _Reader:
    """``recv()`` without arguments over an SSLSocket, for read_responses."""

    def __init__(self, tls: ssl.SSLSocket) -> None:
        self.tls = tls

    def recv(self) -> bytes:
        try:
            return self.tls.recv(65536)
        except ssl.SSLZeroReturnError:
            return b""


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def test_request_rate_answers_429_with_retry_after(pki, localhost_bundle, http_backend, offload,
                                                    port):
    server = http_backend()
    instance = offload(http_config(port, [localhost_bundle], [server.address],
                                   frontend='limits = { request_rate_per_ip = "1/m burst 3" }'))
    conn = https(port, pki.ca)
    for _ in range(3):
        response, body = get(conn, "/")
        assert (response.status, body) == (200, b"ok")
    sock = conn.sock
    response, body = get(conn, "/")
    assert response.status == 429
    assert 1 <= int(response.getheader("Retry-After")) <= 60
    assert b"Too Many Requests" in body
    assert response.getheader("Connection") is None  # the connection stays open
    response, _ = get(conn, "/again")
    assert response.status == 429
    assert conn.sock is sock, "the client had to reconnect"
    assert len(server.requests) == 3 and "/again" not in [r.target for r in server.requests]
    event = wait_security_event(instance, "rate_limited", "per_ip_request_rate")
    assert event["client"] == CLIENT and 1 <= int(event["retry_after"]) <= 60
    logged = instance.wait_for(lambda e: e.get("status") == 429 and e.get("path") == "/again")
    assert logged["reason"] == "per_ip_request_rate"
    assert logged["method"] == "GET" and logged["server"] is None


def test_request_rate_with_pipelining_and_bodies(pki, localhost_bundle, http_backend, offload,
                                                  port):
    server = http_backend()
    instance = offload(http_config(port, [localhost_bundle], [server.address],
                                   frontend='limits = { request_rate_per_ip = "1/m burst 3" }'))
    context = client_context(pki.ca)
    burst = 1000
    with tls_from(port, context, BYSTANDER) as tls:
        tls.sendall(b"".join(b"GET /%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % i
                             for i in range(burst)))
        responses = read_responses(_Reader(tls), burst)
    assert [_status(r) for r in responses] == [200] * 3 + [429] * (burst - 3)
    assert sorted(r.target for r in server.requests) == ["/0", "/1", "/2"]
    # A request with a body is answered and the connection closed (its body is not read).
    with tls_from(port, context, BYSTANDER) as tls:
        tls.sendall(b"POST /sha HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello")
        answer = _Reader(tls).recv()
        while chunk := _Reader(tls).recv():
            answer += chunk
    assert _status(answer) == 429 and b"Connection: close" in answer
    wait_security_event(instance, "rate_limited", "per_ip_request_rate")
    lines = security_events(instance, "rate_limited", "per_ip_request_rate")
    assert 1 <= len(lines) <= burst  # log lines are capped; the counter is not


def test_global_request_rate(pki, localhost_bundle, http_backend, offload, port):
    server = http_backend()
    instance = offload(http_config(port, [localhost_bundle], [server.address],
                                   frontend='limits = { request_rate = "1/m burst 2" }'))
    statuses = []
    for source in (CLIENT, BYSTANDER, OTHER):
        conn = http.client.HTTPSConnection("localhost", port, timeout=10,
                                           context=client_context(pki.ca),
                                           source_address=(source, 0))
        try:
            response, _ = get(conn, "/")
            statuses.append(response.status)
        finally:
            conn.close()
    assert statuses == [200, 200, 429]
    event = wait_security_event(instance, "rate_limited", "global_request_rate")
    assert event["client"] == OTHER
