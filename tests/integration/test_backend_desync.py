"""A backend that breaks HTTP never desyncs a client or poisons the pool (RFC 9112 §6.3, §9.3).

Each case is a misbehaving backend: answers twice, sends a body after a response that has
none, answers a request nobody sent, sends a 1xx with a body. For each, the client that asked
gets exactly its one answer and nothing after it, and a second client on a fresh TLS
connection gets its own answer, never the extra bytes. The broken connection is counted and
logged once, by reason.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import http_config
from harness import Offload, Recording, TcpBackend, client_context, tls_connect
from http_client import https

FAKE = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nPWNED-BY-BE!"
"""What a misbehaving backend slips in: if a client ever sees it, a response crossed over."""


def answer(path: str, status: int = 200) -> bytes:
    body = f"answer:{path}".encode()
    return b"HTTP/1.1 %d OK\r\nContent-Length: %d\r\n\r\n%b" % (status, len(body), body)


def read_head(conn: socket.socket, buffer: bytearray) -> tuple[str, str, int] | None:
    """The next request's (method, path, Content-Length) from ``conn``; None at EOF."""
    while b"\r\n\r\n" not in buffer:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    buffer[:] = rest
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return method, path, length


def read_body(conn: socket.socket, buffer: bytearray, length: int) -> bytes:
    while len(buffer) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        buffer += chunk
    body = bytes(buffer[:length])
    del buffer[:length]
    return body


@dataclass
class Misbehaviour:
    """What the backend does for the request to /evil (every other request is answered
    properly with ``answer(path)``)."""

    now: bytes
    later: bytes = b""
    ignore_body: bool = False
    """Treat the request body as the next request (a backend that does not read bodies)."""


