"""A buggy or hostile backend's response, as HTTP/1.1 and HTTP/2 clients receive it.

Each backend here answers some paths properly and misbehaves on others, the way a broken or
compromised server could: connection-specific fields and upper-case names (which an HTTP/2
client must never see, RFC 9113 §8.2.2), a body cut short by a close (which a client must see
as an error, never as a complete body: RFC 9112 §8, RFC 9113 §8.1), a flood of interim
responses, a response that never comes. The clients are offload's real peers: raw HTTP/2
frames (:mod:`h2_client`) and HTTP/1.1 over TLS.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import http_config
from h2_client import H2Client
from harness import Offload, Recording, TcpBackend, need
from http_client import https
from test_backend_desync import CASES as DESYNC_CASES
from test_backend_desync import SMUGGLED, read_body, read_head
from test_backend_desync import ScriptedBackend as DesyncBackend

OK_BODY = b"all good"


def ok(path: str) -> bytes:
    body = f"{OK_BODY.decode()}:{path}".encode()
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)


Script = Callable[[socket.socket, str], bool]
"""Answers one request (the connection and the path); False closes the connection after."""


class ScriptedBackend:
    """A backend that answers each path as ``scripts`` says (properly when none is given)."""

    def __init__(self, scripts: dict[str, Script], tls: ssl.SSLContext | None = None) -> None:
        self.scripts = scripts
        self.tls = tls
        self.server = TcpBackend(self._serve)
        self.address = self.server.address

    def _serve(self, conn: socket.socket, recording: Recording) -> None:
        if self.tls is None:
            self._answer(conn)
            return
        with self.tls.wrap_socket(conn, server_side=True) as tls:
            self._answer(tls)

    def _answer(self, conn: socket.socket) -> None:
        buffer = bytearray()
        while (head := read_head(conn, buffer)) is not None:
            _method, path, length = head
            read_body(conn, buffer, length)
            script = self.scripts.get(path)
            if script is None:
                conn.sendall(ok(path))
            elif not script(conn, path):
                return


def send(data: bytes) -> Script:
    def script(conn: socket.socket, _path: str) -> bool:
        conn.sendall(data)
        return True
    return script


def send_and_close(data: bytes) -> Script:
    def script(conn: socket.socket, _path: str) -> bool:
        conn.sendall(data)
        return False
    return script


@pytest.fixture
def scripted(offload, port: int, localhost_bundle: Path
             ) -> Iterator[Callable[..., tuple[ScriptedBackend, Offload]]]:
    made: list[ScriptedBackend] = []

    def start(scripts: dict[str, Script], backend: str = "", tls: ssl.SSLContext | None = None
              ) -> tuple[ScriptedBackend, Offload]:
        server = ScriptedBackend(scripts, tls)
        made.append(server)
        return server, offload(http_config(port, [localhost_bundle], [server.address],
                                           backend=backend))
    yield start
    for server in made:
        server.server.close()


def h2_ok(client: H2Client, path: str = "/fine") -> None:
    """The connection still serves another stream."""
    headers, body, _ = client.response(client.request(path))
    assert headers[":status"] == "200" and body == f"{OK_BODY.decode()}:{path}".encode()


# ---------------------------------------------------------------------- response fields over h2

HOP_BY_HOP_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\n"
    b"Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\nX-Secret: hop\r\nX-Upper-Case: kept\r\n"
    b"TE: trailers\r\nContent-Length: 2\r\n\r\nhi")


def test_an_h2_client_never_sees_connection_specific_fields(scripted, port: int, pki):
    scripted({"/hop": send(HOP_BY_HOP_RESPONSE)})
    client = H2Client(port, pki.ca)
    headers, body, _ = client.response(client.request("/hop"))
    assert body == b"hi"
    names = set(headers)
    assert not names & {"connection", "keep-alive", "proxy-connection", "upgrade", "x-secret",
                        "te", "transfer-encoding"}, headers
    assert headers["x-upper-case"] == "kept"
    assert all(name == name.lower() for name in names)
    h2_ok(client)


def test_obs_text_in_a_value_reaches_a_strict_h2_client_intact(scripted, port: int, pki):
    # RFC 9113 §8.2.1 allows any byte but NUL, CR and LF in a value; curl's nghttp2 checks.
    scripted({"/obs": send(b"HTTP/1.1 200 OK\r\nX-Obs: caf\xe9\r\nContent-Length: 2\r\n\r\nhi")})
    done = subprocess.run(
        [need("curl", "curl"), "-sS", "--http2", "--cacert", str(pki.ca), "--resolve",
         f"localhost:{port}:127.0.0.1", "-D", "-", f"https://localhost:{port}/obs",
         f"https://localhost:{port}/other"], capture_output=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert b"x-obs: caf\xe9\r\n" in done.stdout
    assert b"hi" in done.stdout and f"{OK_BODY.decode()}:/other".encode() in done.stdout


# ---------------------------------------------------------------------- status lines

BAD_STATUS = {
    "/status-000": send(b"HTTP/1.1 000 Zero\r\n\r\n"),
    "/status-999": send(b"HTTP/1.1 999 Internal\r\nContent-Length: 2\r\n\r\nhi"),
    "/reason-escape": send(b"HTTP/1.1 200 O\x1b[2J\x00K\r\nContent-Length: 2\r\n\r\nhi"),
}


@pytest.mark.parametrize("path", list(BAD_STATUS))
def test_a_status_line_no_client_could_take_is_a_502(scripted, port: int, pki, path: str):
    _, instance = scripted(BAD_STATUS)
    conn = https(port, pki.ca)
    conn.request("GET", path)
    response = conn.getresponse()
    assert (response.status, response.reason) == (502, "Bad Gateway")
    response.read()
    client = H2Client(port, pki.ca)
    headers, _, frames = client.response(client.request(path))
    assert headers[":status"] == "502"
    assert [f.decoded[":status"] for f in frames if hasattr(f, "decoded")] == ["502"]
    h2_ok(client)
    instance.wait_for(lambda e: e.get("event") == "backend_protocol_error"
                      and e.get("reason") == "bad_status")


def test_an_http10_chunked_answer_never_puts_its_connection_back(scripted, port: int, pki):
    # RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing (part of
    # it may still be held by an HTTP/1.0 hop): the connection is closed after it.
    server, _ = scripted({"/ten": send(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n"
                                       b"Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n")})
    conn = https(port, pki.ca)
    conn.request("GET", "/ten")
    assert conn.getresponse().read() == b"hi"
    conn.request("GET", "/next")
    assert conn.getresponse().read() == f"{OK_BODY.decode()}:/next".encode()
    assert len(server.server.connections) == 2


# ---------------------------------------------------------------------- bodies cut short

CUT = {
    "/cut-length": send_and_close(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"),
    "/cut-chunked": send_and_close(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\npartial\r\n"),
    "/cut-chunk-data": send_and_close(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\npartial"),
}


@pytest.mark.parametrize("path", list(CUT))
def test_a_body_cut_by_the_backend_resets_the_h2_stream_only(scripted, port: int, pki,
                                                             path: str):
    scripted(CUT)
    client = H2Client(port, pki.ca)
    stream = client.request(path)
    code = client.reset_of(stream)
    assert code != 0, "a cut body must not end like a complete one"
    h2_ok(client)


@pytest.mark.parametrize("path", list(CUT))
def test_a_body_cut_by_the_backend_is_an_error_for_an_http11_client(scripted, port: int, pki,
                                                                    path: str):
    scripted(CUT)
    conn = https(port, pki.ca)
    conn.request("GET", path)
    response = conn.getresponse()
    assert response.status == 200
    with pytest.raises(http.client.IncompleteRead):
        response.read()


# ---------------------------------------------------------------------- interim responses

def flood_interim(conn: socket.socket, _path: str) -> bool:
    """103 after 103, never a final answer, as long as offload reads."""
    hint = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" * 64
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            conn.sendall(hint)
    except OSError:
        pass
    return False


def test_an_endless_stream_of_interim_responses_is_a_502(scripted, port: int, pki):
    _, instance = scripted({"/flood": flood_interim})
    client = H2Client(port, pki.ca)
    headers, _, frames = client.response(client.request("/flood"), timeout=15)
    assert headers[":status"] == "502"
    interim = [f for f in frames if getattr(f, "decoded", {}).get(":status") == "103"]
    assert 0 < len(interim) < 2000
    h2_ok(client)
    instance.wait_for(lambda e: e.get("event") == "backend_protocol_error"
                      and e.get("reason") == "too_many_interim")


def test_a_head_answer_after_thousands_of_interim_heads_in_one_read(scripted, port: int, pki):
    burst = b"HTTP/1.1 100 Continue\r\n\r\n" * 2000 + ok("/head-hints")
    scripted({"/head-hints": send(burst)})
    conn = https(port, pki.ca)
    conn.request("HEAD", "/head-hints")
    response = conn.getresponse()
    assert response.status == 200
    assert response.read() == b""
    conn.request("GET", "/after")
    assert conn.getresponse().read() == f"{OK_BODY.decode()}:/after".encode()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_an_interim_response_that_closes_the_connection_is_a_502_alike(
        scripted, port: int, pki, method: str):
    _, instance = scripted({"/interim-close": send(
        b"HTTP/1.1 100 Continue\r\nConnection: close\r\n\r\n" + ok("/interim-close"))})
    conn = https(port, pki.ca)
    conn.request(method, "/interim-close")
    response = conn.getresponse()
    assert response.status == 502
    response.read()
    instance.wait_for(lambda e: e.get("event") == "backend_protocol_error"
                      and e.get("reason") == "bad_interim")


def test_empty_lines_for_an_answer_to_head_are_no_answer(scripted, port: int, pki):
    # Empty lines before a response are skipped (RFC 9112 §2.2); they are not a response:
    # the client must not be left without one, nor get the next request's answer for it.
    scripted({"/blank": send(b"\r\n\r\n")}, backend='server_timeout = "2s"')
    conn = https(port, pki.ca)
    conn.connect()
    assert conn.sock is not None
    conn.sock.sendall(b"HEAD /blank HTTP/1.1\r\nHost: localhost\r\n\r\n"
                      b"GET /after HTTP/1.1\r\nHost: localhost\r\n\r\n")
    first = http.client.HTTPResponse(conn.sock, method="HEAD")  # type: ignore[arg-type]
    first.begin()
    assert first.status == 504  # the answer never came
    first.read()
    if not first.will_close:
        second = http.client.HTTPResponse(conn.sock, method="GET")  # type: ignore[arg-type]
        second.begin()
        assert second.read() == f"{OK_BODY.decode()}:/after".encode()
    h2 = H2Client(port, pki.ca)
    headers, _, _ = h2.response(h2.request("/blank", method="HEAD"))
    assert headers[":status"] == "504"
    h2_ok(h2)


# ---------------------------------------------------------------------- silence

def silent(conn: socket.socket, _path: str) -> bool:
    threading.Event().wait(10)
    return False


def test_a_backend_that_never_answers_is_a_504_for_its_stream_only(scripted, port: int, pki):
    scripted({"/silent": silent}, backend='server_timeout = "1s"')
    client = H2Client(port, pki.ca)
    stream = client.request("/silent")
    headers, _, _ = client.response(stream, timeout=8)
    assert headers[":status"] == "504"
    h2_ok(client)


# ---------------------------------------------------------------------- TLS backends: the end

def close_notify_then_close(data: bytes) -> Script:
    def script(conn: socket.socket, _path: str) -> bool:
        conn.sendall(data)
        assert isinstance(conn, ssl.SSLSocket)
        conn.unwrap()  # close_notify: the stream really ended here
        return False
    return script


TLS_ENDS: dict[str, tuple[Script, bytes | None]] = {
    # path: (what the backend does, the body a client gets complete, or None: an error)
    "/close-delimited-notify": (close_notify_then_close(b"HTTP/1.1 200 OK\r\n\r\nwhole"),
                                b"whole"),
    "/close-delimited-fin": (send_and_close(b"HTTP/1.1 200 OK\r\n\r\npartial"), None),
    "/length-notify": (close_notify_then_close(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"), None),
}


@pytest.fixture
def tls_ends(scripted, pki) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki.bundle(["localhost"])))
    scripted({path: script for path, (script, _) in TLS_ENDS.items()},
             backend=f'tls = true\nca = "{pki.ca}"', tls=context)


@pytest.mark.parametrize("path", list(TLS_ENDS))
def test_only_close_notify_ends_a_tls_backends_body_for_h2(tls_ends, port: int, pki,
                                                           path: str):
    # A FIN without close_notify is a truncation (RFC 8446 §6.1): never a complete body
    client = H2Client(port, pki.ca)
    stream = client.request(path)
    whole = TLS_ENDS[path][1]
    if whole is None:
        assert client.reset_of(stream) != 0
    else:
        headers, body, _ = client.response(stream)
        assert (headers[":status"], body) == ("200", whole)
    h2_ok(client)


@pytest.mark.parametrize("path", list(TLS_ENDS))
def test_only_close_notify_ends_a_tls_backends_body_for_http11(tls_ends, port: int, pki,
                                                               path: str):
    conn = https(port, pki.ca)
    conn.request("GET", path)
    response = conn.getresponse()
    whole = TLS_ENDS[path][1]
    if whole is None:
        with pytest.raises(http.client.IncompleteRead):
            response.read()
    else:
        assert response.read() == whole


# ---------------------------------------------------------------------- desync, from h2 clients

@pytest.mark.parametrize("case", list(DESYNC_CASES))
def test_a_misbehaving_backend_gives_each_h2_stream_exactly_its_answer(
        case: str, offload, port: int, pki, localhost_bundle: Path):
    method, misbehaviour, status, _ = DESYNC_CASES[case]
    backend = DesyncBackend(misbehaviour)
    try:
        offload(http_config(port, [localhost_bundle], [backend.server.address]))
        client = H2Client(port, pki.ca)
        stream = client.request("/evil", method=method,
                                body=SMUGGLED if method == "POST" else None)
        headers, body, _ = client.response(stream)
        assert headers[":status"] == str(status)
        assert b"PWNED" not in body and b"smuggled" not in body
        if status == 200 and method != "HEAD":
            assert body == b"answer:/evil"
        if misbehaviour.later:
            assert backend.late_sent.wait(5)
        for round_ in range(3):  # the same h2 connection, later streams: their own answers
            headers, body, _ = client.response(client.request(f"/second/{round_}"))
            assert (headers[":status"], body) == ("200", f"answer:/second/{round_}".encode())
    finally:
        backend.server.close()


# ---------------------------------------------------------------------- trailers

TRAILERS = send(
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
    b"2;ext=\"a\"\r\nhi\r\n0\r\nX-Checksum: abc\r\nSet-Cookie: session=stolen\r\n"
    b"Content-Type: text/evil\r\nKeep-Alive: timeout=1\r\nTE: trailers\r\n"
    b"Proxy-Connection: close\r\nUpgrade: h2c\r\nTransfer-Encoding: gzip\r\n\r\n")
"""Trailers may carry metadata, never framing, routing or cookies (RFC 9110 §6.5.1)."""


def test_trailers_reach_an_h2_client_without_forbidden_fields(scripted, port: int, pki):
    scripted({"/trailers": TRAILERS})
    client = H2Client(port, pki.ca)
    _, body, frames = client.response(client.request("/trailers"))
    head = next(f.decoded for f in frames if hasattr(f, "decoded"))
    assert body == b"hi" and head[":status"] == "200" and head["trailer"] == "X-Checksum"
    last = frames[-1]
    assert "END_STREAM" in last.flags and hasattr(last, "decoded")
    assert last.decoded == {"x-checksum": "abc"}
    h2_ok(client)


def test_trailers_reach_an_http11_client_without_forbidden_fields(scripted, port: int, pki):
    scripted({"/trailers": TRAILERS})
    conn = https(port, pki.ca)
    conn.connect()
    assert conn.sock is not None
    conn.sock.sendall(b"GET /trailers HTTP/1.1\r\nHost: localhost\r\n\r\n")
    raw = b""
    while not raw.endswith(b"\r\n\r\n") or b"\r\n0\r\n" not in raw:
        chunk = conn.sock.recv(65536)
        assert chunk, raw
        raw += chunk
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert rest == b"2\r\nhi\r\n0\r\nX-Checksum: abc\r\n\r\n"
    # the backend connection those trailers came on (llhttp acted on Proxy-Connection: close
    # in them) is not the next request's
    conn.request("GET", "/next")
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, f"{OK_BODY.decode()}:/next".encode())
