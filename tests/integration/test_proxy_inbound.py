"""Inbound PROXY protocol (``accept_proxy``): behind an L4 balancer the client is the address
the balancer's header names, for X-Forwarded-For, the access log, limits and bans.

Loopback has many addresses: 127.0.0.1 plays the balancer (the one trusted source), 127.0.0.2
an outsider connecting directly. The headers name documentation addresses (RFC 5737/3849).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import http_config, tcp_config
from harness import (
    WAIT,
    Offload,
    Recording,
    client_context,
    echo,
    free_port,
    need,
    recv_all,
)
from test_admin import api, with_admin
from test_automatic_bans import DENY_ATTACKS, bans_section, wait_until

from offload.proto.proxy_protocol import encode_v1, encode_v2

BALANCER, OUTSIDER = "127.0.0.1", "127.0.0.2"
ACCEPT = 'accept_proxy = true\nproxy_sources = ["127.0.0.1/32"]\nhandshake_timeout = "1s"\n'
VIP = ("198.51.100.1", 443)
"""The balancer's own listening address: the destination its headers name."""
LOCAL_V2 = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"


def v1(client: str, port: int = 40001) -> bytes:
    return encode_v1((client, port), VIP)


def v2(client: str, port: int = 40001) -> bytes:
    destination = VIP if ":" not in client else ("2001:db8::1", 443)
    return encode_v2((client, port), destination)


def connect(port: int, source: str = BALANCER) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


@contextlib.contextmanager
def proxied_tls(port: int, ca: Path, header: bytes, source: str = BALANCER
                ) -> Iterator[ssl.SSLSocket]:
    """A TLS connection that starts with ``header``, as a balancer would forward it."""
    with connect(port, source) as raw:
        raw.sendall(header)
        tls = client_context(ca, alpn=["http/1.1"]).wrap_socket(
            raw, server_hostname="localhost", do_handshake_on_connect=False)
        try:  # closed even when the handshake fails (a refused connection)
            tls.do_handshake()
            yield tls
        finally:
            tls.close()


def proxied_get(port: int, ca: Path, header: bytes, path: str, **headers: str) -> bytes:
    with proxied_tls(port, ca, header) as tls:
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}"
                    "Connection: close\r\n\r\n".encode())
        return recv_all(tls)


def refused_before_tls(port: int, header: bytes, source: str = BALANCER) -> bool:
    """Whether a connection sending ``header`` and a ClientHello gets no answer but a close
    (an admitted one would get a ServerHello)."""
    sock = connect(port, source)
    with contextlib.suppress(OSError):  # the close may come before all is sent
        sock.sendall(header + first_hello())
    return closed_without_an_answer(sock)


def closed_without_an_answer(sock: socket.socket, wait: float = 5.0) -> bool:
    """Whether offload closed the connection without sending a byte (no TLS at all)."""
    sock.settimeout(wait)
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    finally:
        sock.close()


def security_event(instance: Offload, kind: str, cause: str) -> dict[str, object]:
    return instance.wait_for(lambda e: e.get("event") == kind and e.get("cause") == cause)


