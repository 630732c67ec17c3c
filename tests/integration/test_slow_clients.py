"""Slow clients over real TLS: each is cut off, named in the security log, and a client
behaving normally is served meanwhile.

First one slow client at a time (a trickled head, a trickled body, a client that stops
reading, one that never finishes its handshake), then ``slowhttptest`` with a few hundred
connections for a few seconds in each of its modes while a probe keeps making requests
from another loopback address.
"""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field

import pytest
from conftest import http_config, tcp_config
from harness import Offload, Recording, TlsPipe, client_context, need

pytestmark = pytest.mark.serial  # a probe must be served while the attack runs: run alone

PROBE = "127.0.0.2"


def security_event(instance: Offload, cause: str, timeout: float = 15.0) -> dict[str, object]:
    return instance.wait_for(
        lambda e: e.get("event") == "slow_client" and e.get("cause") == cause, timeout)


def trickle(pipe: TlsPipe, pieces: list[bytes], every: float, limit: float) -> tuple[bytes, float]:
    """Send ``pieces`` one at a time until the server closes; (its answer, seconds taken)."""
    started = time.monotonic()
    pipe.sock.settimeout(every)
    answer = b""
    for piece in pieces:
        try:
            pipe.send(piece)
        except OSError:
            break
        try:
            chunk = pipe.recv()
        except TimeoutError:
            continue
        except OSError:
            break
        answer += chunk
        if not chunk or time.monotonic() - started > limit:
            break
    pipe.sock.settimeout(5)
    try:
        answer += pipe.recv_all()
    except OSError:
        pass
    return answer, time.monotonic() - started


# ----------------------------------------------------------------------- one slow client each


def test_trickled_request_head_is_cut_at_request_timeout(pki, localhost_bundle, http_backend,
                                                          offload, port):
    """Slowloris: one header line at a time never completes the head."""
    server = http_backend()
    instance = offload(http_config(port, [localhost_bundle], [server.address],
                                   frontend='request_timeout = "1s"'))
    pipe = TlsPipe(port, client_context(pki.ca))
    lines = [b"GET / HTTP/1.1\r\nHost: localhost\r\n"] + [b"X-%d: x\r\n" % i for i in range(50)]
    answer, took = trickle(pipe, lines, every=0.2, limit=8)
    pipe.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:60]
    assert 0.8 < took < 5
    event = security_event(instance, "request_timeout")
    assert event["client"] == "127.0.0.1" and event["frontend"] == "web"
    assert server.requests == []


def test_trickled_body_is_cut_below_the_minimum_rate(pki, localhost_bundle, http_backend,
                                                      offload, port):
    """R-U-Dead-Yet: bytes arrive more often than body_timeout, far below min_body_rate."""
    server = http_backend()
    instance = offload(http_config(port, [localhost_bundle], [server.address],
                                   frontend='body_timeout = "1s"\nmin_body_rate = "1KiB/s"'))
    pipe = TlsPipe(port, client_context(pki.ca))
    pipe.send(b"POST /sha HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n")
    answer, took = trickle(pipe, [b"0123456789"] * 100, every=0.1, limit=8)
    pipe.close()
    assert answer.startswith(b"HTTP/1.1 408 ") or answer == b"", answer[:60]
    assert took < 5
    security_event(instance, "min_body_rate")
    logged = instance.wait_for(lambda e: e.get("path") == "/sha" and "status" in e)
    assert (logged["status"], logged["reason"]) == (408, "min_body_rate")
    assert not any(len(request.body) == 100000 for request in server.requests)


def test_a_body_at_the_minimum_rate_passes(pki, localhost_bundle, http_backend, offload, port):
    """The same trickle is fine when it is fast enough: 40 bytes per 20 ms is 2 KB/s."""
    server = http_backend()
    offload(http_config(port, [localhost_bundle], [server.address],
                        frontend='body_timeout = "1s"\nmin_body_rate = "1KiB/s"'))
    pipe = TlsPipe(port, client_context(pki.ca))
    pipe.send(b"POST /sha HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4000\r\n\r\n")
    for _ in range(100):
        pipe.send(b"x" * 40)
        time.sleep(0.02)
    answer = pipe.recv()
    pipe.close()
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:60]