CASES: dict[str, tuple[str, Misbehaviour, int, str | None]] = {
    # name: (method, misbehaviour, status the client sees, reason counted and logged)
    "two-responses-one-write": ("GET", Misbehaviour(answer("/evil") + FAKE), 200,
                                "data_after_response"),
    "second-response-unfinished": ("GET", Misbehaviour(
        answer("/evil") + b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nPWNED"), 200,
        "data_after_response"),
    "chunked-then-more": ("GET", Misbehaviour(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"c\r\nanswer:/evil\r\n0\r\n\r\n" + FAKE), 200, "data_after_response"),
    "204-with-body": ("GET", Misbehaviour(
        b"HTTP/1.1 204 No Content\r\nContent-Length: %d\r\n\r\n" % len(FAKE) + FAKE), 204,
        "data_after_response"),
    "304-with-body": ("GET", Misbehaviour(
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: %d\r\n\r\n" % len(FAKE) + FAKE), 304,
        "data_after_response"),
    "head-with-body": ("HEAD", Misbehaviour(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(FAKE) + FAKE), 200,
        "data_after_response"),
    "204-body-later": ("GET", Misbehaviour(
        b"HTTP/1.1 204 No Content\r\nContent-Length: %d\r\n\r\n" % len(FAKE), later=FAKE), 204,
        None),  # a 204 announcing a body is never pooled: the late bytes find it closed
    "304-body-later": ("GET", Misbehaviour(
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: %d\r\n\r\n" % len(FAKE), later=FAKE),
        304, "unsolicited"),
    "head-body-later": ("HEAD", Misbehaviour(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(FAKE), later=FAKE), 200,
        "unsolicited"),
    "response-nobody-asked-for": ("GET", Misbehaviour(answer("/evil"), later=FAKE), 200,
                                  "unsolicited"),
    "interim-with-body": ("GET", Misbehaviour(
        b"HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\nhello" + answer("/evil")), 502,
        "bad_interim"),
    "interim-with-chunked": ("GET", Misbehaviour(
        b"HTTP/1.1 103 Early Hints\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        + answer("/evil")), 502, "bad_interim"),
    "interim-then-garbage": ("GET", Misbehaviour(
        b"HTTP/1.1 100 Continue\r\n\r\nPWNED-BY-BE!\r\n\r\n"), 502, "parse_error"),
    "ignored-body-answered-twice": ("POST", Misbehaviour(b"", ignore_body=True), 200,
                                    "data_after_response"),
    "ignored-body-answered-later": ("POST", Misbehaviour(b"", later=b"x", ignore_body=True),
                                    200, "unsolicited"),
}

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: backend\r\n\r\n"
"""The body of the POST that a body-ignoring backend reads as a second request."""


class ScriptedBackend:
    """A backend that misbehaves once, on the request to /evil, and answers the rest."""

    def __init__(self, misbehaviour: Misbehaviour) -> None:
        self.misbehaviour = misbehaviour
        self.late_sent = threading.Event()
        self.server = TcpBackend(self._serve)

    def _serve(self, conn: socket.socket, recording: Recording) -> None:
        buffer = bytearray()
        while (head := read_head(conn, buffer)) is not None:
            _method, path, length = head
            bad = self.misbehaviour
            if path != "/evil":
                read_body(conn, buffer, length)
                conn.sendall(answer(path))
                continue
            if not bad.ignore_body:
                read_body(conn, buffer, length)
                conn.sendall(bad.now)
                if bad.later:
                    threading.Event().wait(0.2)
                    conn.sendall(bad.later)
                    self.late_sent.set()
                continue
            # The body is taken for the next request: answer /evil, then the "request" in it.
            first = answer("/evil")
            smuggled = read_head(conn, buffer)
            assert smuggled is not None
            second = answer(smuggled[1])
            if bad.later:
                conn.sendall(first)
                threading.Event().wait(0.2)
                conn.sendall(second)
                self.late_sent.set()
            else:
                conn.sendall(first + second)


def exactly_one_response(port: int, ca: Path, method: str) -> tuple[int, bytes, bytes]:
    """Send one request on a keep-alive TLS connection; return (status, body, anything that
    arrived after the response within half a second)."""
    context = client_context(ca)
    with tls_connect(port, context) as tls:
        body = SMUGGLED if method == "POST" else b""
        tls.sendall(b"%s /evil HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%b"
                    % (method.encode(), len(body), body))
        response = http.client.HTTPResponse(tls, method=method)  # type: ignore[arg-type]
        response.begin()
        payload = response.read()
        tls.settimeout(0.5)
        extra = b""
        try:
            while chunk := tls.recv(65536):
                extra += chunk
        except (TimeoutError, ssl.SSLError, ConnectionError):
            pass
        return response.status, payload, extra


@pytest.mark.parametrize("case", list(CASES))
def test_misbehaving_backend_gives_each_client_exactly_its_answer(
        case: str, offload, port: int, pki, localhost_bundle: Path):
    method, misbehaviour, status, reason = CASES[case]
    backend = ScriptedBackend(misbehaviour)
    try:
        instance: Offload = offload(http_config(port, [localhost_bundle],
                                                [backend.server.address]))
        seen, payload, extra = exactly_one_response(port, pki.ca, method)
        assert seen == status
        assert extra == b"", f"the client got more than its answer: {extra!r}"
        assert b"PWNED" not in payload and b"smuggled" not in payload
        if status == 200 and method != "HEAD":
            assert payload == b"answer:/evil"
        if misbehaviour.later:
            assert backend.late_sent.wait(5)
        # A second client, on a fresh TLS connection, gets its own answer, several times over.
        for round_ in range(3):
            conn = https(port, pki.ca)
            conn.request("GET", f"/second/{round_}")
            second = conn.getresponse()
            assert (second.status, second.read()) == (200, f"answer:/second/{round_}".encode())
            conn.close()
        if reason is not None:
            instance.wait_for(lambda e: e.get("event") == "backend_protocol_error")
        logged = [e for e in instance.events if e.get("event") == "backend_protocol_error"]
        assert [e["reason"] for e in logged] == ([reason] if reason else []), logged
    finally:
        backend.server.close()
