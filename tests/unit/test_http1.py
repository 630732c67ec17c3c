"""HTTP/1.1 parsing (offload.proto.http1): every input fed whole, one byte at a time, split at
every position, and with the bytes of a following request behind it (DESIGN habit 9);
malformed input is rejected with the status to answer, never repaired (habit 3)."""

from __future__ import annotations

import gc
from collections.abc import Iterable, Sequence
from itertools import pairwise
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offload.errors import ProtocolError
from offload.proto.http1 import HttpLimits, RequestParser, ResponseParser
from offload.proto.http_types import Data, EndOfMessage, Event, Request, Response

Snapshot = tuple[Any, ...]

# ----------------------------------------------------------------------------- helpers


def snapshot(events: Iterable[Event]) -> list[Snapshot]:
    """Events as comparable tuples; adjacent Data pieces joined, empty ones dropped."""
    out: list[Snapshot] = []
    for event in events:
        if isinstance(event, Data):
            if not event.data:
                continue
            if out and out[-1][0] == "data":
                out[-1] = ("data", out[-1][1] + event.data)
            else:
                out.append(("data", event.data))
        elif isinstance(event, EndOfMessage):
            out.append(("end", list(event.trailers)))
        elif isinstance(event, Request):
            out.append(("request", event.method, event.target, event.version, list(event.headers),
                        event.host, event.content_length, event.chunked, event.keep_alive,
                        event.websocket, event.expect_continue))
        elif isinstance(event, Response):
            out.append(("response", event.status, event.reason, event.version,
                        list(event.headers), event.content_length, event.chunked,
                        event.keep_alive, event.has_body, event.until_close))
        else:  # pragma: no cover - the parser returned something that is not an event
            raise AssertionError(f"not an event: {event!r}")
    return out


def request(method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]], *,
            host: bytes = b"example.com", version: bytes = b"1.1",
            content_length: int | None = None, chunked: bool = False, keep_alive: bool = True,
            websocket: bool = False, expect_continue: bool = False) -> Snapshot:
    return ("request", method, target, version, list(headers), host, content_length, chunked,
            keep_alive, websocket, expect_continue)


def response(status: int, reason: bytes, headers: Sequence[tuple[bytes, bytes]], *,
             version: bytes = b"1.1", content_length: int | None = None, chunked: bool = False,
             keep_alive: bool = True, has_body: bool = True,
             until_close: bool = False) -> Snapshot:
    return ("response", status, reason, version, list(headers), content_length, chunked,
            keep_alive, has_body, until_close)


def data(payload: bytes) -> Snapshot:
    return ("data", payload)


def end(trailers: Sequence[tuple[bytes, bytes]] = ()) -> Snapshot:
    return ("end", list(trailers))


def feed_pieces(parser: RequestParser | ResponseParser, pieces: Iterable[bytes]) -> list[Event]:
    events: list[Event] = []
    for piece in pieces:
        events += parser.feed(piece)
    return events


def feed_until_error(parser: RequestParser | ResponseParser, pieces: Iterable[bytes],
                     ) -> tuple[list[Event], ProtocolError | None]:
    """Every event handed out, including those decoded before an error (``error.before``)."""
    events: list[Event] = []
    try:
        for piece in pieces:
            events += parser.feed(piece)
    except ProtocolError as error:
        return events + [e for e in error.before if isinstance(e, Event)], error
    return events, None


def bytewise(raw: bytes) -> list[bytes]:
    return [raw[i:i + 1] for i in range(len(raw))]


def cut(raw: bytes, positions: Iterable[int]) -> list[bytes]:
    """``raw`` split at the given positions."""
    points = [0, *sorted(set(positions)), len(raw)]
    return [raw[a:b] for a, b in pairwise(points)]


def parse_request(pieces: Iterable[bytes],
                  limits: HttpLimits | None = None) -> tuple[list[Snapshot], bytes | None]:
    parser = RequestParser(limits)
    events = feed_pieces(parser, pieces)
    return snapshot(events), parser.upgrade_tail


def rejection(pieces: Iterable[bytes], limits: HttpLimits | None = None) -> ProtocolError:
    parser = RequestParser(limits)
    with pytest.raises(ProtocolError) as caught:
        feed_pieces(parser, pieces)
    return caught.value


H = b"Host: example.com\r\n"
NEXT = b"GET /next HTTP/1.1\r\nHost: exam"
"""The start of a following request, fed behind a complete one."""

# ----------------------------------------------------------------------------- valid requests

