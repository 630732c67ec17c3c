"""The request-smuggling corpus against a real offload in HTTP mode.

One offload instance serves the whole module, in front of a recording backend that parses
every byte it receives with its own strict HTTP/1.1 parser. Each corpus case opens a new TLS
connection, sends its raw bytes, and checks what came back and what the backend saw: a rejected
case must not put a single byte on any backend connection; a forwarded case must arrive as
exactly the expected requests, each with one Host, at most one framing field, and no hop-by-hop
fields.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from conftest import Pki, http_config
from harness import Offload, Recording, TcpBackend, TlsPipe, client_context, free_port
from smuggling_corpus import CORPUS, Case, Forwarded

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
QUIET = 0.2
"""How long the backend must stay silent after a rejection (bounded wait, not a sleep)."""
GRACE = 0.25
"""How long to watch for an extra request after the expected ones arrived."""
DEADLINE = 4.0

FRONTEND = """
max_body_size = "1KiB"
max_header_size = "8KiB"
max_header_count = 50
request_timeout = "2s"
keepalive_timeout = "1s"
body_timeout = "1s"
"""
BACKEND = 'server_timeout = "1s"'

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade",
              "http2-settings"}

# ----------------------------------------------------------------------------- strict backend

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) (HTTP/1\.1)")
_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*")
_CHUNK_SIZE = re.compile(rb"([0-9a-fA-F]{1,16})(;[\t\x20-\x7e\x80-\xff]*)?")
_MAX_HEAD = 64 * 1024


class Malformed(Exception):
    """What offload sent is not a clean HTTP/1.1 request."""


@dataclass
class Received:
    """One request as the backend parsed it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]]
    raw: bytes

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class _Reader:
    """Buffered reading from ``recv`` (b"" at the end); every byte read is reported."""

    def __init__(self, recv: Callable[[], bytes], seen: Callable[[bytes], None]) -> None:
        self.recv = recv
        self.seen = seen
        self.buffer = bytearray()
        self.consumed = bytearray()
        """The bytes of the request being parsed."""

    def _fill(self) -> None:
        chunk = self.recv()
        if not chunk:
            raise EOFError
        self.seen(chunk)
        self.buffer += chunk

    def take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        out = bytes(self.buffer[:size])
        del self.buffer[:size]
        self.consumed += out
        return out

    def line(self, limit: int = _MAX_HEAD) -> bytes:
        """One line ending in CRLF, without it; a bare CR or LF in it is an error."""
        while (end := self.buffer.find(b"\n")) < 0:
            if len(self.buffer) > limit:
                raise Malformed("line too long")
            self._fill()
        raw = self.take(end + 1)
        if not raw.endswith(b"\r\n") or b"\r" in raw[:-2]:
            raise Malformed(f"bad line ending: {raw!r}")
        return raw[:-2]

    def at_start(self) -> bool:
        """Whether a new request starts (False on a clean EOF between requests)."""
        if not self.buffer:
            try:
                self._fill()
            except EOFError:
                return False
        self.consumed = bytearray()
        return True


def _fields(reader: _Reader) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    while line := reader.line():
        match = _FIELD.fullmatch(line)
        if match is None:
            raise Malformed(f"bad field line: {line!r}")
        out.append((match.group(1).decode(), match.group(2).decode("latin-1")))
    return out


def read_request(reader: _Reader) -> Received:
    line = reader.line()
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        raise Malformed(f"bad request line: {line!r}")
    headers = _fields(reader)
    lengths = [v for k, v in headers if k.lower() == "content-length"]
    codings = [v for k, v in headers if k.lower() == "transfer-encoding"]
    if lengths and codings:
        raise Malformed("both Content-Length and Transfer-Encoding")
    if len(lengths) > 1 or len(codings) > 1:
        raise Malformed("framing field repeated")
    body = b""
    trailers: list[tuple[str, str]] = []
    if codings:
        if codings[0] != "chunked":
            raise Malformed(f"Transfer-Encoding {codings[0]!r}")
        while True:
            size_line = reader.line()
            size = _CHUNK_SIZE.fullmatch(size_line)
            if size is None:
                raise Malformed(f"bad chunk size line: {size_line!r}")
            length = int(size.group(1), 16)
            if length == 0:
                break
            body += reader.take(length)
            if reader.take(2) != b"\r\n":
                raise Malformed("no CRLF after chunk data")
        trailers = _fields(reader)
    elif lengths:
        if not re.fullmatch(r"[0-9]{1,18}", lengths[0]):
            raise Malformed(f"Content-Length {lengths[0]!r}")
        body = reader.take(int(lengths[0]))
    return Received(match.group(1).decode(), match.group(2).decode(), headers, body, trailers,
                    bytes(reader.consumed))


