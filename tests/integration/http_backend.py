"""A threaded HTTP/1.1 test server that records every request and answers by path.

Routes: ``/bytes/N`` (N deterministic bytes, Content-Length), ``/chunked/N`` (same, chunked),
``/close/N`` (same, HTTP/1.0-style: no length, ends with the close), ``/sha`` (sha256 of the
request body), ``/echo`` (the request as JSON), ``/status/N``, ``/slow/SECONDS``, ``/health``
(200, or 503 while ``healthy`` is False), ``/ws`` (101, then echoes bytes), ``/head`` (for HEAD:
Content-Length 1000, no body), ``/drop`` (closes without answering), anything else: 200 "ok".
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field

import pytest


def pattern(size: int) -> bytes:
    """Deterministic content of a given size."""
    block = bytes(range(256)) * 256
    return (block * (size // len(block) + 1))[:size]


@dataclass
class Received:
    """One request as the backend saw it."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    connection: int
    raw_head: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[0] if values else None

    def headers_named(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class HttpTestBackend:
    """Listens on 127.0.0.1; ``requests`` and ``connections`` record what arrived."""

    name: str = "backend"
    healthy: bool = True
    fail_status: int = 0
    """When set, every request except /health is answered with this status."""
    requests: list[Received] = field(default_factory=list)
    connections: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.address = f"127.0.0.1:{self.port}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number = self.connections
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        reader = _Reader(conn)
        try:
            conn.settimeout(30)
            while True:
                request = reader.request(number)
                if request is None:
                    return
                with self._lock:
                    self.requests.append(request)
                if not self._answer(conn, reader, request):
                    return
        except (OSError, ValueError):
            return
        finally:
            conn.close()

    def _answer(self, conn: socket.socket, reader: _Reader, request: Received) -> bool:
        path = request.target.split("?")[0]
        parts = path.strip("/").split("/")
        if request.method == "HEAD":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nX-Backend: %b\r\n\r\n"
                         % self.name.encode())
            return True
        if path == "/health":
            status = 200 if self.healthy else 503
            return _send(conn, status, b"health\n", self.name)
        if path == "/page":
            page = b"<!doctype html><title>offload test page</title><p>page</p>"
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n"
                         b"\r\n%b" % (len(page), page))
            return True
        if self.fail_status:
            return _send(conn, self.fail_status, b"failing\n", self.name)
        if parts[0] == "bytes":
            return _send(conn, 200, pattern(int(parts[1])), self.name)
        if parts[0] == "stream":  # like bytes/N, without holding the whole body in memory
            size = int(parts[1])
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Backend: %b\r\n\r\n"
                         % (size, self.name.encode()))
            block = pattern(65536)
            for start in range(0, size, len(block)):
                conn.sendall(block[: size - start])
            return True
        if parts[0] == "chunked":
            data = pattern(int(parts[1]))
            head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Backend: %b\r\n\r\n" % (
                self.name.encode())
            pieces = [head]
            for start in range(0, len(data), 65536):
                piece = data[start : start + 65536]
                pieces.append(b"%x\r\n%b\r\n" % (len(piece), piece))
            pieces.append(b"0\r\nX-Trailer: done\r\n\r\n")
            conn.sendall(b"".join(pieces))
            return True
        if parts[0] == "close":
            conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + pattern(int(parts[1])))
            return False
        if path == "/sha":
            return _send(conn, 200, hashlib.sha256(request.body).hexdigest().encode(), self.name)
        if path == "/echo":
            body = json.dumps({"method": request.method, "target": request.target,
                               "headers": request.headers, "body": len(request.body),
                               "connection": request.connection}).encode()
            return _send(conn, 200, body, self.name)
        if parts[0] == "status":
            return _send(conn, int(parts[1]), b"", self.name)
        if parts[0] == "slow":
            time.sleep(float(parts[1]))
            return _send(conn, 200, b"slow\n", self.name)
        if path == "/drop":
            return False
        if path == "/ws":
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: test\r\n\r\n")
            if reader.rest:
                conn.sendall(reader.rest)
            while chunk := conn.recv(65536):
                conn.sendall(chunk)
            return False
        return _send(conn, 200, b"ok", self.name)


def _send(conn: socket.socket, status: int, body: bytes, name: str) -> bool:
    reason = {200: b"OK", 503: b"Service Unavailable"}.get(status, b"Whatever")
    bodiless = status in (204, 304)
    head = b"HTTP/1.1 %d %b\r\nX-Backend: %b\r\n" % (status, reason, name.encode())
    if not bodiless:
        head += b"Content-Length: %d\r\n" % len(body)
    conn.sendall(head + b"\r\n" + (b"" if bodiless else body))
    return True


class _Reader:
    """A strict enough request reader for tests (the proxy in front is the strict one)."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.rest = b""

    def _fill(self) -> bool:
        data = self.conn.recv(65536)
        self.rest += data
        return bool(data)

    def _line(self) -> bytes:
        while b"\r\n" not in self.rest:
            if not self._fill():
                raise ValueError("connection closed mid-line")
        line, _, self.rest = self.rest.partition(b"\r\n")
        return line

    def _exactly(self, size: int) -> bytes:
        while len(self.rest) < size:
            if not self._fill():
                raise ValueError("connection closed mid-body")
        data, self.rest = self.rest[:size], self.rest[size:]
        return data

    def request(self, connection: int) -> Received | None:
        while b"\r\n\r\n" not in self.rest:
            if not self._fill():
                if self.rest:
                    raise ValueError("connection closed mid-head")
                return None
        raw_head = self.rest[: self.rest.index(b"\r\n\r\n") + 4]
        method, target, version = self._line().decode("latin-1").split(" ")
        headers = []
        while line := self._line():
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name, value.strip()))
        lower = {k.lower(): v for k, v in headers}
        body = b""
        if lower.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    break
                body += self._exactly(size)
                self._line()
        elif "content-length" in lower:
            body = self._exactly(int(lower["content-length"]))
        return Received(method, target, version, headers, body, connection, raw_head)


@pytest.fixture
def http_backend():
    """Factory for recording HTTP test backends, closed after the test."""
    made: list[HttpTestBackend] = []

    def make(name: str = "backend") -> HttpTestBackend:
        server = HttpTestBackend(name)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()