_PIPELINE = (
    b"GET /one HTTP/1.1\r\n" + H + b"\r\n"
    b"POST /two HTTP/1.1\r\n" + H + b"Content-Length: 3\r\n\r\nabc"
    b"PUT /three HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n"
)
_WS_HEAD = (b"GET /chat HTTP/1.1\r\n" + H + b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
_WS_TAIL = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
_H2C = (b"GET /h2c HTTP/1.1\r\n" + H + b"Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")

# (id, raw, expected events, expected upgrade_tail)
VALID: list[tuple[str, bytes, list[Snapshot], bytes | None]] = [
    ("get", b"GET / HTTP/1.1\r\n" + H + b"\r\n",
     [request(b"GET", b"/", [(b"Host", b"example.com")]), end()], None),
    ("get-query", b"GET /search?q=a%20b&x=1 HTTP/1.1\r\n" + H + b"Accept: */*\r\n\r\n",
     [request(b"GET", b"/search?q=a%20b&x=1", [(b"Host", b"example.com"), (b"Accept", b"*/*")]),
      end()], None),
    ("value-whitespace-stripped", b"GET / HTTP/1.1\r\n" + H + b"X-A:  spaced \t\r\nX-B:\r\n\r\n",
     [request(b"GET", b"/", [(b"Host", b"example.com"), (b"X-A", b"spaced"), (b"X-B", b"")]),
      end()], None),
    ("post-content-length",
     b"POST /form HTTP/1.1\r\n" + H + b"Content-Length: 11\r\n\r\nhello world",
     [request(b"POST", b"/form", [(b"Host", b"example.com"), (b"Content-Length", b"11")],
              content_length=11), data(b"hello world"), end()], None),
    ("post-content-length-zero", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0\r\n\r\n",
     [request(b"POST", b"/", [(b"Host", b"example.com"), (b"Content-Length", b"0")],
              content_length=0), end()], None),
    ("chunked-extensions-trailers",
     b"POST /up HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
     b"5;name=value\r\nhello\r\n6;a;b=\"q s\"\r\n world\r\nA\r\n0123456789\r\n"
     b"0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n",
     [request(b"POST", b"/up", [(b"Host", b"example.com"), (b"Transfer-Encoding", b"chunked")],
              chunked=True), data(b"hello world0123456789"),
      end([(b"X-Checksum", b"abc"), (b"X-Other", b"1")])], None),
    ("chunked-empty", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     [request(b"POST", b"/", [(b"Host", b"example.com"), (b"Transfer-Encoding", b"chunked")],
              chunked=True), end()], None),
    ("http10", b"GET /old HTTP/1.0\r\n\r\n",
     [request(b"GET", b"/old", [], host=b"", version=b"1.0", keep_alive=False), end()], None),
    ("http10-keep-alive", b"GET /old HTTP/1.0\r\n" + H + b"Connection: keep-alive\r\n\r\n",
     [request(b"GET", b"/old", [(b"Host", b"example.com"), (b"Connection", b"keep-alive")],
              version=b"1.0"), end()], None),
    ("http10-post", b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi",
     [request(b"POST", b"/", [(b"Connection", b"keep-alive"), (b"Content-Length", b"2")],
              host=b"", version=b"1.0", content_length=2), data(b"hi"), end()], None),
    ("connection-close", b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n",
     [request(b"GET", b"/", [(b"Host", b"example.com"), (b"Connection", b"close")],
              keep_alive=False), end()], None),
    ("absolute-form", b"GET http://other.example:8080/p?q=1 HTTP/1.1\r\n" + H + b"\r\n",
     [request(b"GET", b"/p?q=1", [(b"Host", b"other.example:8080")],
              host=b"other.example:8080"), end()], None),
    ("absolute-form-no-path", b"GET https://other.example HTTP/1.1\r\n" + H + b"\r\n",
     [request(b"GET", b"/", [(b"Host", b"other.example")], host=b"other.example"), end()], None),
    ("absolute-form-host-later", b"GET http://other.example/ HTTP/1.1\r\nX: 1\r\n" + H
     + b"Y: 2\r\n\r\n",
     [request(b"GET", b"/", [(b"X", b"1"), (b"Host", b"other.example"), (b"Y", b"2")],
              host=b"other.example"), end()], None),
    ("absolute-form-http10-no-host", b"GET HTTP://other.example/a HTTP/1.0\r\n\r\n",
     [request(b"GET", b"/a", [(b"Host", b"other.example")], host=b"other.example",
              version=b"1.0", keep_alive=False), end()], None),
    ("ipv6-host", b"GET / HTTP/1.1\r\nHost: [::1]:8443\r\n\r\n",
     [request(b"GET", b"/", [(b"Host", b"[::1]:8443")], host=b"[::1]:8443"), end()], None),
    ("options-asterisk", b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n",
     [request(b"OPTIONS", b"*", [(b"Host", b"example.com")]), end()], None),
    ("pipelined", _PIPELINE,
     [request(b"GET", b"/one", [(b"Host", b"example.com")]), end(),
      request(b"POST", b"/two", [(b"Host", b"example.com"), (b"Content-Length", b"3")],
              content_length=3), data(b"abc"), end(),
      request(b"PUT", b"/three", [(b"Host", b"example.com"), (b"Transfer-Encoding", b"chunked")],
              chunked=True), data(b"xy"), end()], None),
    ("websocket", _WS_HEAD + _WS_TAIL,
     [request(b"GET", b"/chat", [
         (b"Host", b"example.com"), (b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"),
         (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="), (b"Sec-WebSocket-Version", b"13")],
         websocket=True), end()], _WS_TAIL),
    ("h2c-is-not-websocket", _H2C + b"GET /after HTTP/1.1\r\n" + H + b"\r\n",
     [request(b"GET", b"/h2c", [
         (b"Host", b"example.com"), (b"Upgrade", b"h2c"),
         (b"Connection", b"Upgrade, HTTP2-Settings"),
         (b"HTTP2-Settings", b"AAMAAABkAARAAAAAAAIAAAAA")]), end(),
      request(b"GET", b"/after", [(b"Host", b"example.com")]), end()], None),
    ("expect-100-continue",
     b"PUT /f HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\nContent-Length: 4\r\n\r\ndata",
     [request(b"PUT", b"/f", [(b"Host", b"example.com"), (b"Expect", b"100-continue"),
                              (b"Content-Length", b"4")],
              content_length=4, expect_continue=True), data(b"data"), end()], None),
]
VALID_PARAMS = [pytest.param(*case[1:], id=case[0]) for case in VALID]

_CLOSING = {"http10", "connection-close", "absolute-form-http10-no-host"}
"""Requests after which the connection closes: what follows them may be refused, as long as
the complete request is still handed out (ProtocolError.before) to be answered first."""


@pytest.mark.parametrize(("raw", "expected", "tail"), VALID_PARAMS)
def test_valid_request_fed_whole(raw: bytes, expected: list[Snapshot], tail: bytes | None):
    assert parse_request([raw]) == (expected, tail)


@pytest.mark.parametrize(("raw", "expected", "tail"), VALID_PARAMS)
def test_valid_request_fed_byte_by_byte(raw: bytes, expected: list[Snapshot],
                                        tail: bytes | None):
    assert parse_request(bytewise(raw)) == (expected, tail)


@pytest.mark.parametrize(("raw", "expected", "tail"), VALID_PARAMS)
def test_valid_request_split_at_every_position(raw: bytes, expected: list[Snapshot],
                                               tail: bytes | None):
    for position in range(len(raw) + 1):
        assert parse_request(cut(raw, [position])) == (expected, tail), f"split at {position}"


@pytest.mark.parametrize(("raw", "expected", "tail", "closing"), [
    pytest.param(*case[1:], case[0] in _CLOSING, id=case[0]) for case in VALID])
def test_valid_request_with_a_following_request_behind_it(raw: bytes, expected: list[Snapshot],
                                                          tail: bytes | None, closing: bool):
    for pieces in ([raw + NEXT], bytewise(raw + NEXT)):
        parser = RequestParser()
        events, error = feed_until_error(parser, pieces)
        assert snapshot(events) == expected
        if closing:
            continue  # "Data after Connection: close" may be refused, after the request
        assert error is None
        # after a WebSocket upgrade every further byte belongs to the tunnel
        assert parser.upgrade_tail == (None if tail is None else tail + NEXT)


def test_websocket_resume_parses_what_followed_as_http():
    parser = RequestParser()
    parser.feed(_WS_HEAD + b"GET /next HTTP/1.1\r\n" + H + b"\r\n")
    assert parser.upgrade_tail is not None
    assert parser.feed(b"") == []
    assert snapshot(parser.resume()) == [request(b"GET", b"/next", [(b"Host", b"example.com")]),
                                         end()]
    assert parser.upgrade_tail is None


# ----------------------------------------------------------------------------- rejections

LIMITS = HttpLimits(max_request_line=100, max_header_size=300, max_header_count=8,
                    max_body_size=16)
TE = b"Transfer-Encoding: chunked\r\n"


def _post(headers: bytes, body: bytes = b"", version: bytes = b"1.1") -> bytes:
    return b"POST / HTTP/" + version + b"\r\n" + H + headers + b"\r\n" + body


def _chunked(body: bytes) -> bytes:
    return _post(TE, body)


def _get(headers: bytes = H, target: bytes = b"/", version: bytes = b"1.1",
         method: bytes = b"GET") -> bytes:
    return method + b" " + target + b" HTTP/" + version + b"\r\n" + headers + b"\r\n"


BAD = "parse_error"
REJECTED: list[tuple[str, bytes, int, str, HttpLimits | None]] = [
    # framing (RFC 9112 §6)
    ("cl-and-te", _post(b"Content-Length: 5\r\n" + TE, b"0\r\n\r\n"), 400, BAD, None),
    ("te-and-cl", _post(TE + b"Content-Length: 5\r\n", b"0\r\n\r\n"), 400, BAD, None),
    ("cl-duplicate-same", _post(b"Content-Length: 3\r\nContent-Length: 3\r\n", b"abc"),
     400, BAD, None),
    ("cl-duplicate-different", _post(b"Content-Length: 3\r\nContent-Length: 4\r\n", b"abcd"),
     400, BAD, None),
    ("cl-list", _post(b"Content-Length: 3, 3\r\n", b"abc"), 400, BAD, None),
    ("cl-plus", _post(b"Content-Length: +3\r\n", b"abc"), 400, BAD, None),
    ("cl-minus", _post(b"Content-Length: -3\r\n", b"abc"), 400, BAD, None),
    ("cl-hex", _post(b"Content-Length: 0x3\r\n", b"abc"), 400, BAD, None),
    ("cl-inner-space", _post(b"Content-Length: 1 2\r\n", b"abc"), 400, BAD, None),
    ("cl-empty", _post(b"Content-Length: \r\n", b"abc"), 400, BAD, None),
    ("cl-decimal", _post(b"Content-Length: 3.0\r\n", b"abc"), 400, BAD, None),
    ("cl-overflow", _post(b"Content-Length: 99999999999999999999999\r\n", b"abc"),
     400, BAD, None),
    ("te-identity", _post(b"Transfer-Encoding: identity\r\n", b"abc"), 400, BAD, None),
    ("te-chunked-identity", _post(b"Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n"),
     400, BAD, None),
    ("te-xchunked", _post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"), 400, BAD, None),
    ("te-quoted", _post(b'Transfer-Encoding: "chunked"\r\n', b"0\r\n\r\n"), 400, BAD, None),
    ("te-chunked-twice", _post(TE + TE, b"0\r\n\r\n"), 400, BAD, None),
    ("te-empty", _post(b"Transfer-Encoding: \r\n", b"0\r\n\r\n"), 400, BAD, None),
    ("te-in-http10", _post(TE, b"0\r\n\r\n", version=b"1.0"), 400, "bad_framing", None),
    # chunks (RFC 9112 §7.1)
    ("chunk-size-negative", _chunked(b"-3\r\nabc\r\n0\r\n\r\n"), 400, BAD, None),
    ("chunk-size-hex-prefix", _chunked(b"0x3\r\nabc\r\n0\r\n\r\n"), 400, BAD, None),
    ("chunk-size-leading-space", _chunked(b" 3\r\nabc\r\n0\r\n\r\n"), 400, BAD, None),
    ("chunk-size-trailing-space", _chunked(b"3 \r\nabc\r\n0\r\n\r\n"), 400, BAD, None),
    ("chunk-size-empty", _chunked(b"\r\nabc\r\n0\r\n\r\n"), 400, BAD, None),
    ("chunk-size-not-hex", _chunked(b"3g\r\nabc\r\n0\r\n\r\n"), 400, BAD, None),
    ("chunk-size-overflow", _chunked(b"10000000000000003\r\nabc\r\n0\r\n\r\n"), 400, BAD, None),
    ("chunk-size-bare-lf", _chunked(b"3\nabc\r\n0\r\n\r\n"), 400, BAD, None),
    ("chunk-data-too-long", _chunked(b"3\r\nhello\r\n0\r\n\r\n"), 400, BAD, None),
    ("chunk-data-without-crlf", _chunked(b"3\r\nabc0\r\n\r\n"), 400, BAD, None),
    ("chunk-data-bare-lf", _chunked(b"3\r\nabc\n0\r\n\r\n"), 400, BAD, None),
    ("chunk-extension-empty", _chunked(b"3;\r\nabc\r\n0\r\n\r\n"), 400, BAD, None),
    ("chunk-extension-space-before", _chunked(b"3 ;a=b\r\nabc\r\n0\r\n\r\n"), 400, BAD, None),
    ("chunk-extension-control", _chunked(b"3;a=\x01\r\nabc\r\n0\r\n\r\n"), 400, BAD, None),
    ("chunk-extension-bare-lf", _chunked(b"3;a\nabc\r\n0\r\n\r\n"), 400, BAD, None),
    ("chunk-extension-bare-cr", _chunked(b"3;a\rb\r\nabc\r\n0\r\n\r\n"), 400, BAD, None),
    ("trailer-without-colon", _chunked(b"0\r\nbad trailer\r\n\r\n"), 400, BAD, None),
    ("trailer-space-before-colon", _chunked(b"0\r\nX : y\r\n\r\n"), 400, BAD, None),
    ("trailer-obs-fold", _chunked(b"0\r\nX: y\r\n z\r\n\r\n"), 400, BAD, None),
    ("trailer-nul", _chunked(b"0\r\nX: y\x00\r\n\r\n"), 400, BAD, None),
    ("trailer-content-length", _chunked(b"0\r\nContent-Length: 5\r\n\r\n"), 400, BAD, None),
    ("trailer-bare-lf-end", _chunked(b"0\r\n\n"), 400, BAD, None),
    # header syntax (RFC 9112 §5, §2.2)
    ("obs-fold", _get(H + b"X: y\r\n z\r\n"), 400, BAD, None),
    ("obs-fold-tab", _get(H + b"X: y\r\n\tz\r\n"), 400, BAD, None),
    ("obs-fold-te", _post(b"X: y\r\n Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", b"abc"),
     400, BAD, None),
    ("bare-cr-in-value", _get(H + b"X: y\rz\r\n"), 400, BAD, None),
    ("bare-cr-line-end", b"GET / HTTP/1.1\r\nHost: example.com\rX: y\r\n\r\n", 400, BAD, None),
    ("bare-lf-line-end", b"GET / HTTP/1.1\r\nHost: example.com\nX: y\r\n\r\n", 400, BAD, None),
    ("bare-lf-request-line", b"GET / HTTP/1.1\nHost: example.com\r\n\r\n", 400, BAD, None),
    ("bare-lf-everywhere", b"GET / HTTP/1.1\nHost: example.com\n\n", 400, BAD, None),
    ("bare-lf-end-of-head", b"GET / HTTP/1.1\r\nHost: example.com\r\n\n", 400, BAD, None),
    ("nul-in-value", _get(H + b"X: y\x00z\r\n"), 400, BAD, None),
    ("control-in-value", _get(H + b"X: y\x01z\r\n"), 400, BAD, None),
    ("vertical-tab-in-value", _get(H + b"X: y\x0bz\r\n"), 400, BAD, None),
    ("del-in-value", _get(H + b"X: y\x7fz\r\n"), 400, BAD, None),
    ("nul-in-name", _get(H + b"X\x00: y\r\n"), 400, BAD, None),
    ("control-in-name", _get(H + b"X\x01: y\r\n"), 400, BAD, None),
    ("space-before-colon", _get(H + b"X : y\r\n"), 400, BAD, None),
    ("tab-before-colon", _get(H + b"X\t: y\r\n"), 400, BAD, None),
    ("te-space-before-colon", _post(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"),
     400, BAD, None),
    ("line-without-colon", _get(H + b"Xy\r\n"), 400, BAD, None),
    ("empty-name", _get(H + b": y\r\n"), 400, BAD, None),
    ("name-not-a-token", _get(H + b"X@Y: y\r\n"), 400, BAD, None),
    ("whitespace-before-first-header", b"GET / HTTP/1.1\r\n Host: example.com\r\n\r\n",
     400, BAD, None),
    ("whitespace-only-line", _get(H + b" \r\n"), 400, BAD, None),
    # request line (RFC 9112 §3)
    ("method-lower-case", _get(method=b"get"), 400, BAD, None),
    ("method-not-a-token", _get(method=b"G@T"), 400, BAD, None),
    ("method-nul", _get(method=b"G\x00T"), 400, BAD, None),
    ("method-empty", b" / HTTP/1.1\r\n" + H + b"\r\n", 400, BAD, None),
    ("tab-separator", b"GET\t/ HTTP/1.1\r\n" + H + b"\r\n", 400, BAD, None),
    ("http09", b"GET /\r\n\r\n", 400, "bad_version", None),
    ("http09-version", _get(b"", version=b"0.9"), 400, "bad_version", None),
    ("http12", _get(version=b"1.2"), 400, BAD, None),
    ("http20", _get(version=b"2.0"), 505, "bad_version", None),
    ("version-lower-case", b"GET / http/1.1\r\n" + H + b"\r\n", 400, BAD, None),
    ("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, BAD, None),
    ("connect", _get(b"Host: example.com:443\r\n", b"example.com:443", method=b"CONNECT"),
     405, "bad_method", None),
    # Host (RFC 9112 §3.2)
    ("host-missing", _get(b""), 400, "bad_host", None),
    ("host-twice", _get(H + H), 400, "bad_host", None),
    ("host-twice-different", _get(H + b"Host: evil.example\r\n"), 400, "bad_host", None),
    ("host-empty", _get(b"Host: \r\n"), 400, "bad_host", None),
    ("host-space", _get(b"Host: example.com evil\r\n"), 400, "bad_host", None),
    ("host-userinfo", _get(b"Host: user@example.com\r\n"), 400, "bad_host", None),
    ("host-slash", _get(b"Host: example.com/x\r\n"), 400, "bad_host", None),
    ("host-port-too-big", _get(b"Host: example.com:99999\r\n"), 400, "bad_host", None),
    ("host-port-zero", _get(b"Host: example.com:0\r\n"), 400, "bad_host", None),
    ("host-port-not-a-number", _get(b"Host: example.com:http\r\n"), 400, "bad_host", None),
    ("host-two-colons", _get(b"Host: a:1:2\r\n"), 400, "bad_host", None),
    ("host-invalid-in-http10", _get(b"Host: a b\r\n", version=b"1.0"), 400, "bad_host", None),
    ("absolute-form-without-host", _get(b"", b"http://example.com/"), 400, "bad_host", None),
    # request target (RFC 9112 §3.2)
    ("fragment", _get(target=b"/a#b"), 400, "bad_target", None),
    ("query-fragment", _get(target=b"/a?b#c"), 400, "bad_target", None),
    ("non-ascii-target", _get(target=b"/caf\xc3\xa9"), 400, BAD, None),
    ("nul-in-target", _get(target=b"/a\x00b"), 400, BAD, None),
    ("tab-in-target", _get(target=b"/a\tb"), 400, BAD, None),
    ("del-in-target", _get(target=b"/a\x7fb"), 400, BAD, None),
    ("asterisk-with-get", _get(target=b"*"), 400, "bad_target", None),
    ("relative-target", _get(target=b"a/b"), 400, BAD, None),
    ("absolute-form-userinfo", _get(target=b"http://user@other.example/"), 400, "bad_target",
     None),
    ("absolute-form-other-scheme", _get(target=b"ftp://other.example/"), 400, "bad_target", None),
    ("absolute-form-empty-authority", _get(target=b"http:///x"), 400, "bad_target", None),
    ("absolute-form-bad-port", _get(target=b"http://other.example:99999/"), 400, "bad_host",
     None),
    # Expect (RFC 9110 §10.1.1) and upgrades
    ("expect-unknown", _get(H + b"Expect: teapot\r\n"), 417, "bad_expect", None),
    ("expect-continue-and-more", _post(b"Expect: 100-continue, x\r\nContent-Length: 1\r\n", b"x"),
     417, "bad_expect", None),
    # limits
    ("target-over-limit", _get(target=b"/" + b"a" * 100), 414, "uri_too_long", LIMITS),
    ("header-section-over-limit", _get(H + b"X: " + b"v" * 300 + b"\r\n"), 431,
     "headers_too_large", LIMITS),
    ("header-name-over-limit", _get(H + b"X" * 300 + b": v\r\n"), 431, "headers_too_large",
     LIMITS),
    ("too-many-headers", _get(H + b"".join(b"X-%d: 1\r\n" % i for i in range(8))), 431,
     "headers_too_large", LIMITS),
    ("too-many-trailers",
     _chunked(b"0\r\n" + b"".join(b"T-%d: 1\r\n" % i for i in range(9)) + b"\r\n"), 431,
     "headers_too_large", LIMITS),
    ("trailers-over-limit", _chunked(b"0\r\nT: " + b"v" * 300 + b"\r\n\r\n"), 431,
     "headers_too_large", LIMITS),
    ("content-length-over-limit", _post(b"Content-Length: 17\r\n"), 413, "body_too_large",
     LIMITS),
    ("chunked-total-over-limit", _chunked(b"8\r\n12345678\r\n9\r\n123456789\r\n0\r\n\r\n"), 413,
     "body_too_large", LIMITS),
]
REJECTED_PARAMS = [pytest.param(*case[1:], id=case[0]) for case in REJECTED]


@pytest.mark.parametrize(("raw", "status", "reason", "limits"), REJECTED_PARAMS)
def test_rejected_fed_whole(raw: bytes, status: int, reason: str, limits: HttpLimits | None):
    error = rejection([raw], limits)
    assert (error.status, error.reason) == (status, reason), str(error)


@pytest.mark.parametrize(("raw", "status", "reason", "limits"), REJECTED_PARAMS)
def test_rejected_fed_byte_by_byte(raw: bytes, status: int, reason: str,
                                   limits: HttpLimits | None):
    error = rejection(bytewise(raw), limits)
    assert (error.status, error.reason) == (status, reason), str(error)


@pytest.mark.parametrize(("raw", "status", "reason", "limits"), [
    pytest.param(*case[1:], id=case[0]) for case in REJECTED])
def test_rejected_request_never_looks_complete(raw: bytes, status: int, reason: str,
                                               limits: HttpLimits | None):
    """A refused request must never end with EndOfMessage: a complete request is answered
    (forwarded) before the error, so a refused one must not look complete."""
    for pieces in ([raw], bytewise(raw)):
        events, error = feed_until_error(RequestParser(limits), pieces)
        assert error is not None
        assert (error.status, error.reason) == (status, reason)
        assert not any(isinstance(e, EndOfMessage) for e in events), snapshot(events)


def test_requests_before_an_error_are_handed_out_with_it():
    parser = RequestParser()
    events, error = feed_until_error(parser, [
        b"GET /1 HTTP/1.1\r\n" + H + b"\r\nPOST /2 HTTP/1.1\r\n" + H
        + b"Content-Length: 2\r\n\r\nhiGET /3 HTTP/1.1\r\n\r\n"])
    assert error is not None
    assert (error.status, error.reason) == (400, "bad_host")
    assert snapshot(events) == [
        request(b"GET", b"/1", [(b"Host", b"example.com")]), end(),
        request(b"POST", b"/2", [(b"Host", b"example.com"), (b"Content-Length", b"2")],
                content_length=2), data(b"hi"), end()]


def test_limits_are_inclusive():
    """Exactly at each limit is still fine."""
    at_limit = (b"POST /" + b"a" * 99 + b" HTTP/1.1\r\n" + H
                + b"".join(b"X-%d: 1\r\n" % i for i in range(6))
                + b"Content-Length: 16\r\n\r\n" + b"b" * 16)
    events, _ = parse_request([at_limit], LIMITS)
    assert [e[0] for e in events] == ["request", "data", "end"]
    assert events[1] == data(b"b" * 16)


@pytest.mark.parametrize("name", ["X-Endless", ""])
def test_endless_header_line_is_refused_before_it_is_buffered(name: str):
    limits = HttpLimits()
    parser = RequestParser(limits)
    start = b"GET / HTTP/1.1\r\n" + H + (name.encode() + b": " if name else b"")
    parser.feed(start)
    fed = 0
    with pytest.raises(ProtocolError) as caught:
        for _ in range(128):  # 1 MiB in 8 KiB pieces
            parser.feed(b"v" * 8192)
            fed += 8192
    assert (caught.value.status, caught.value.reason) == (431, "headers_too_large")
    assert fed <= limits.max_header_size + limits.max_request_line + 8192


def test_endless_request_target_is_refused_early():
    parser = RequestParser(HttpLimits())
    parser.feed(b"GET /")
    fed = 0
    with pytest.raises(ProtocolError) as caught:
        for _ in range(128):
            parser.feed(b"a" * 8192)
            fed += 8192
    assert caught.value.status == 414
    assert fed <= 8192 + 8192


@pytest.mark.parametrize("start", [b"0\r\nX-Endless: ", b"0\r\n"], ids=["value", "name"])
def test_endless_trailer_line_is_refused_before_it_is_buffered(start: bytes):
    limits = HttpLimits()
    parser = RequestParser(limits)
    parser.feed(_chunked(start))
    fed = 0
    with pytest.raises(ProtocolError) as caught:
        for _ in range(128):
            parser.feed(b"v" * 8192)
            fed += 8192
    assert (caught.value.status, caught.value.reason) == (431, "headers_too_large")
    assert fed <= limits.max_header_size + limits.max_request_line + 8192


def test_oversized_chunk_size_line_is_refused():
    parser = RequestParser(HttpLimits())
    parser.feed(_chunked(b"5;ext="))
    fed = 0
    with pytest.raises(ProtocolError) as caught:
        for _ in range(128):
            parser.feed(b"v" * 8192)
            fed += 8192
    assert caught.value.status == 400
    assert fed < 128 * 8192


SMUGGLE = b"GET /smuggled HTTP/1.1\r\nHost: example.com\r\n\r\n"


@pytest.mark.parametrize("connection", [b"Connection", b"Proxy-Connection", b"connection",
                                        b"PROXY-CONNECTION"])
@pytest.mark.parametrize("upgrade", [b"h2c", b"websocket", b"h2c, websocket", b"TLS/1.2"])
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_a_body_behind_an_upgrade_we_do_not_tunnel_is_framed(connection: bytes, upgrade: bytes,
                                                             chunked: bool):
    """An upgrade offload will not tunnel (anything but a GET WebSocket handshake) is a plain
    request: its body is framed by its length or chunks, never parsed as the next request."""
    framing = (TE if chunked else b"Content-Length: %d\r\n" % len(SMUGGLE))
    body = b"%x\r\n%b\r\n0\r\n\r\n" % (len(SMUGGLE), SMUGGLE) if chunked else SMUGGLE
    raw = (b"POST /upload HTTP/1.1\r\n" + H + connection + b": Upgrade\r\nUpgrade: " + upgrade
           + b"\r\n" + framing + b"\r\n" + body + b"GET /next HTTP/1.1\r\n" + H + b"\r\n")
    for pieces in ([raw], bytewise(raw), cut(raw, [len(raw) // 3, len(raw) // 2])):
        events = feed_pieces(RequestParser(), pieces)
        heads = [e.target for e in events if isinstance(e, Request)]
        assert heads == [b"/upload", b"/next"]
        assert b"".join(e.data for e in events if isinstance(e, Data)) == SMUGGLE
        kinds = [type(e).__name__ for e in events if not isinstance(e, Data)]
        assert kinds == ["Request", "EndOfMessage", "Request", "EndOfMessage"]


@pytest.mark.parametrize("framing", [b"Content-Length: 5\r\n", TE], ids=["length", "chunked"])
def test_websocket_upgrade_with_a_body_is_refused(framing: bytes):
    raw = (b"GET /chat HTTP/1.1\r\n" + H + b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
           + framing + b"\r\n5\r\nhello\r\n0\r\n\r\n")
    assert rejection([raw]).status == 400


@pytest.mark.parametrize("headers", [
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Transfer-Encoding: x-custom\r\nTransfer-Encoding: chunked\r\n",
], ids=["gzip-chunked", "two-fields"])
def test_unknown_transfer_coding_before_chunked_is_refused(headers: bytes):
    assert rejection([_post(headers, b"0\r\n\r\n")]).status == 501


@pytest.mark.parametrize(("raw", "status", "reason", "limits"), [
    pytest.param(*REJECTED[0][1:], id="cl-and-te"),
    pytest.param(_get(b""), 400, "bad_host", None, id="host-missing"),
    pytest.param(_get(version=b"2.0"), 505, "bad_version", None, id="http20"),
    pytest.param(_post(b"Content-Length: 17\r\n"), 413, "body_too_large", LIMITS, id="body"),
])
def test_parser_is_dead_after_an_error(raw: bytes, status: int, reason: str,
                                       limits: HttpLimits | None):
    parser = RequestParser(limits)
    with pytest.raises(ProtocolError):
        parser.feed(raw)
    for more in (b"GET / HTTP/1.1\r\n" + H + b"\r\n", b"", b"x"):
        with pytest.raises(ProtocolError) as caught:
            parser.feed(more)
        assert (caught.value.status, caught.value.reason) == (status, reason)


def test_dead_parser_hands_out_nothing_again():
    parser = RequestParser()
    with pytest.raises(ProtocolError) as first:
        parser.feed(b"GET /1 HTTP/1.1\r\n" + H + b"\r\nGET /2 HTTP/1.1\r\n\r\n")
    assert len(first.value.before) == 2
    with pytest.raises(ProtocolError) as again:
        parser.feed(b"GET /3 HTTP/1.1\r\n" + H + b"\r\n")
    assert again.value.before == []


def test_error_after_a_complete_request_in_an_earlier_feed():
    """The first request's events were delivered; the bad second one raises."""
    parser = RequestParser()
    first = parser.feed(b"GET /1 HTTP/1.1\r\n" + H + b"\r\n")
    assert snapshot(first) == [request(b"GET", b"/1", [(b"Host", b"example.com")]), end()]
    with pytest.raises(ProtocolError) as caught:
        parser.feed(b"GET /2 HTTP/1.1\r\n" + H + b"Content-Length: 1\r\n" + TE + b"\r\n")
    assert caught.value.status == 400


# ----------------------------------------------------------------------------- hypothesis

_TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_RESERVED = {"host", "content-length", "transfer-encoding", "connection", "expect", "upgrade",
             "proxy-connection", "keep-alive", "te", "trailer"}
_PATH_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@/"
_VALUE_BYTES = bytes([9, *range(0x20, 0x7F), *range(0x80, 0x100)])
METHODS = [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE"]

names = st.text(_TCHAR, min_size=1, max_size=16).filter(
    lambda n: n.lower() not in _RESERVED).map(str.encode)
values = st.binary(max_size=40).map(lambda v: bytes(_VALUE_BYTES[b % len(_VALUE_BYTES)] for b in v))
fields = st.lists(st.tuples(names, values), max_size=6)
hosts = st.builds(
    lambda name, port: name + (b":%d" % port if port else b""),
    st.from_regex(rb"\A[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?\Z"),
    st.one_of(st.none(), st.integers(1, 65535)))
paths = st.builds(lambda path, query: b"/" + path + (b"?" + query if query is not None else b""),
                  st.text(_PATH_CHARS, max_size=30).map(str.encode),
                  st.one_of(st.none(), st.text(_PATH_CHARS + "?", max_size=20).map(str.encode)))
extensions = st.one_of(st.just(b""), st.builds(
    lambda n, v: b";" + n + (b"=" + v if v else b""), names,
    st.one_of(st.just(b""), st.text(_TCHAR, min_size=1, max_size=8).map(str.encode))))


@st.composite
def generated_requests(draw: st.DrawFn) -> tuple[bytes, list[Snapshot]]:
    """A valid request and the events it must give."""
    method = draw(st.sampled_from(METHODS))
    target = draw(paths)
    host = draw(hosts)
    headers = [(b"Host", host), *draw(fields)]
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    body = b""
    trailers: list[tuple[bytes, bytes]] = []
    wire_body = b""
    length = None
    if framing == "length":
        body = draw(st.binary(max_size=64))
        length = len(body)
        headers.append((b"Content-Length", b"%d" % length))
        wire_body = body
    elif framing == "chunked":
        chunks = draw(st.lists(st.binary(min_size=1, max_size=20), max_size=5))
        body = b"".join(chunks)
        trailers = draw(fields)
        headers.append((b"Transfer-Encoding", b"chunked"))
        wire_body = b"".join(b"%x%b\r\n%b\r\n" % (len(c), draw(extensions), c) for c in chunks)
        wire_body += b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in trailers) + b"\r\n"
    raw = (method + b" " + target + b" HTTP/1.1\r\n"
           + b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n" + wire_body)
    expected = [request(method, target, [(n, v.strip(b" \t")) for n, v in headers], host=host,
                        content_length=length, chunked=framing == "chunked")]
    if body:
        expected.append(data(body))
    expected.append(end([(n, v.strip(b" \t")) for n, v in trailers]))
    return raw, expected


HYPOTHESIS = settings(max_examples=150, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow])


@HYPOTHESIS
@given(st.one_of(
    st.binary(max_size=400),
    st.builds(lambda prefix, noise, at: prefix[:at] + noise + prefix[at:],
              st.sampled_from([case[1] for case in VALID] + [case[1] for case in REJECTED]),
              st.binary(max_size=8), st.integers(0, 400)),
), st.lists(st.integers(0, 400), max_size=5), st.booleans())
def test_arbitrary_bytes_give_events_or_a_protocol_error(raw: bytes, cuts: list[int],
                                                         small_limits: bool):
    for parser in (RequestParser(LIMITS if small_limits else None),
                   ResponseParser(LIMITS if small_limits else None)):
        try:
            events = feed_pieces(parser, cut(raw, [c for c in cuts if c <= len(raw)]))
        except ProtocolError as error:
            assert 400 <= error.status <= 599
        else:
            snapshot(events)  # only events


@HYPOTHESIS
@given(generated_requests(), st.lists(st.integers(0, 2000), max_size=6))
def test_generated_requests_round_trip(generated: tuple[bytes, list[Snapshot]], cuts: list[int]):
    raw, expected = generated
    assert parse_request([raw]) == (expected, None)
    assert parse_request(bytewise(raw)) == (expected, None)
    assert parse_request(cut(raw, [c for c in cuts if c <= len(raw)])) == (expected, None)


@HYPOTHESIS
@given(st.lists(generated_requests(), min_size=1, max_size=4),
       st.lists(st.integers(0, 4000), max_size=8))
def test_generated_pipelines_come_out_in_order(pipeline: list[tuple[bytes, list[Snapshot]]],
                                               cuts: list[int]):
    raw = b"".join(r for r, _ in pipeline)
    expected = [event for _, events in pipeline for event in events]
    assert parse_request([raw]) == (expected, None)
    assert parse_request(cut(raw, [c for c in cuts if c <= len(raw)])) == (expected, None)


# ----------------------------------------------------------------------------- responses

CL2 = [(b"Content-Length", b"2")]


def parse_response(method: bytes, pieces: Iterable[bytes], *, eof: bool = False,
                   ) -> tuple[list[Snapshot], bool, bytes | None]:
    parser = ResponseParser()
    parser.expect(method)
    events = feed_pieces(parser, pieces)
    until_close = parser.until_close
    if eof:
        events += parser.feed_eof()
    return snapshot(events), until_close, parser.upgrade_tail


RESPONSES: list[tuple[str, bytes, bytes, bool, list[Snapshot], bool]] = [
    ("content-length", b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False,
     [response(200, b"OK", CL2, content_length=2), data(b"ok"), end()], False),
    ("chunked-trailers", b"GET",
     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nok\r\n3\r\n!!!\r\n"
     b"0\r\nX-Sum: 5\r\n\r\n", False,
     [response(200, b"OK", [(b"Transfer-Encoding", b"chunked")], chunked=True),
      data(b"ok!!!"), end([(b"X-Sum", b"5")])], False),
    ("close-delimited", b"GET", b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\nuntil the end", True,
     [response(200, b"OK", [(b"Server", b"x")], keep_alive=False, until_close=True),
      data(b"until the end"), end()], True),
    ("head-ignores-content-length", b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
     False, [response(200, b"OK", [(b"Content-Length", b"10")], content_length=10,
                      has_body=False), end()], False),
    ("head-ignores-chunked", b"HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
     False, [response(200, b"OK", [(b"Transfer-Encoding", b"chunked")], chunked=True,
                      has_body=False), end()], False),
    ("204-with-content-length", b"GET",
     b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n", False,
     [response(204, b"No Content", [(b"Content-Length", b"10")], content_length=10,
               keep_alive=False, has_body=False), end()], False),
    ("304-with-content-length", b"GET",
     b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", False,
     [response(304, b"Not Modified", [(b"Content-Length", b"10")], content_length=10,
               has_body=False), end()], False),
    ("100-continue-then-200", b"POST",
     b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False,
     [response(100, b"Continue", [], has_body=False), response(200, b"OK", CL2, content_length=2),
      data(b"ok"), end()], False),
    ("100-continue-then-head", b"HEAD",
     b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", False,
     [response(100, b"Continue", [], has_body=False),
      response(200, b"OK", [(b"Content-Length", b"7")], content_length=7, has_body=False),
      end()], False),
    ("103-early-hints", b"GET",
     b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
     b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False,
     [response(103, b"Early Hints", [(b"Link", b"</s.css>; rel=preload")], has_body=False),
      response(200, b"OK", CL2, content_length=2), data(b"ok"), end()], False),
    ("http10-not-keep-alive", b"GET", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False,
     [response(200, b"OK", CL2, version=b"1.0", content_length=2, keep_alive=False),
      data(b"ok"), end()], False),
    ("http10-keep-alive", b"GET",
     b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", False,
     [response(200, b"OK", [(b"Connection", b"keep-alive"), *CL2], version=b"1.0",
               content_length=2), data(b"ok"), end()], False),
    ("connection-close", b"GET",
     b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", False,
     [response(200, b"OK", [(b"Connection", b"close"), *CL2], content_length=2,
               keep_alive=False), data(b"ok"), end()], False),
    ("no-reason-phrase", b"GET", b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", False,
     [response(200, b"", [(b"Content-Length", b"0")], content_length=0), end()], False),
]
RESPONSE_PARAMS = [pytest.param(*case[1:], id=case[0]) for case in RESPONSES]


@pytest.mark.parametrize(("method", "raw", "eof", "expected", "until_close"), RESPONSE_PARAMS)
def test_response(method: bytes, raw: bytes, eof: bool, expected: list[Snapshot],
                  until_close: bool):
    assert parse_response(method, [raw], eof=eof) == (expected, until_close, None)
    assert parse_response(method, bytewise(raw), eof=eof) == (expected, until_close, None)
    for position in range(len(raw) + 1):
        assert parse_response(method, cut(raw, [position]), eof=eof) == (
            expected, until_close, None), f"split at {position}"


SWITCH = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
SWITCH_EVENTS = [response(101, b"Switching Protocols", [
    (b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"),
    (b"Sec-WebSocket-Accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")], has_body=False)]


def test_101_keeps_the_tunnel_bytes():
    assert parse_response(b"GET", [SWITCH + b"\x81\x02hi"]) == (SWITCH_EVENTS, False,
                                                               b"\x81\x02hi")
    assert parse_response(b"GET", [SWITCH]) == (SWITCH_EVENTS, False, b"")


def test_101_tunnel_bytes_fed_byte_by_byte():
    assert parse_response(b"GET", bytewise(SWITCH + b"\x81\x02hi")) == (
        SWITCH_EVENTS, False, b"\x81\x02hi")


@pytest.mark.parametrize(("method", "raw", "status", "reason"), [
    pytest.param(b"GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", 502,
                 "parse_error", id="te-gzip"),
    pytest.param(b"GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                 502, "parse_error", id="te-gzip-chunked"),
    pytest.param(b"GET", b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 502, "parse_error",
                 id="http2"),
    pytest.param(b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
                 502, "parse_error", id="cl-duplicate"),
    pytest.param(b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + TE + b"\r\n0\r\n\r\n",
                 502, "parse_error", id="cl-and-te"),
    pytest.param(b"GET", b"garbage\r\n\r\n", 502, "parse_error", id="garbage"),
    pytest.param(b"GET", b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n", 502,
                 "parse_error", id="obs-fold"),
    pytest.param(b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 502,
                 "data_after_response", id="data-after-head"),
])
def test_response_rejected(method: bytes, raw: bytes, status: int, reason: str):
    for pieces in ([raw], bytewise(raw)):
        parser = ResponseParser()
        parser.expect(method)
        with pytest.raises(ProtocolError) as caught:
            feed_pieces(parser, pieces)
        assert (caught.value.status, caught.value.reason) == (status, reason)


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nbody",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Len",
    b"",
], ids=["mid-length", "mid-chunked", "mid-head", "nothing"])
def test_response_cut_by_the_server_is_502(raw: bytes):
    parser = ResponseParser()
    parser.expect(b"GET")
    parser.feed(raw)
    with pytest.raises(ProtocolError) as caught:
        parser.feed_eof()
    assert (caught.value.status, caught.value.reason) == (502, "backend_closed")


FAKE = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPWNED!"
"""A response a misbehaving backend slips in after the real one."""

ONE_ANSWER_THEN_MORE: list[tuple[str, bytes, bytes, list[Snapshot]]] = [
    ("two-responses", b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + FAKE,
     [response(200, b"OK", CL2, content_length=2), data(b"ok"), end()]),
    ("second-unfinished", b"GET",
     b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Le",
     [response(200, b"OK", CL2, content_length=2), data(b"ok"), end()]),
    ("chunked-then-more", b"GET",
     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n" + FAKE,
     [response(200, b"OK", [(b"Transfer-Encoding", b"chunked")], chunked=True), data(b"ok"),
      end()]),
    ("204-with-body", b"GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 6\r\n\r\n" + FAKE,
     [response(204, b"No Content", [(b"Content-Length", b"6")], content_length=6,
               keep_alive=False, has_body=False), end()]),
    ("304-with-body", b"GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 6\r\n\r\n" + FAKE,
     [response(304, b"Not Modified", [(b"Content-Length", b"6")], content_length=6,
               has_body=False), end()]),
    ("head-with-body", b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n" + FAKE,
     [response(200, b"OK", [(b"Content-Length", b"6")], content_length=6, has_body=False),
      end()]),
    ("head-with-plain-body", b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nbody!!",
     [response(200, b"OK", [(b"Content-Length", b"6")], content_length=6, has_body=False),
      end()]),
    ("interim-final-then-more", b"GET",
     b"HTTP/1.1 103 Early Hints\r\nLink: <a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
     b"\r\nok" + FAKE,
     [response(103, b"Early Hints", [(b"Link", b"<a>")], has_body=False),
      response(200, b"OK", CL2, content_length=2), data(b"ok"), end()]),
]


@pytest.mark.parametrize(("method", "raw", "expected"),
                         [pytest.param(*case[1:], id=case[0]) for case in ONE_ANSWER_THEN_MORE])
def test_more_than_one_answer_is_an_error_after_the_first(method: bytes, raw: bytes,
                                                          expected: list[Snapshot]):
    """A backend's bytes after its final response are never parsed as another response: the
    complete answer comes out (in ``before`` when it shares a read with the extra bytes),
    then ``data_after_response``; however the bytes are split into reads."""
    splits: list[list[bytes]] = [[raw], bytewise(raw)]
    splits += [cut(raw, [position]) for position in range(0, len(raw) + 1, 3)]
    for pieces in splits:
        parser = ResponseParser()
        parser.expect(method)
        events: list[Event] = []
        with pytest.raises(ProtocolError) as caught:
            for piece in pieces:
                events += parser.feed(piece)
        events += cast(list[Event], caught.value.before)
        assert (caught.value.status, caught.value.reason) == (502, "data_after_response")
        assert snapshot(events) == expected
        assert parser.answered


def test_nothing_expected_means_any_response_is_unsolicited():
    parser = ResponseParser()
    with pytest.raises(ProtocolError) as caught:
        parser.feed(FAKE)
    assert caught.value.reason == "data_after_response"


def test_empty_lines_after_a_response_are_not_a_message():
    parser = ResponseParser()
    parser.expect(b"GET")
    events = parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\r\n\r\n")
    assert snapshot(events) == [response(200, b"OK", CL2, content_length=2), data(b"ok"), end()]


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 100 Continue\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nContent-Length: 3\r\n\r\nabc",
    b"HTTP/1.1 100 Continue\r\n\r\nnot a head\r\n\r\n",
], ids=["100-length", "100-length-0", "103-chunked", "101-length", "100-then-garbage"])
def test_interim_response_is_a_head_and_nothing_else(raw: bytes):
    for method in (b"GET", b"HEAD"):
        parser = ResponseParser()
        parser.expect(method)
        with pytest.raises(ProtocolError) as caught:
            feed_pieces(parser, [raw])
        assert caught.value.status == 502
        assert not any(isinstance(e, Response) and e.status >= 200
                       for e in caught.value.before)


@pytest.mark.parametrize("line", [
    b"HTTP/1.1 000 Zero", b"HTTP/1.1 099 Low", b"HTTP/1.1 600 High", b"HTTP/1.1 999 Max",
    b"HTTP/1.1 200 O\x00K", b"HTTP/1.1 200 O\x1b[2JK", b"HTTP/1.1 200 O\x7fK",
    b"HTTP/1.1 103 \x01",
], ids=["000", "099", "600", "999", "reason-nul", "reason-esc", "reason-del", "1xx-ctl"])
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_a_status_line_a_client_could_not_take_is_refused(line: bytes, method: bytes):
    # RFC 9110 §15: a status outside 100-599 is invalid (a client takes it as 5xx); RFC 9112
    # §4: no control characters in the reason phrase, which HTTP/1.1 clients get as it came.
    # Both went through before (a "000" even as an interim response).
    for framing in (b"", b"Content-Length: 0\r\n"):
        parser = ResponseParser()
        parser.expect(method)
        events, error = feed_until_error(parser, [line + b"\r\n" + framing + b"\r\n"])
        assert error is not None and error.reason == "bad_status" and error.status == 502
        assert not any(isinstance(e, Response) for e in events)


@pytest.mark.parametrize("line", [b"HTTP/1.1 100 ", b"HTTP/1.1 599 Whatever",
                                  b"HTTP/1.1 200 caf\xe9 \tok", b"HTTP/1.1 204"])
def test_status_lines_at_the_edges_are_taken(line: bytes):
    parser = ResponseParser()
    parser.expect(b"GET")
    events = parser.feed(line + b"\r\n\r\n")
    assert isinstance(events[0], Response) and events[0].status == int(line[9:12])


def test_an_http10_response_with_transfer_encoding_is_never_kept_alive():
    # RFC 9112 §6.1: faulty framing, even though it can be read; the connection closes after.
    parser = ResponseParser()
    parser.expect(b"GET")
    events = parser.feed(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n")
    head = events[0]
    assert isinstance(head, Response) and head.chunked and not head.keep_alive
    assert isinstance(events[-1], EndOfMessage) and parser.answered


@pytest.mark.parametrize("field", [
    b"Connection: close", b"Proxy-Connection: close", b"Transfer-Encoding: gzip",
    b"Keep-Alive: timeout=1", b"Upgrade: h2c", b"TE: trailers", b"Trailer: X"])
def test_a_connection_field_in_the_trailers_ends_the_connection(field: bytes):
    # Dropped from the trailers, but llhttp acts on some (after "Connection: close" there it
    # refuses the next response): a connection whose answer carried one is never reused.
    parser = ResponseParser()
    parser.expect(b"GET")
    events = parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"2\r\nhi\r\n0\r\nX-Sum: 1\r\n" + field + b"\r\n\r\n")
    head, end_ = events[0], events[-1]
    assert isinstance(head, Response) and not head.keep_alive
    assert isinstance(end_, EndOfMessage) and end_.trailers == [(b"X-Sum", b"1")]


@pytest.mark.parametrize("interim", [
    b"HTTP/1.1 100 Continue\r\nConnection: close\r\n\r\n", b"HTTP/1.0 103 Hints\r\n\r\n",
    b"HTTP/1.1 103 Hints\r\nProxy-Connection: close\r\n\r\n"], ids=["close", "http10", "proxy"])
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_an_interim_response_that_closes_the_connection_is_refused_alike(
        interim: bytes, method: bytes):
    # llhttp refuses whatever follows such a head; answers to HEAD (fed head by head) took the
    # final response and pooled a connection the server said it closes
    parser = ResponseParser()
    parser.expect(method)
    _, error = feed_until_error(
        parser, [interim + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
    assert error is not None and error.reason == "bad_interim"


@pytest.mark.parametrize("pieces", [[b"\r\n\r\n"], [b"\r\n\r\n", b"\r\n\r\n\r\n"]])
def test_empty_lines_are_no_answer_to_head(pieces: list[bytes]):
    # They were taken for a complete answer without a head (an end and no response)
    parser = ResponseParser()
    parser.expect(b"HEAD")
    assert feed_pieces(parser, pieces) == [] and not parser.answered
    events = parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    assert isinstance(events[0], Response) and events[0].status == 200
    assert isinstance(events[-1], EndOfMessage) and parser.answered


def test_endless_empty_lines_before_an_answer_to_head_are_refused():
    parser = ResponseParser()
    parser.expect(b"HEAD")
    _, error = feed_until_error(parser, [b"\r\n" * 4096] * 64)
    assert error is not None and error.status in (431, 502)


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_thousands_of_interim_heads_in_one_read_are_taken_in_a_loop(method: bytes):
    # More interim heads than Python's recursion limit, all in one read, then the answer:
    # taken one after the other (the HEAD path once recursed per head and overflowed).
    count = 2000
    parser = ResponseParser()
    parser.expect(method)
    events = parser.feed(CONTINUE * count + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    statuses = [e.status for e in events if isinstance(e, Response)]
    assert statuses == [100] * count + [200]
    assert isinstance(events[-1], EndOfMessage) and parser.answered


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
@pytest.mark.parametrize("pieces", [1, 64])
def test_interim_heads_without_end_are_refused(method: bytes, pieces: int):
    # A backend that sends 1xx after 1xx never gets to hold an exchange (and its client)
    # forever: the interim heads share the final head's limit (RFC 9110 §15.2 sets none).
    parser = ResponseParser()
    parser.expect(method)
    flood = [CONTINUE * 500] * pieces if pieces > 1 else [CONTINUE * 10_000]
    events, error = feed_until_error(parser, flood)
    assert error is not None and error.reason == "too_many_interim" and error.status == 502
    interim = [e for e in events if isinstance(e, Response)]
    assert interim and len(interim) * len(CONTINUE) <= 64 * 1024
    assert all(e.status == 100 for e in interim)


def test_interim_heads_count_against_the_final_heads_limit():
    hint = b"HTTP/1.1 103 Early Hints\r\nLink: <%b>\r\n\r\n" % (b"x" * 1000)
    big = b"X-Big: %b\r\n" % (b"y" * 4000)
    parser = ResponseParser()
    parser.expect(b"GET")
    parser.feed(hint * 40)  # about 40 KiB of interim heads: allowed
    _, error = feed_until_error(
        parser, [b"HTTP/1.1 200 OK\r\n" + big * 8 + b"Content-Length: 0\r\n\r\n"])
    assert error is not None and error.reason == "too_many_interim"
    fresh = ResponseParser()
    fresh.expect(b"GET")
    answer = fresh.feed(b"HTTP/1.1 200 OK\r\n" + big * 8 + b"Content-Length: 0\r\n\r\n")
    assert isinstance(answer[-1], EndOfMessage)  # the same head alone is fine


def test_response_parser_takes_the_next_response_after_expect():
    parser = ResponseParser()
    parser.expect(b"HEAD")
    first = parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    parser.expect(b"GET")
    second = parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    assert snapshot(first) == [response(200, b"OK", [(b"Content-Length", b"5")],
                                        content_length=5, has_body=False), end()]
    assert snapshot(second) == [response(200, b"OK", [(b"Content-Length", b"5")],
                                         content_length=5), data(b"hello"), end()]


@pytest.mark.parametrize("how", ["head", "eof"])
def test_response_parser_is_dead_after_an_error(how: str):
    parser = ResponseParser()
    if how == "head":
        parser.expect(b"HEAD")
        with pytest.raises(ProtocolError):
            parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    else:
        parser.expect(b"GET")
        parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nbody")
        with pytest.raises(ProtocolError):
            parser.feed_eof()
    more = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" if how == "head" else b"abc"
    with pytest.raises(ProtocolError):
        parser.feed(more)


def test_response_parser_is_dead_after_a_parse_error():
    parser = ResponseParser()
    parser.expect(b"GET")
    with pytest.raises(ProtocolError):
        parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n")
    with pytest.raises(ProtocolError) as caught:
        parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert caught.value.status == 502


# ----------------------------------------------------------------------------- memory


def _alive(kind: type) -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if type(obj) is kind)


@pytest.mark.parametrize(("kind", "message"), [
    (RequestParser, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
    (ResponseParser, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
])
def test_a_dropped_parser_is_freed_so_connections_cannot_grow_memory(
        kind: type[RequestParser] | type[ResponseParser], message: bytes) -> None:
    # Attacker's view: every connection makes a parser; if parsers outlived their
    # connections (the parser and llhttp's callbacks refer to each other, so only the cycle
    # collector frees them), opening and closing connections would grow the worker for ever.
    before = _alive(kind)
    for _ in range(50):
        parser = kind()
        if isinstance(parser, ResponseParser):
            parser.expect(b"GET")
        parser.feed(message)
    del parser
    assert _alive(kind) == before


_RESPONSE_PIECES = st.sampled_from([
    b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 100 Continue\r\n", b"HTTP/1.1 103 Early Hints\r\n",
    b"HTTP/1.0 204 No Content\r\n", b"HTTP/1.1 304 Not Modified\r\n", b"HTTP/1.1 101 Up\r\n",
    b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n", b"Connection: close\r\n",
    b"Upgrade: websocket\r\n", b"Link: <a>\r\n", b"\r\n", b"\r\n\r\n", b"abc", b"3\r\nabc\r\n",
    b"0\r\n\r\n", b"0\r\nX-T: 1\r\nConnection: close\r\n\r\n", b"HTTP/1.1 000 X\r\n",
])


@HYPOTHESIS
@given(st.lists(_RESPONSE_PIECES, max_size=14), st.lists(st.integers(0, 300), max_size=5),
       st.sampled_from([b"GET", b"HEAD"]))
def test_a_backend_gets_one_answer_in_or_a_protocol_error(pieces: list[bytes], cuts: list[int],
                                                          method: bytes):
    # Whatever a backend sends: events or a ProtocolError (never another exception), and the
    # events are at most one answer: interim heads, one final head, its body, its end.
    raw = b"".join(pieces)
    parser = ResponseParser()
    parser.expect(method)
    events, error = feed_until_error(parser, cut(raw, [c for c in cuts if c <= len(raw)]))
    if error is None and not parser.answered and parser.upgrade_tail is None:
        try:
            events += parser.feed_eof()
        except ProtocolError as eof_error:
            error = eof_error
    assert error is None or 500 <= error.status <= 599 or error.status == 431
    final: Response | None = None
    ended = False
    for event in events:
        assert not ended, "an event after the end of the answer"
        if isinstance(event, Response):
            assert final is None, "a second head after the final one"
            assert 100 <= event.status <= 599
            if event.status >= 200:
                final = event
        elif isinstance(event, Data):
            assert final is not None and final.has_body and method != b"HEAD"
        else:
            assert isinstance(event, EndOfMessage)
            assert final is not None, "an end without a final head"
            ended = True
