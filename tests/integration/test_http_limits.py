"""HTTP mode limits and timeouts, each with the status code offload must answer."""

from __future__ import annotations

import contextlib
import socket
import time

import pytest
from conftest import http_config
from harness import TlsPipe, client_context, rss_kib
from http_backend import pattern
from http_client import get, https, read_responses

FAST = ('request_timeout = "500ms"\nkeepalive_timeout = "700ms"\nbody_timeout = "500ms"\n'
        'max_request_line = "1KiB"\nmax_header_size = "4KiB"\nmax_header_count = 20\n'
        'max_body_size = "64KiB"')


@pytest.fixture
def limited(pki, localhost_bundle, http_backend, offload, port):
    server = http_backend()
    instance = offload(http_config(port, [localhost_bundle], [server.address], frontend=FAST,
                                   backend='server_timeout = "600ms"'))
    return server, instance


def _answer(port, ca, raw: bytes) -> bytes:
    pipe = TlsPipe(port, client_context(ca))
    pipe.send(raw)
    try:
        return pipe.recv_all()
    finally:
        pipe.close()


@pytest.mark.parametrize(("raw", "status"), [
    (b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"b" * 5000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: localhost\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(30))
     + b"\r\n", 431),
    (b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 70000\r\n\r\n", 413),
    (b"GET / HTTP/2.0\r\nHost: localhost\r\n\r\n", 505),
    (b"CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\n\r\n", 405),
    (b"GET / HTTP/1.1\r\nHost: localhost\r\nExpect: teapot\r\n\r\n", 417),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
])
def test_limits_answer_with_their_status(pki, limited, port, raw, status):
    server, _ = limited
    answer = _answer(port, pki.ca, raw)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:80]
    assert b"Connection: close" in answer
    assert server.requests == []


def test_chunked_body_over_the_limit(pki, limited, port):
    server, _ = limited
    chunks = b"".join(b"%x\r\n%b\r\n" % (8192, b"c" * 8192) for _ in range(10))
    answer = _answer(port, pki.ca, b"POST /sha HTTP/1.1\r\nHost: localhost\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413 ") or answer == b""  # 413, or cut if answered
    assert not any(r.target == "/sha" and len(r.body) > 65536 for r in server.requests)


def test_request_header_timeout(pki, limited, port):
    pipe = TlsPipe(port, client_context(pki.ca))
    started = time.monotonic()
    pipe.send(b"GET / HTTP/1.1\r\nHost: loc")
    answer = pipe.recv_all()
    pipe.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert 0.3 < time.monotonic() - started < 5


def test_body_timeout(pki, limited, port):
    server, _ = limited
    pipe = TlsPipe(port, client_context(pki.ca))
    pipe.send(b"POST /sha HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nonly part")
    answer = pipe.recv_all()
    pipe.close()
    assert answer.startswith(b"HTTP/1.1 408 ") or answer == b""
    assert not any(r.target == "/sha" and len(r.body) == 100 for r in server.requests)


def test_upstream_timeout_gives_504(pki, limited, port):
    conn = https(port, pki.ca)
    started = time.monotonic()
    response, _ = get(conn, "/slow/3")
    assert response.status == 504
    assert time.monotonic() - started < 2.5


def test_keep_alive_idle_timeout(pki, limited, port):
    pipe = TlsPipe(port, client_context(pki.ca))
    pipe.send(b"GET /bytes/1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    (response,) = read_responses(pipe, 1)
    assert response.startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    assert pipe.recv_all() == b""  # closed quietly, no 408 for an idle connection
    assert 0.4 < time.monotonic() - started < 5
    pipe.close()


def test_silent_new_connection_is_closed(pki, limited, port):
    pipe = TlsPipe(port, client_context(pki.ca))
    started = time.monotonic()
    assert pipe.recv_all() == b""
    assert time.monotonic() - started < 5
    pipe.close()


def test_upstream_timeout_flag_in_quick_mode(pki, localhost_bundle, http_backend, port):
    from harness import Offload

    server = http_backend()
    instance = Offload("", args=["run", "--listen", f"127.0.0.1:{port}", "--cert",
                                 str(localhost_bundle), "--backend", server.address,
                                 "--workers", "1", "--upstream-timeout", "400ms"])
    try:
        instance.wait_ready()
        conn = https(port, pki.ca)
        response, _ = get(conn, "/slow/2")
        assert response.status == 504
    finally:
        instance.kill()


# --- clients that pipeline and never read ----------------------------------------------------

def _worker_pid(instance) -> int:
    return int(instance.wait_msg("worker started")["pid"])


def test_pipelining_clients_that_never_read_hold_little_memory(pki, localhost_bundle,
                                                              http_backend, offload, port):
    """100 clients each pipeline half a megabyte of tiny requests and never read an answer:
    the worker holds at most 64 KiB per connection beyond the kernel's buffers (it held about
    1.3 MiB when every request of a read was parsed at once)."""
    server = http_backend()
    instance = offload(http_config(port, [localhost_bundle], [server.address],
                                   access_log="off"))
    pid = _worker_pid(instance)
    context = client_context(pki.ca)
    pipes = [TlsPipe(port, context) for _ in range(100)]
    for pipe in pipes:  # every connection has served a request: what is measured is the rest
        pipe.send(b"GET /warm HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert pipe.recv().startswith(b"HTTP/1.1 200")
    base = rss_kib(pid)
    request = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
    blob = request * (512 * 1024 // len(request))
    for pipe in pipes:
        pipe.tls.write(blob)
        data = pipe._out.read()
        pipe.sock.setblocking(False)
        sent, deadline = 0, time.monotonic() + 0.05
        while sent < len(data) and time.monotonic() < deadline:
            try:
                sent += pipe.sock.send(data[sent:sent + 65536])
            except BlockingIOError:
                time.sleep(0.001)
    # wait until the worker stops growing (it has read all it will read)
    previous, grown = base, rss_kib(pid)
    deadline = time.monotonic() + 10
    while grown != previous and time.monotonic() < deadline:
        time.sleep(0.5)
        previous, grown = grown, rss_kib(pid)
    per_connection = (grown - base) / len(pipes)
    assert per_connection <= 64, f"{per_connection:.1f} KiB per pipelining connection"
    # and the server still serves everyone else
    conn = https(port, pki.ca)
    response, _ = get(conn, "/bytes/10")
    assert response.status == 200
    for pipe in pipes:
        with contextlib.suppress(OSError):
            pipe.sock.shutdown(socket.SHUT_RDWR)
        pipe.close()


def test_many_pipelined_requests_are_all_answered_in_order(pki, localhost_bundle, http_backend,
                                                           offload, port):
    server = http_backend()
    offload(http_config(port, [localhost_bundle], [server.address], access_log="off"))
    pipe = TlsPipe(port, client_context(pki.ca))
    count = 2000
    pipe.send(b"".join(b"GET /bytes/%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % (i % 50 + 1)
                       for i in range(count)))
    responses = read_responses(pipe, count, deadline=60)
    pipe.close()
    assert len(responses) == count
    for i, response in enumerate(responses):
        assert response.endswith(b"\r\n\r\n" + pattern(i % 50 + 1)), i
