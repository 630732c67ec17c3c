"""HTTP mode over real TLS: streaming, keep-alive and pipelining, forwarding headers, framing."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import threading
import time

import pytest
from conftest import http_config
from harness import TlsPipe, client_context
from http_backend import pattern
from http_client import get, https, read_responses


def test_keep_alive_on_both_sides(pki, localhost_bundle, http_backend, offload, port):
    server = http_backend()
    offload(http_config(port, [localhost_bundle], [server.address]))
    for _ in range(2):
        conn = https(port, pki.ca)
        for index in range(10):
            response, body = get(conn, f"/bytes/{100 + index}")
            assert response.status == 200
            assert body == pattern(100 + index)
        conn.close()
    assert len(server.requests) == 20
    assert server.connections == 1, "backend connections must be pooled and reused"


@pytest.mark.parametrize("path", ["/bytes/10485760", "/chunked/10485760", "/close/10485760"])
def test_download_10_mib_intact(pki, localhost_bundle, http_backend, offload, port, path):
    server = http_backend()
    offload(http_config(port, [localhost_bundle], [server.address]))
    conn = https(port, pki.ca)
    response, body = get(conn, path)
    assert response.status == 200
    assert hashlib.sha256(body).digest() == hashlib.sha256(pattern(10 * 1024 * 1024)).digest()
    if path.startswith("/chunked"):
        assert response.getheader("Transfer-Encoding") == "chunked"
    response, body = get(conn, "/bytes/5")  # the client connection is still usable
    assert body == pattern(5)


@pytest.mark.parametrize("chunked", [False, True])
def test_upload_10_mib_intact(pki, localhost_bundle, http_backend, offload, port, chunked):
    server = http_backend()
    offload(http_config(port, [localhost_bundle], [server.address]))
    payload = os.urandom(10 * 1024 * 1024)
    conn = https(port, pki.ca)
    if chunked:
        pieces = (payload[i : i + 300_000] for i in range(0, len(payload), 300_000))
        conn.request("POST", "/sha", body=pieces, encode_chunked=True)
    else:
        conn.request("POST", "/sha", body=payload)
    response = conn.getresponse()
    assert response.read().decode() == hashlib.sha256(payload).hexdigest()
    received = server.requests[-1]
    assert received.header("Transfer-Encoding" if chunked else "Content-Length") == (
        "chunked" if chunked else str(len(payload)))


def test_pipelined_requests_are_answered_in_order(pki, localhost_bundle, http_backend, offload,
                                                  port):
    server = http_backend()
    offload(http_config(port, [localhost_bundle], [server.address]))
    pipe = TlsPipe(port, client_context(pki.ca))
    pipe.send(b"".join(b"GET /bytes/%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % size
                       for size in (5, 50, 500, 1, 5000)))
    responses = read_responses(pipe, 5)
    pipe.close()
    assert [r.endswith(pattern(size)) and b"Content-Length: %d" % size in r
            for r, size in zip(responses, (5, 50, 500, 1, 5000), strict=True)] == [True] * 5
    assert [r.target for r in server.requests] == [f"/bytes/{s}" for s in (5, 50, 500, 1, 5000)]


def test_forwarding_headers(pki, localhost_bundle, http_backend, offload, port):
    server = http_backend()
    offload(http_config(port, [localhost_bundle], [server.address],
                        frontend='hsts = "max-age=63072000"\nforwarded = true'))
    conn = https(port, pki.ca)
    response, _ = get(conn, "/echo?x=1", **{"X-Forwarded-For": "6.6.6.6",
                                          "X-Request-ID": "spoofed", "Connection": "x-secret",
                                          "X-Secret": "hop", "Proxy-Connection": "keep-alive"})
    assert response.status == 200
    assert response.getheader("Strict-Transport-Security") == "max-age=63072000"
    received = server.requests[-1]
    assert received.target == "/echo?x=1"
    assert received.headers_named("Host") == [f"localhost:{port}"]
    assert received.header("X-Forwarded-For") == "127.0.0.1"
    assert received.header("X-Forwarded-Proto") == "https"
    assert received.header("X-Forwarded-Host") == f"localhost:{port}"
    assert received.header("X-Forwarded-Port") == str(port)
    assert received.header("Forwarded") == f'for=127.0.0.1;proto=https;host="localhost:{port}"'
    assert received.header("X-Request-ID") not in (None, "spoofed")
    for hop in ("Connection", "X-Secret", "Proxy-Connection", "Keep-Alive", "TE"):
        assert received.header(hop) is None


def test_trusted_proxy_headers_are_kept(pki, localhost_bundle, http_backend, offload, port):
    server = http_backend()
    offload(http_config(port, [localhost_bundle], [server.address],
                        frontend='trusted_proxies = ["127.0.0.0/8"]'))
    conn = https(port, pki.ca)
    get(conn, "/echo", **{"X-Forwarded-For": "203.0.113.9", "X-Request-ID": "from-lb-1"})
    received = server.requests[-1]
    assert received.header("X-Forwarded-For") == "203.0.113.9, 127.0.0.1"
    assert received.header("X-Request-ID") == "from-lb-1"


def test_head_204_304_framing(pki, localhost_bundle, http_backend, offload, port):
    server = http_backend()
    offload(http_config(port, [localhost_bundle], [server.address]))
    conn = https(port, pki.ca)
    conn.request("HEAD", "/anything")
    response = conn.getresponse()
    assert response.getheader("Content-Length") == "1000"
    assert response.read() == b""
    for status in (204, 304):
        response, body = get(conn, f"/status/{status}")
        assert response.status == status and body == b""
    response, body = get(conn, "/bytes/3")
    assert body == pattern(3)  # the connection survived the bodiless answers


def test_expect_100_continue(pki, localhost_bundle, http_backend, offload, port):
    server = http_backend()
    offload(http_config(port, [localhost_bundle], [server.address]))
    pipe = TlsPipe(port, client_context(pki.ca))
    pipe.send(b"POST /sha HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n"
              b"Expect: 100-continue\r\n\r\n")
    pipe.send(b"hello")
    (response,) = read_responses(pipe, 1)
    pipe.close()
    assert response.startswith(b"HTTP/1.1 200")
    assert response.endswith(hashlib.sha256(b"hello").hexdigest().encode())
    assert server.requests[-1].header("Expect") == "100-continue"


def test_http10_client(pki, localhost_bundle, http_backend, offload, port):
    server = http_backend()
    offload(http_config(port, [localhost_bundle], [server.address]))
    pipe = TlsPipe(port, client_context(pki.ca))
    pipe.send(b"GET /chunked/3000 HTTP/1.0\r\n\r\n")
    answer = pipe.recv_all()
    pipe.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Transfer-Encoding" not in head and b"Connection: close" in head
    assert body == pattern(3000)
    assert server.requests[-1].version == "HTTP/1.1"
    assert server.requests[-1].header("Host") == ""


def test_websocket_echo(pki, localhost_bundle, http_backend, offload, port):
    server = http_backend()
    offload(http_config(port, [localhost_bundle], [server.address]))
    pipe = TlsPipe(port, client_context(pki.ca))
    pipe.send(b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\n\r\nearly")
    data = b""
    while b"\r\n\r\n" not in data:
        data += pipe.recv()
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    assert b"Upgrade: websocket" in head
    while len(rest) < 5:
        rest += pipe.recv()
    assert rest == b"early"
    for message in (b"hello", os.urandom(100_000)):
        pipe.send(message)
        echoed = b""
        while len(echoed) < len(message):
            echoed += pipe.recv()
        assert echoed == message
    pipe.close()
    received = server.requests[-1]
    assert received.header("Upgrade") == "websocket"
    assert received.header("Sec-WebSocket-Key") == "dGhlIHNhbXBsZSBub25jZQ=="


def _websocket(port: int, ca, message: bytes) -> None:
    """Open a WebSocket through offload, echo ``message`` once, close it."""
    pipe = TlsPipe(port, client_context(ca))
    pipe.send(b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += pipe.recv()
    assert data.startswith(b"HTTP/1.1 101")
    pipe.send(message)
    echoed = data.partition(b"\r\n\r\n")[2]
    while len(echoed) < len(message):
        echoed += pipe.recv()
    assert echoed == message
    pipe.close()


def test_a_closed_websocket_gives_back_its_servers_slot(pki, localhost_bundle, http_backend,
                                                        offload, port):
    """With max_connections = 1, a server must take requests again once a tunnel closed (it
    answered 503 forever after the first WebSocket)."""
    server = http_backend()
    instance = offload(http_config(
        port, [localhost_bundle],
        [f'{{ name = "only", address = "{server.address}", max_connections = 1 }}']))
    for round_ in range(3):
        mark = len(instance.events)
        _websocket(port, pki.ca, b"x" * (1000 + round_))
        instance.wait_for(lambda e: e.get("path") == "/ws" and e.get("status") == 101, after=mark)
        conn = https(port, pki.ca)
        response, body = get(conn, "/bytes/5")
        assert (response.status, body) == (200, pattern(5)), f"round {round_}"
        conn.close()


def test_websocket_access_log_line_has_the_tunnels_bytes_and_duration(
        pki, localhost_bundle, http_backend, offload, port):
    server = http_backend()
    instance = offload(http_config(port, [localhost_bundle], [server.address]))
    started = time.monotonic()
    pipe = TlsPipe(port, client_context(pki.ca))
    pipe.send(b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += pipe.recv()
    echoed = data.partition(b"\r\n\r\n")[2]
    for message in (b"a" * 3000, b"b" * 7000):
        pipe.send(message)
        while len(echoed) < len(message):
            echoed += pipe.recv()
        echoed = echoed[len(message):]
    threading.Event().wait(0.3)  # the tunnel stays open a known while
    pipe.close()
    entry = instance.wait_for(lambda e: e.get("path") == "/ws" and "status" in e)
    assert entry["status"] == 101
    assert (entry["bytes_in"], entry["bytes_out"]) == (10_000, 10_000)
    assert 300 <= entry["total_ms"] <= (time.monotonic() - started) * 1000 + 50
    assert entry["reason"] in ("closed", "client_closed")


def test_h2c_upgrade_is_never_forwarded(pki, localhost_bundle, http_backend, offload, port):
    server = http_backend()
    offload(http_config(port, [localhost_bundle], [server.address]))
    pipe = TlsPipe(port, client_context(pki.ca))
    pipe.send(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: h2c\r\n"
              b"Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n")
    (response,) = read_responses(pipe, 1)
    pipe.close()
    assert response.startswith(b"HTTP/1.1 200")
    received = server.requests[-1]
    for name in ("Upgrade", "Connection", "HTTP2-Settings"):
        assert received.header(name) is None


def test_access_log_line(pki, localhost_bundle, http_backend, offload, port):
    server = http_backend()
    instance = offload(http_config(port, [localhost_bundle], [server.address]))
    conn = https(port, pki.ca)
    get(conn, "/bytes/42", **{"User-Agent": "test-agent"})
    entry = instance.wait_for(lambda e: e.get("path") == "/bytes/42")
    assert entry["status"] == 200 and entry["method"] == "GET" and entry["http"] == "1.1"
    assert entry["bytes_out"] == 42 and entry["server"] == server.address
    assert entry["tls_version"] == "TLSv1.3" and entry["sni"] == "localhost"
    assert entry["alpn"] == "http/1.1" and entry["user_agent"] == "test-agent"
    for key in ("time", "client", "cipher", "resumed", "handshake_ms", "connect_ms",
                "response_ms", "total_ms", "request_id", "bytes_in"):
        assert key in entry, key


def test_combined_access_log_to_file(pki, localhost_bundle, http_backend, offload, port, tmp_path):
    server = http_backend()
    log = tmp_path / "access.log"
    offload(http_config(port, [localhost_bundle], [server.address], access_log=str(log),
                        frontend='access_log_format = "combined"'))
    conn = https(port, pki.ca)
    get(conn, "/bytes/7", **{"User-Agent": "agent/1", "Referer": "https://r.example/"})
    deadline = time.monotonic() + 5
    while (not log.exists() or not log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    line = log.read_text().strip()
    assert line.startswith("127.0.0.1 - - [")
    assert '"GET /bytes/7 HTTP/1.1" 200 7 "https://r.example/" "agent/1"' in line


@pytest.mark.parametrize(("frontend", "chosen"), [("", "h2"), ("http2 = false", "http/1.1")])
def test_alpn_offers_h2_then_http11(pki, localhost_bundle, http_backend, offload, port,
                                    frontend, chosen):
    from harness import tls_connect

    server = http_backend()
    offload(http_config(port, [localhost_bundle], [server.address], frontend=frontend))
    with tls_connect(port, client_context(pki.ca, alpn=["h2", "http/1.1"])) as tls:
        assert tls.selected_alpn_protocol() == chosen
    with tls_connect(port, client_context(pki.ca, alpn=["http/1.1"])) as tls:
        assert tls.selected_alpn_protocol() == "http/1.1"


def test_redirect_listener(pki, localhost_bundle, http_backend, offload, port):
    from harness import free_port, recv_all

    server = http_backend()
    plain = free_port()
    offload(http_config(port, [localhost_bundle], [server.address],
                        frontend=f'redirect_http = ["127.0.0.1:{plain}"]'))
    with socket.create_connection(("127.0.0.1", plain), timeout=5) as raw:
        raw.sendall(b"GET /a/b?c=1 HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
        answer = recv_all(raw)
    assert answer.startswith(b"HTTP/1.1 308")
    assert f"Location: https://www.example.test:{port}/a/b?c=1".encode() in answer
    assert server.requests == []


def test_drain_finishes_inflight_and_closes_idle(pki, localhost_bundle, http_backend, offload,
                                                 port):
    server = http_backend()
    instance = offload(http_config(port, [localhost_bundle], [server.address]))
    idle = https(port, pki.ca)
    get(idle, "/bytes/1")
    busy = TlsPipe(port, client_context(pki.ca))
    busy.send(b"GET /slow/1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    deadline = time.monotonic() + 5
    while not any(r.target == "/slow/1" for r in server.requests) and time.monotonic() < deadline:
        time.sleep(0.02)
    instance.signal(signal.SIGTERM)
    (response,) = read_responses(busy, 1)
    assert response.startswith(b"HTTP/1.1 200") and b"Connection: close" in response
    assert busy.recv_all() == b""
    busy.close()
    with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
        get(idle, "/bytes/1")
    assert instance.process.wait(15) == 0


@pytest.mark.parametrize("how", ["stop", "reload"])
def test_a_connection_drained_before_its_first_request_still_serves_it(
        pki, localhost_bundle, http_backend, offload, port, how):
    """A client that finished its handshake and is about to send its first request is not an
    idle keep-alive connection: a stop or a reload must serve that request, not close it."""
    server = http_backend()
    instance = offload(http_config(port, [localhost_bundle], [server.address],
                                   frontend='request_timeout = "5s"'))
    fresh = [TlsPipe(port, client_context(pki.ca)) for _ in range(4)]
    started = TlsPipe(port, client_context(pki.ca))
    started.send(b"GET /bytes/3 HTTP/1.1\r\n")  # half a head before the drain
    mark = len(instance.events)
    if how == "reload":  # a changed configuration: new workers start, the old ones drain
        assert instance.config is not None
        text = instance.config.read_text()
        instance.config.write_text(text.replace('drain_timeout = "10s"', 'drain_timeout = "11s"'))
    instance.signal(signal.SIGTERM if how == "stop" else signal.SIGHUP)
    instance.wait_msg("worker draining", after=mark)
    threading.Event().wait(0.3)  # the drain has run over every open connection by now
    for index, pipe in enumerate(fresh):
        pipe.send(b"GET /bytes/%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % (index + 1))
    started.send(b"Host: localhost\r\n\r\n")
    for index, pipe in enumerate([*fresh, started]):
        (response,) = read_responses(pipe, 1)
        size = index + 1 if index < len(fresh) else 3
        assert response.startswith(b"HTTP/1.1 200"), (index, response[:100])
        assert b"Connection: close" in response and response.endswith(pattern(size))
        assert pipe.recv_all() == b""
        pipe.close()
    if how == "stop":
        assert instance.process.wait(15) == 0


def test_echo_shows_the_request_as_forwarded(pki, localhost_bundle, http_backend, offload, port):
    server = http_backend()
    offload(http_config(port, [localhost_bundle], [server.address]))
    conn = https(port, pki.ca)
    conn.request("PUT", "/echo", body=b"x" * 10, headers={"Content-Type": "text/plain"})
    echoed = json.loads(conn.getresponse().read())
    assert echoed["method"] == "PUT" and echoed["body"] == 10
    names = [name.lower() for name, _ in echoed["headers"]]
    assert names.count("host") == 1 and names.count("content-length") == 1
    assert "transfer-encoding" not in names


def test_a_bad_pipelined_request_does_not_spoil_the_one_before(pki, localhost_bundle,
                                                               http_backend, offload, port):
    server = http_backend()
    offload(http_config(port, [localhost_bundle], [server.address]))
    pipe = TlsPipe(port, client_context(pki.ca))
    pipe.send(b"GET /slow/0.3 HTTP/1.1\r\nHost: localhost\r\n\r\n"
              b"GET /bytes/9 HTTP/1.1\r\nHost: localhost\r\n\r\n"
              b"GET / HTTP/1.1\r\nHost: localhost\r\nBad Header: x\r\n\r\n")
    data = pipe.recv_all()
    pipe.close()
    first, _, rest = data.partition(b"slow\n")
    assert first.startswith(b"HTTP/1.1 200")
    assert rest.startswith(b"HTTP/1.1 200") and pattern(9) in rest
    assert b"HTTP/1.1 400 " in rest
    assert [r.target for r in server.requests] == ["/slow/0.3", "/bytes/9"]


def test_response_trailers_reach_an_http11_client(pki, localhost_bundle, http_backend, offload,
                                                  port):
    server = http_backend()
    offload(http_config(port, [localhost_bundle], [server.address]))
    pipe = TlsPipe(port, client_context(pki.ca))
    pipe.send(b"GET /chunked/10 HTTP/1.1\r\nHost: localhost\r\nTE: trailers\r\n"
              b"Connection: close\r\n\r\n")
    answer = pipe.recv_all()
    pipe.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body == b"a\r\n" + pattern(10) + b"\r\n0\r\nX-Trailer: done\r\n\r\n"


def test_slow_reader_does_not_grow_memory(pki, localhost_bundle, http_backend, offload, port):
    from harness import rss_kib, tls_connect

    server = http_backend()
    instance = offload(http_config(port, [localhost_bundle], [server.address]))
    (worker,) = instance.worker_pids()
    size = 256 * 1024 * 1024
    with tls_connect(port, client_context(pki.ca), timeout=30) as tls:
        tls.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % size)
        first = tls.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        time.sleep(0.5)  # the backend pushes as fast as it can while we do not read
        before = rss_kib(worker)
        time.sleep(2.5)
        after = rss_kib(worker)
        assert after - before < 4096, f"memory grew by {after - before} KiB while not reading"
        received = len(first.partition(b"\r\n\r\n")[2])
        while received < size:
            chunk = tls.recv(1 << 20)
            assert chunk
            received += len(chunk)
    assert received == size
    assert server.requests[-1].target == f"/bytes/{size}"


def test_trailers_arrive_with_the_field_that_announces_them(pki, localhost_bundle, backend,
                                                           offload, port):
    def answer(conn: socket.socket, recording) -> None:
        while b"\r\n\r\n" not in recording.data:
            recording.data += conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"2\r\nok\r\n0\r\nX-Sum: 5\r\n\r\n")
        recording.closed.wait(5)

    server = backend(answer)
    offload(http_config(port, [localhost_bundle], [server.address]))
    pipe = TlsPipe(port, client_context(pki.ca))
    pipe.send(b"GET / HTTP/1.1\r\nHost: localhost\r\nTE: trailers\r\nConnection: close\r\n\r\n")
    answer_bytes = pipe.recv_all()
    pipe.close()
    head, _, body = answer_bytes.partition(b"\r\n\r\n")
    assert b"\r\nTrailer: X-Sum\r\n" in head + b"\r\n"
    assert body == b"2\r\nok\r\n0\r\nX-Sum: 5\r\n\r\n"