def first_hello() -> bytes:
    """A real client's ClientHello (what a client that skips the header sends first)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    client = context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(),
                              server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


@pytest.fixture
def behind_balancer(localhost_bundle, http_backend, offload, port):
    server = http_backend()
    instance = offload(http_config(port, [localhost_bundle], [server.address], frontend=ACCEPT))
    return server, instance


# ------------------------------------------------------------------ the client's address


@pytest.mark.parametrize(("header", "client", "logged"), [
    (v1("203.0.113.7"), "203.0.113.7", "203.0.113.7:40001"),
    (v2("203.0.113.8"), "203.0.113.8", "203.0.113.8:40001"),
    (v2("2001:db8::7"), "2001:db8::7", "2001:db8::7:40001"),
    (v2("::ffff:203.0.113.9"), "203.0.113.9", "203.0.113.9:40001"),  # a dual-stack balancer
])
def test_the_header_names_the_client(pki, behind_balancer, port, header, client, logged):
    server, instance = behind_balancer
    path = f"/who-{len(server.requests)}"
    answer = proxied_get(port, pki.ca, header, path, **{"X-Forwarded-For": "6.6.6.6"})
    assert answer.startswith(b"HTTP/1.1 200 ")
    (received,) = [r for r in server.requests if r.target == path]
    # The client's own X-Forwarded-For is not believed (it is not a trusted proxy).
    assert received.header("X-Forwarded-For") == client
    assert received.header("X-Forwarded-Port") == "443"  # the port the client connected to
    line = instance.wait_for(lambda e: e.get("path") == path)
    assert line["client"] == logged


def test_local_command_is_the_balancer_itself(pki, behind_balancer, port):
    server, instance = behind_balancer
    for header, path in ((LOCAL_V2, "/local"), (b"PROXY UNKNOWN\r\n", "/unknown")):
        assert proxied_get(port, pki.ca, header, path).startswith(b"HTTP/1.1 200 ")
        (received,) = [r for r in server.requests if r.target == path]
        assert received.header("X-Forwarded-For") == BALANCER
        assert instance.wait_for(lambda e, p=path: e.get("path") == p)["client"].startswith(
            BALANCER + ":")


# ------------------------------------------------------------------ refusals


def test_an_untrusted_source_is_refused_before_tls(pki, behind_balancer, port):
    server, instance = behind_balancer
    assert refused_before_tls(port, v1("203.0.113.7"), OUTSIDER)  # claims to be someone else
    event = security_event(instance, "connection_refused", "untrusted_proxy_source")
    assert event["client"] == OUTSIDER
    assert refused_before_tls(port, v2("203.0.113.7"), OUTSIDER)
    assert server.requests == []


@pytest.mark.parametrize("first", [
    pytest.param(b"PROXY TCP4 203.0.113.7 198.51.100.1 40001 99999\r\n", id="v1-bad-port"),
    pytest.param(b"PROXY TCP4 203.0.113.7 198.51.100.1 40001 443\n", id="v1-bare-lf"),
    pytest.param(b"\r\n\r\n\x00\r\nQUIT\n\x21\x41\x00\x0c" + bytes(12), id="v2-bad-family"),
    pytest.param(b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff", id="v2-too-long"),
    pytest.param(None, id="tls-without-header"),
])
def test_a_malformed_header_is_refused(pki, behind_balancer, port, first):
    server, instance = behind_balancer
    sock = connect(port)
    data = first_hello() if first is None else first
    sock.sendall(data)
    assert closed_without_an_answer(sock)  # no TLS alert: TLS never started
    event = security_event(instance, "connection_refused", "bad_proxy_header")
    assert event["client"] == BALANCER
    assert server.requests == []


def test_a_header_that_never_comes_times_out_and_no_one_is_banned(pki, http_backend, offload,
                                                                   localhost_bundle, port):
    server = http_backend()
    admin_port = free_port()
    instance = offload(with_admin(http_config(port, [localhost_bundle], [server.address],
                                              frontend=ACCEPT), admin_port)
                       + bans_section(threshold=1))
    sock = connect(port)
    sock.sendall(b"PROXY TCP4 ")
    started = time.monotonic()
    assert closed_without_an_answer(sock)
    assert 0.5 < time.monotonic() - started < 5
    security_event(instance, "slow_client", "handshake_timeout")
    time.sleep(0.5)  # offences are reported every 100 ms: none may come
    assert api(admin_port, "/api/bans")["bans"] == []
    assert proxied_get(port, pki.ca, v1("203.0.113.7"), "/after").startswith(b"HTTP/1.1 200 ")


# ------------------------------------------------------------------ limits and bans


def echo_after_proxy_line(conn: socket.socket, recording: Recording) -> None:
    """Record the backend's PROXY v1 line, then echo what follows."""
    while b"\r\n" not in recording.data:
        chunk = conn.recv(200)
        if not chunk:
            return
        recording.data += chunk
    rest = bytes(recording.data).partition(b"\r\n")[2]
    if rest:
        conn.sendall(rest)
    echo(conn, Recording())


