"""A small, fixed-size load for counting (instructions, system calls), never for timing.

Three kinds of work against a TLS listener on 127.0.0.1, each done by ``--clients`` threads
with blocking sockets (how fast the client is does not matter: what is counted is the
server's work per unit, which is the same however long the unit takes):

- ``ka``: keep-alive ``GET /small`` requests, one in flight per connection; the connections
  are opened before the counted units (``open_keepalive``) so only requests are counted;
- ``full``: connect, full TLS 1.3 handshake (no session offered), ``GET /small`` with
  ``Connection: close``, read to the server's close (as peerbench's hsload);
- ``resumed``: the same, offering the session ticket of the client's previous connection;
  every counted handshake must have resumed, otherwise the run is an error.

Only TLS 1.3 with TLS_AES_128_GCM_SHA256 and X25519 is offered, and SNI ``localhost`` is
sent, as peerbench's load generators do.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

BODY = b"x" * 100
KA_REQUEST = b"GET /small HTTP/1.1\r\nHost: localhost\r\n\r\n"
CLOSE_REQUEST = b"GET /small HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def client_context(ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_ciphers("ECDHE+AESGCM")  # TLS 1.2 only; 1.3 suites below
    context.set_alpn_protocols(["http/1.1"])
    try:  # Python 3.13+ can restrict the TLS 1.3 suites and groups
        context.set_ciphersuites("TLS_AES_128_GCM_SHA256")  # type: ignore[attr-defined]
    except AttributeError:
        pass
    return context


def read_response(sock: ssl.SSLSocket, buffer: bytearray) -> None:
    """One response with a Content-Length body, exactly; what follows stays in ``buffer``."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        buffer += chunk
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end]).lower()
    if not head.startswith(b"http/1.1 200"):
        raise ConnectionError(f"unexpected response {head[:80]!r}")
    length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
    while len(buffer) < end + length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside the body")
        buffer += chunk
    if bytes(buffer[end:end + length]) != BODY:
        raise ConnectionError("wrong body")
    del buffer[:end + length]


class KeepAlive:
    """``clients`` open keep-alive connections, to send requests on in rounds."""

    def __init__(self, port: int, context: ssl.SSLContext, clients: int) -> None:
        self.connections: list[tuple[ssl.SSLSocket, bytearray]] = []
        for _ in range(clients):
            raw = socket.create_connection(("127.0.0.1", port), timeout=600)
            self.connections.append((context.wrap_socket(raw, server_hostname="localhost"),
                                     bytearray()))
        self.requests(len(self.connections))  # every connection has done one request

    def requests(self, count: int) -> None:
        """``count`` requests, spread over the connections, one in flight on each."""
        share = [count // len(self.connections)] * len(self.connections)
        for i in range(count % len(self.connections)):
            share[i] += 1

        def run(index: int) -> None:
            sock, buffer = self.connections[index]
            for _ in range(share[index]):
                sock.sendall(KA_REQUEST)
                read_response(sock, buffer)
        _parallel(len(self.connections), run)

    def close(self) -> None:
        for sock, _ in self.connections:
            sock.close()


class Handshakes:
    """Connections with one request each, full or resumed handshakes."""

    def __init__(self, port: int, context: ssl.SSLContext, clients: int, *,
                 resume: bool) -> None:
        self.port, self.context, self.clients, self.resume = port, context, clients, resume
        self.sessions: list[ssl.SSLSession | None] = [None] * clients
        self.not_resumed = 0
        if resume:
            self.run(clients)  # every client holds a ticket

    def _one(self, index: int) -> None:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=600)
        session = self.sessions[index] if self.resume else None
        with self.context.wrap_socket(raw, server_hostname="localhost",
                                      session=session) as sock:
            sock.sendall(CLOSE_REQUEST)
            buffer = bytearray()
            read_response(sock, buffer)
            while sock.recv(65536):
                pass
            if self.resume:
                if session is not None and not sock.session_reused:
                    self.not_resumed += 1
                self.sessions[index] = sock.session

    def run(self, count: int) -> None:
        share = [count // self.clients] * self.clients
        for i in range(count % self.clients):
            share[i] += 1

        def run(index: int) -> None:
            for _ in range(share[index]):
                self._one(index)
        _parallel(self.clients, run)


def _parallel(count: int, body: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def guarded(index: int) -> None:
        try:
            body(index)
        except BaseException as error:  # reported by the caller's thread
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