def _flood(size: int):
    def handler(conn: socket.socket, recording: Recording) -> None:
        conn.recv(100)
        block = b"z" * 65536
        for _ in range(size // len(block)):
            conn.sendall(block)
    return handler


def test_client_that_stops_reading_is_cut_at_send_timeout_tcp(pki, localhost_bundle, backend,
                                                               offload, port):
    server = backend(_flood(256 * 1024 * 1024))
    instance = offload(tcp_config(port, [localhost_bundle], [server.address],
                                  frontend='send_timeout = "1s"'))
    pipe = TlsPipe(port, client_context(pki.ca))
    pipe.send(b"go")  # and never read
    recording = server.wait_connections(1)[0]
    assert recording.closed.wait(10), "the backend connection was not closed"
    event = security_event(instance, "send_timeout")
    assert event["client"] == "127.0.0.1" and event["frontend"] == "test"
    pipe.close()


def test_client_that_stops_reading_is_cut_at_send_timeout_http(pki, localhost_bundle,
                                                                http_backend, offload, port):
    """The backend's silence while offload waits for the client is not held against the
    backend: server_timeout is shorter than send_timeout here, and must not fire."""
    server = http_backend()
    instance = offload(http_config(port, [localhost_bundle], [server.address],
                                   frontend='send_timeout = "2s"',
                                   backend='server_timeout = "1s"'))
    pipe = TlsPipe(port, client_context(pki.ca))
    pipe.send(b"GET /stream/200000000 HTTP/1.1\r\nHost: localhost\r\n\r\n")  # never read
    security_event(instance, "send_timeout")
    logged = instance.wait_for(lambda e: e.get("path") == "/stream/200000000" and "status" in e)
    assert (logged["status"], logged["reason"]) == (200, "send_timeout")
    pipe.close()


def test_unfinished_handshake_is_a_slow_client(pki, localhost_bundle, backend, offload, port):
    server = backend(_flood(0))
    instance = offload(tcp_config(port, [localhost_bundle], [server.address],
                                  frontend='handshake_timeout = "500ms"'))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"\x16\x03\x01")  # the start of a record, and nothing more
        assert sock.recv(10) == b""
    event = security_event(instance, "handshake_timeout")
    assert event["client"] == "127.0.0.1"


# ----------------------------------------------------------------------- slowhttptest


@dataclass
class Probe:
    """A well-behaved client: a new connection and one request every ``every`` seconds."""

    port: int
    ca: object
    every: float = 0.1
    successes: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._context = client_context(self.ca)  # type: ignore[arg-type]

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5,
                                              source_address=(PROBE, 0)) as raw, \
                        self._context.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(b"GET /probe HTTP/1.1\r\nHost: localhost\r\nConnection: close"
                                b"\r\n\r\n")
                    answer = b""
                    while chunk := tls.recv(65536):
                        answer += chunk
                if answer.startswith(b"HTTP/1.1 200 "):
                    self.successes += 1
                else:
                    self.failures.append(repr(answer[:40]))
            except OSError as error:
                self.failures.append(repr(error))


def slowhttptest(port: int, mode: str, *options: str, path: str = "/") -> str:
    """Run slowhttptest: 300 connections, 150 a second, for 6 seconds; returns its output."""
    tool = need("slowhttptest", "slowhttptest")
    command = [tool, mode, "-c", "300", "-r", "150", "-l", "6", "-p", "3",
               "-u", f"https://127.0.0.1:{port}{path}", *options]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    output = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)
    assert "Exit status" in output, output[-2000:]
    return output


def cut_off(instance: Offload, cause: str) -> int:
    """Slow clients cut off for ``cause``, as far as the (capped) security log tells: each
    line counts itself and the lines left out before it."""
    return sum(1 + int(e.get("suppressed", 0)) for e in list(instance.events)
               if e.get("event") == "slow_client" and e.get("cause") == cause)


SLOW = ('request_timeout = "2s"\nbody_timeout = "2s"\nmin_body_rate = "500B/s"\n'
        'send_timeout = "2s"\nhandshake_timeout = "2s"')


@pytest.mark.parametrize(("mode", "options", "path", "cause"), [
    ("-H", ["-i", "1"], "/", "request_timeout"),  # slowloris
    ("-B", ["-i", "1", "-s", "100000", "-x", "10"], "/sha", "min_body_rate"),  # slow body
    ("-X", ["-w", "16", "-y", "32", "-n", "1", "-z", "16"], "/stream/16000000",  # slow read
     "send_timeout"),
])
def test_slowhttptest_while_a_probe_is_served(pki, localhost_bundle, http_backend, offload, port,
                                              mode, options, path, cause):
    need("slowhttptest", "slowhttptest")
    server = http_backend()
    instance = offload(http_config(port, [localhost_bundle], [server.address], frontend=SLOW,
                                   access_log="off"))
    with Probe(port, pki.ca) as probe:
        output = slowhttptest(port, mode, *options, path=path)
    assert probe.failures == [], probe.failures[:5]
    assert probe.successes >= 5, output[-1500:]  # it ran throughout; how fast is not the point
    event = security_event(instance, cause)
    assert event["client"] == "127.0.0.1"
    assert cut_off(instance, cause) >= 50, output[-1500:]