def test_per_ip_limits_count_the_named_clients(pki, localhost_bundle, backend, offload, port):
    server = backend(echo_after_proxy_line)
    instance = offload(tcp_config(port, [localhost_bundle], [server.address],
                                  frontend=ACCEPT + "limits = { max_connections_per_ip = 1 }",
                                  backend='proxy_protocol = "v1"'))
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(proxied_tls(port, pki.ca, v1("203.0.113.1", 40001)))
        first.sendall(b"one")
        assert first.recv(10) == b"one"
        # Another client behind the same balancer has its own budget ...
        second = stack.enter_context(proxied_tls(port, pki.ca, v1("203.0.113.2", 40002)))
        second.sendall(b"two")
        assert second.recv(10) == b"two"
        # ... and the first client's second connection is over its own: closed after the
        # header, before TLS.
        assert refused_before_tls(port, v1("203.0.113.1", 40003))
        event = security_event(instance, "connection_refused", "per_ip_connections")
        assert event["client"] == "203.0.113.1"
    # The backend's own PROXY header carries the original clients on.
    server.wait_connections(2)
    firsts = sorted(bytes(c.data).split(b"\r\n")[0] for c in server.connections[:2])
    assert firsts == [b"PROXY TCP4 203.0.113.1 198.51.100.1 40001 443",
                      b"PROXY TCP4 203.0.113.2 198.51.100.1 40002 443"]


def test_bans_refuse_the_named_client_not_the_balancer(pki, localhost_bundle, http_backend,
                                                      offload, port):
    server = http_backend()
    admin_port = free_port()
    offload(with_admin(http_config(port, [localhost_bundle], [server.address],
                                   frontend=ACCEPT + DENY_ATTACKS), admin_port)
            + bans_section(threshold=2))
    for _ in range(2):
        assert proxied_get(port, pki.ca, v1("203.0.113.66"), "/attack").startswith(
            b"HTTP/1.1 403 ")
    assert wait_until(lambda: [b["client"] for b in api(admin_port, "/api/bans")["bans"]]
                      == ["203.0.113.66"])

    # The ban reaches the worker: refused after the header, before TLS.
    assert wait_until(lambda: refused_before_tls(port, v2("203.0.113.66")))
    # Other clients behind the same balancer are not affected.
    assert proxied_get(port, pki.ca, v2("203.0.113.67"), "/fine").startswith(b"HTTP/1.1 200 ")
    assert proxied_get(port, pki.ca, LOCAL_V2, "/fine").startswith(b"HTTP/1.1 200 ")


# ------------------------------------------------------------------ a real balancer


HAPROXY = """
global
    maxconn 100
defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend balancer
    bind 127.0.0.1:{listen}
    default_backend offload
backend offload
    server offload 127.0.0.1:{port} send-proxy-v2 check inter 200ms
"""


def wait_listening(port: int, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"nothing listens on 127.0.0.1:{port}")
            time.sleep(0.05)


def test_haproxy_send_proxy_v2_in_front(pki, behind_balancer, port, tmp_path):
    haproxy = need("haproxy", "haproxy")
    curl = need("curl", "curl")
    server, instance = behind_balancer
    listen = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY.format(listen=listen, port=port))
    process = subprocess.Popen([haproxy, "-db", "-f", str(config)], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(listen)
        result = subprocess.run(
            [curl, "-sS", "--max-time", "10", "--cacert", str(pki.ca), "--interface", "127.0.0.5",
             "--resolve", f"localhost:{listen}:127.0.0.1", f"https://localhost:{listen}/via-haproxy"],
            capture_output=True, timeout=20, check=False)
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"ok"
        (received,) = [r for r in server.requests if r.target == "/via-haproxy"]
        assert received.header("X-Forwarded-For") == "127.0.0.5"  # curl, not HAProxy
        assert received.header("X-Forwarded-Port") == str(listen)
        line = instance.wait_for(lambda e: e.get("path") == "/via-haproxy")
        assert line["client"].startswith("127.0.0.5:")
        # HAProxy's health checks send a v2 LOCAL header, then reset the connection: the
        # balancer speaking for itself, never a malformed header.
        instance.wait_for(lambda e: e.get("msg") == "handshake failed"
                          and e.get("reason") == "client_closed"
                          and e.get("client", "").startswith(BALANCER + ":"))
        assert not [e for e in instance.events if e.get("cause") == "bad_proxy_header"]
    finally:
        process.terminate()
        process.wait(10)