@dataclass
class StrictBackend:
    """Parses what arrives, records it, answers 200 "ok" to every request."""

    requests: list[Received] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    bytes_in: int = 0
    changed: threading.Condition = field(default_factory=threading.Condition)

    def received(self, size: int) -> None:
        with self.changed:
            self.bytes_in += size
            self.changed.notify_all()

    def _note(self, request: Received | None = None, error: str = "") -> None:
        with self.changed:
            if request is not None:
                self.requests.append(request)
            if error:
                self.errors.append(error)
            self.changed.notify_all()

    def __call__(self, conn: socket.socket, recording: Recording) -> None:
        def seen(chunk: bytes) -> None:
            recording.data += chunk
            self.received(len(chunk))

        reader = _Reader(lambda: conn.recv(65536), seen)
        while reader.at_start():
            try:
                request = read_request(reader)
            except Malformed as error:
                self._note(error=f"malformed: {error}; bytes: {bytes(reader.consumed)[:300]!r}")
                return
            except EOFError:
                self._note(error=f"truncated request: {bytes(reader.consumed)[:300]!r}")
                return
            self._note(request)
            conn.sendall(OK[: OK.index(b"\r\n\r\n") + 4] if request.method == "HEAD" else OK)

    def state(self) -> tuple[int, int, int]:
        with self.changed:
            return self.bytes_in, len(self.requests), len(self.errors)

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait (bounded) until ``predicate`` holds; returns whether it did."""
        with self.changed:
            return self.changed.wait_for(predicate, timeout)


def parse_stream(data: bytes) -> list[Received]:
    """Every request in what one backend connection received (raises Malformed)."""
    pieces = [data]
    reader = _Reader(lambda: pieces.pop() if pieces else b"", lambda _: None)
    requests = []
    while reader.at_start():
        try:
            requests.append(read_request(reader))
        except EOFError:
            raise Malformed(f"truncated request: {bytes(reader.consumed)!r}") from None
    return requests


@dataclass
class Proxy:
    offload: Offload
    server: TcpBackend
    backend: StrictBackend
    port: int
    context: ssl.SSLContext


@pytest.fixture(scope="module")
def proxy(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    directory = tmp_path_factory.mktemp("smuggling")
    bundle = pki.bundle(["localhost", "127.0.0.1"], directory=directory)
    backend = StrictBackend()
    server = TcpBackend(backend)
    port = free_port()
    config = directory / "offload.toml"
    config.write_text(http_config(port, [bundle], [server.address], frontend=FRONTEND,
                                  backend=BACKEND))
    instance = Offload(config)
    try:
        instance.wait_ready()
        yield Proxy(instance, server, backend, port, client_context(pki.ca))
    finally:
        instance.kill()
        server.close()


# ----------------------------------------------------------------------------- client side


@dataclass
class Answer:
    responses: list[tuple[bytes, bytes, bytes]]
    """(status line, head, body) of each complete response."""
    rest: bytes
    closed: bool


def _responses(data: bytes, closed: bool) -> tuple[list[tuple[bytes, bytes, bytes]], bytes]:
    out = []
    while (end := data.find(b"\r\n\r\n")) >= 0:
        head = data[:end]
        match = re.search(rb"\r\ncontent-length: *([0-9]+)", head, re.IGNORECASE)
        if match is None:
            if not closed:
                break
            size = len(data) - end - 4
        else:
            size = int(match.group(1))
        if len(data) < end + 4 + size:
            break
        out.append((head.split(b"\r\n", 1)[0], head, data[end + 4: end + 4 + size]))
        data = data[end + 4 + size:]
    return out, data


def converse(port: int, context: ssl.SSLContext, raw: bytes, wanted: int,
             deadline: float) -> Answer:
    """Send ``raw`` on a new connection; read until ``wanted`` responses, the close, or the
    deadline."""
    pipe = TlsPipe(port, context)
    data = b""
    closed = False
    try:
        pipe.send(raw)
        while True:
            responses, _ = _responses(data, closed)
            if len(responses) >= wanted:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            pipe.sock.settimeout(remaining)
            try:
                chunk = pipe.recv()
            except TimeoutError:
                break
            except (ssl.SSLError, ConnectionError):
                chunk = b""
            if not chunk:
                closed = True
                break
            data += chunk
    finally:
        pipe.close()
    responses, rest = _responses(data, closed)
    return Answer(responses, rest, closed)


def _wait_closed(proxy: Proxy, raw: bytes, deadline: float) -> Answer:
    """Read until the server closes (an error must end the connection)."""
    return converse(proxy.port, proxy.context, raw, 10**6, deadline)


# ----------------------------------------------------------------------------- checks


def _check_forwarded(got: Received, want: Forwarded) -> None:
    assert (got.method, got.target, got.body) == (want.method, want.target, want.body), got.raw
    hosts = got.values("Host")
    assert hosts == [want.host], f"Host fields: {hosts}"
    lengths, codings = got.values("Content-Length"), got.values("Transfer-Encoding")
    assert len(lengths) + len(codings) <= 1, got.raw
    assert codings in ([], ["chunked"]), got.raw
    allowed = {name.lower() for name in want.allow}
    hop = sorted({k for k, _ in got.headers if k.lower() in HOP_BY_HOP - allowed})
    assert not hop, f"hop-by-hop fields forwarded: {hop}"
    # the client is not a trusted proxy: its forwarding fields are replaced by ours
    assert got.values("X-Forwarded-For") == ["127.0.0.1"]
    assert got.values("X-Forwarded-Proto") == ["https"]
    for name, value in want.headers:
        assert got.values(name) == [value], f"{name}: {got.values(name)}"
    for name in want.absent:
        assert got.values(name) == [], f"{name} must not be forwarded"


def _params() -> list[object]:
    names = [case.name for case in CORPUS]
    assert len(names) == len(set(names)), "case names must be unique"
    return [pytest.param(case, id=case.name, marks=[pytest.mark.xfail(strict=True, reason=case.bug)]
                         if case.bug else []) for case in CORPUS]


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 60
    assert all((case.rejected is None) != (not case.forwarded) for case in CORPUS)


@pytest.mark.parametrize("case", _params())
def test_smuggling_case(proxy: Proxy, case: Case):
    backend = proxy.backend
    before_bytes, before_requests, before_errors = backend.state()
    before_connections = len(proxy.server.connections)
    deadline = time.monotonic() + DEADLINE

    if case.rejected is not None:
        answer = _wait_closed(proxy, case.raw, deadline)
        if case.answer:  # not HTTP/1.1: compare the start of what came back
            assert answer.rest.startswith(case.answer), answer.rest[:40]
            assert answer.closed, "the connection must be closed after a rejected request"
        else:
            status = answer.responses[0][0] if answer.responses else answer.rest[:40]
            assert status.startswith(b"HTTP/1.1 %d " % case.rejected), status
            assert answer.closed, "the connection must be closed after a rejected request"
            assert len(answer.responses) == 1
        # bounded: give a connect or write that was under way the time to show up
        backend.wait(lambda: backend.bytes_in != before_bytes, QUIET)
        assert backend.state()[0] == before_bytes, "the backend received bytes"
        assert len(proxy.server.connections) == before_connections, "a backend connection opened"
        return

    wanted = len(case.forwarded)
    answer = converse(proxy.port, proxy.context, case.raw, wanted, deadline)
    backend.wait(lambda: len(backend.requests) - before_requests >= wanted
                 or len(backend.errors) > before_errors, max(0.0, deadline - time.monotonic()))
    # nothing more may come: a hidden request would show up now
    backend.wait(lambda: len(backend.requests) - before_requests > wanted
                 or len(backend.errors) > before_errors, GRACE)
    with backend.changed:
        received = backend.requests[before_requests:]
        errors = backend.errors[before_errors:]
    assert errors == []
    assert [(r.method, r.target) for r in received] == [
        (f.method, f.target) for f in case.forwarded]
    for got, want in zip(received, case.forwarded, strict=True):
        _check_forwarded(got, want)
    assert [line for line, _, _ in answer.responses] == [b"HTTP/1.1 200 OK"] * wanted
    assert all(body == b"ok" for _, _, body in answer.responses)


# ----------------------------------------------------------------------------- pooled desync


def answer_every_head(conn: socket.socket, recording: Recording) -> None:
    """A backend that answers each request head at once and never reads bodies (as handlers
    that ignore the body do); what arrived is parsed strictly afterwards."""
    buffer = b""
    while chunk := conn.recv(65536):
        recording.data += chunk
        buffer += chunk
        while (end := buffer.find(b"\r\n\r\n")) >= 0:
            buffer = buffer[end + 4:]
            conn.sendall(OK)


UPGRADES_WITH_A_BODY = [
    pytest.param(b"POST / HTTP/1.1\r\nHost: localhost\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n"
                 b"Content-Length: 5\r\n\r\nhello", id="h2c"),
    pytest.param(b"GET /chat HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\nContent-Length: 5\r\n\r\nhello", id="websocket"),
]


@pytest.mark.parametrize("attack", UPGRADES_WITH_A_BODY)
def test_upgrade_with_a_body_never_desyncs_a_pooled_connection(pki, localhost_bundle, backend,
                                                                offload, port, attack: bytes):
    server = backend(answer_every_head)
    offload(http_config(port, [localhost_bundle], [server.address], frontend=FRONTEND,
                        backend=BACKEND))
    context = client_context(pki.ca)
    converse(port, context, attack, 1, time.monotonic() + 2)
    victim = converse(port, context, b"GET /victim HTTP/1.1\r\nHost: localhost\r\n\r\n", 1,
                      time.monotonic() + DEADLINE)
    assert [line for line, _, _ in victim.responses] == [b"HTTP/1.1 200 OK"]
    targets = [request.target for recording in server.connections
               for request in parse_stream(bytes(recording.data))]
    assert "/victim" in targets
    assert set(targets) <= {"/", "/chat", "/victim"}
