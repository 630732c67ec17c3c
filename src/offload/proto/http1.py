"""HTTP/1.1 parsing, sans-IO: bytes in, events out (:mod:`offload.proto.http_types`).

llhttp (through httptools, in its strict mode) does the byte-level work: request and status
lines, header syntax (no obs-fold, no bare CR or LF, no whitespace before the colon, no control
characters), Content-Length syntax and duplicates, Content-Length with Transfer-Encoding,
Transfer-Encoding whose final coding is not chunked, chunk sizes and extensions. This module adds
what a proxy needs on top, and refuses (never repairs) anything ambiguous:

* limits llhttp does not have: request line (414), header section size and count (431), body
  size (413), with a guard that stops an endless header before httptools buffers it;
* RFC 9112 rules llhttp lets through: HTTP/0.9 and versions other than 1.0/1.1 (505),
  Transfer-Encoding in an HTTP/1.0 request (§6.1), a missing, repeated or invalid Host (§3.2),
  fragments and non-ASCII bytes in the target, CONNECT (405), unknown Expect values (417);
* normalisation: absolute-form targets become origin-form, and the target's authority becomes
  the one Host everything downstream sees — routing, rules, the backend's Host and
  X-Forwarded-Host, the Host-versus-SNI check (§3.2.2: the received Host is replaced);
* responses (RFC 9112 §6.3): no body for HEAD, 1xx, 204 and 304 whatever Content-Length says;
  a status outside 100-599 or a control character in the reason phrase refused (502,
  ``bad_status``: RFC 9110 §15 has a client treat those as a server error, and the reason
  goes to HTTP/1.1 clients as it came);
  interim 1xx, 101, bodies that end when the server closes (httptools cannot be told about
  EOF, so we end them here); non-chunked transfer codings, which a proxy cannot re-frame, and
  a 1xx carrying Content-Length or Transfer-Encoding refused (502); the interim heads before
  a final response share its header limit, so 1xx after 1xx ends (502, ``too_many_interim``);
* exactly one final response per request: once it is complete, any further byte but the empty
  lines llhttp skips between messages is an error (``data_after_response``) until
  :meth:`ResponseParser.expect` announces the next request. A backend that answers twice, or
  sends a body after a response that has none, never has the extra bytes read as the answer to
  someone else's request.

Every error is a :class:`ProtocolError` carrying the status to answer with; after one, the
parser is finished and the connection must be closed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httptools

from offload.errors import ProtocolError
from offload.proto.http_types import (
    Data,
    EndOfMessage,
    Event,
    Headers,
    Request,
    Response,
)

_HOST_RE = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::[0-9]{1,5})?")
_SCHEME_RE = re.compile(rb"(?i)(https?)://([^/?#]*)(.*)")
_VERSIONS = {"1.1": b"1.1", "1.0": b"1.0"}
_REASON = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
"""RFC 9112 §4: HTAB, SP, VCHAR, obs-text (llhttp lets NUL, ESC and DEL through)."""

RESPONSE_HEADER_FLOOR = 64 * 1024
"""Backends may send large headers (cookies); allow at least this much in responses."""
INTERIM_LINES = len(b"HTTP/1.1 100 \r\n\r\n")
"""What an interim head costs beyond its fields and reason (the header limit bounds them)."""


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Size limits (bytes), with nginx-like defaults; ``max_body_size`` None = unlimited."""

    max_request_line: int = 8 * 1024
    max_header_size: int = 32 * 1024
    max_header_count: int = 100
    max_body_size: int | None = None


TRAILER_DENYLIST = frozenset({
    b"host", b"content-length", b"transfer-encoding", b"trailer", b"te", b"connection",
    b"keep-alive", b"proxy-connection", b"upgrade", b"expect", b"authorization",
    b"proxy-authorization", b"cookie", b"set-cookie", b"content-type", b"content-encoding",
    b"content-range", b"range", b"cache-control", b"max-forwards", b"x-forwarded-for",
    b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port", b"forwarded",
    b"x-request-id",
})
"""Fields a trailer may not carry (framing, routing, authentication, and what offload itself
vouches for); they are dropped, RFC 9110 §6.5.1."""

_HOP_FIELDS = frozenset({b"connection", b"proxy-connection", b"keep-alive", b"upgrade", b"te",
                         b"trailer", b"transfer-encoding", b"content-length"})
"""Framing and connection fields: in a trailer, dropped, and the connection is not reused."""

_FRAMING_FIELDS = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection",
                             b"upgrade", b"expect"})
"""The fields the parser itself decides on; collected once as they arrive."""


class _Message:
    """The pieces of one message gathered from httptools' callbacks."""

    __slots__ = ("fields", "headers", "reason", "size", "trailers", "url")

    def __init__(self) -> None:
        self.url = b""
        self.reason = b""
        self.headers: Headers = []
        self.trailers: Headers = []
        self.fields: dict[bytes, list[bytes]] = {}
        self.size = 0

    def tokens(self, name: bytes) -> list[bytes]:
        """Comma-separated tokens of a framing field (``name`` lower-case), lower-cased."""
        values = self.fields.get(name)
        if not values:
            return []
        return [part.strip().lower() for value in values for part in value.split(b",")
                if part.strip()]


class _Parser:
    """What request and response parsing share: header collection, limits, the event list."""

    def __init__(self, limits: HttpLimits, header_limit: int) -> None:
        self.limits = limits
        self._header_limit = header_limit
        self._max_fields = limits.max_header_count
        self._stall_limit = header_limit + limits.max_request_line
        self._events: list[Event] = []
        self._message: _Message | None = None
        self._in_head = True
        self._stalled = 0
        """Bytes fed since the parser last made visible progress (a callback); httptools
        buffers an unfinished header or trailer line itself, so this bounds it."""
        self._in_trailers = False
        self._body_bytes = 0
        self._failed: ProtocolError | None = None
        self._connection_trailer = False
        """The message's trailers carried a framing or connection field (dropped, but llhttp
        may have acted on it): for a response, its connection is not reused."""
        self._interim_size = 0
        """Bytes of the interim (1xx) heads before a final response (responses only): they
        count against its header limit, so a backend cannot send 1xx after 1xx without end."""

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        self._message = _Message()
        self._connection_trailer = False
        self._in_head = True
        self._in_trailers = False
        self._body_bytes = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        # The hottest callback (every field of every message): kept lean on purpose.
        self._stalled = 0
        message = self._message
        assert message is not None
        size = message.size + len(name) + len(value) + 4
        message.size = size
        if size > self._header_limit:
            if self._interim_size:
                raise ProtocolError("too many interim (1xx) responses before the final one",
                                    502, "too_many_interim")
            raise ProtocolError("header section too large", 431, "headers_too_large")
        value = value.strip(b" \t")
        if self._in_head:
            target = message.headers
            lower = name.lower()
            if lower in _FRAMING_FIELDS:
                message.fields.setdefault(lower, []).append(value)
        else:
            target = message.trailers
            lower = name.lower()
            if lower in TRAILER_DENYLIST:
                # llhttp still acts on some (a Connection: close here makes it refuse the
                # next message): the connection is not used again
                self._connection_trailer = self._connection_trailer or lower in _HOP_FIELDS
                return  # RFC 9110 §6.5.1: never let a trailer stand in for a header
        if len(target) >= self._max_fields:
            raise ProtocolError("too many header fields", 431, "headers_too_large")
        target.append((name, value))

    def on_body(self, data: bytes) -> None:
        self._stalled = 0
        self._in_trailers = False
        self._body_bytes += len(data)
        limit = self.limits.max_body_size
        if limit is not None and self._body_bytes > limit:
            raise ProtocolError("body larger than allowed", 413, "body_too_large")
        self._events.append(Data(data))

    # -- feeding

    _parser: httptools.HttpRequestParser | httptools.HttpResponseParser
    """The llhttp parser; subclasses keep it a second time under a name of its own type
    (``_request_parser``, ``_response_parser``) and never declare ``_parser`` again: compiled
    with mypyc, a redeclared attribute made the collector visit the parser twice for one
    reference, so the parser <-> callbacks cycle was never collected and every connection
    left its parsers behind (about 2.8 KiB each, without bound)."""
    _malformed_status = 400

    def on_chunk_header(self) -> None:
        # Until chunk data arrives we are either at the start of a chunk's data (which comes
        # as on_body, byte by byte) or, after the last chunk, in the trailer section.
        self._stalled = 0
        self._in_trailers = True

    def on_chunk_complete(self) -> None:
        self._stalled = 0
        self._in_trailers = False

    def _check_stall(self) -> None:
        """Stop a header, trailer or chunk line that never ends: httptools keeps unfinished
        fields itself, so bytes fed without any callback since are bytes it is buffering.
        (Checked after each feed: callbacks reset the count, so at most one read more.)"""
        if self._stalled > self._stall_limit:
            if self._in_head or self._in_trailers:
                raise ProtocolError("header section too large", 431, "headers_too_large")
            raise ProtocolError("chunk line too long", 400, "bad_chunk")

    def _run(self, data: bytes) -> list[Event]:
        if self._failed is not None:
            self._failed.before = []  # what came before was handed out with the first raise
            raise self._failed
        try:
            pending: bytes | None = data
            while pending is not None:
                chunk, pending = pending, None
                self._stalled += len(chunk)  # every callback resets it
                try:
                    self._parser.feed_data(chunk)
                except httptools.HttpParserUpgrade as upgrade:
                    pending = self._upgraded(chunk[upgrade.args[0]:])
                if self._stalled > self._stall_limit:
                    self._check_stall()
        except httptools.HttpParserError as error:
            self._failed = self._translate(error)
            self._failed.before, self._events = list(self._events), []
            raise self._failed from None
        except ProtocolError as error:
            self._failed = error
            error.before, self._events = list(self._events), []
            raise
        events, self._events = self._events, []
        return events

    def _translate(self, error: httptools.HttpParserError) -> ProtocolError:
        cause = error.__context__
        if isinstance(cause, ProtocolError):
            return cause
        return ProtocolError(f"malformed message: {error}", self._malformed_status, "parse_error")

    def _upgraded(self, tail: bytes) -> bytes | None:
        """After an upgrade: the bytes to keep parsing as HTTP, or None to stop."""
        raise NotImplementedError

    def _end_head(self) -> None:
        self._in_head = False
        self._stalled = 0

    def _message_done(self) -> None:
        self._in_head = True  # the next bytes start a new head
        self._in_trailers = False
        self._stalled = 0


def _content_length(message: _Message) -> int | None:
    values = message.fields.get(b"content-length")
    # llhttp checked: one value, digits only, no overflow
    return int(values[0]) if values else None


def _with_host(headers: Headers, host: bytes) -> Headers:
    """``headers`` with ``host`` as the one Host field (in the first Host's place, else
    first): a rule that reads the Host field must see the authority the backend will get."""
    out: Headers = []
    placed = False
    for name, value in headers:
        if name.lower() == b"host":
            if not placed:
                out.append((name, host))
                placed = True
        else:
            out.append((name, value))
    if not placed:
        out.insert(0, (b"Host", host))
    return out


def valid_host(value: bytes) -> bool:
    """Whether ``value`` is a valid ``host[:port]`` (RFC 9110 §7.2, RFC 3986 §3.2.2)."""
    try:
        _validate_host(value)
    except ProtocolError:
        return False
    return True


def _validate_host(value: bytes) -> None:
    if not _HOST_RE.fullmatch(value):
        raise ProtocolError("invalid Host", 400, "bad_host")
    if not value.startswith(b"[") and value.count(b":") > 1:
        raise ProtocolError("invalid Host", 400, "bad_host")
    port = value.rpartition(b":")[2] if value.rpartition(b"]")[2].find(b":") >= 0 else b""
    if port and not 0 < int(port) < 65536:
        raise ProtocolError("invalid port in Host", 400, "bad_host")


class RequestParser(_Parser):
    """Requests from a client. A WebSocket upgrade stops parsing: see :attr:`upgrade_tail`."""

    def __init__(self, limits: HttpLimits | None = None) -> None:
        limits = limits or HttpLimits()
        super().__init__(limits, limits.max_header_size)
        self._parser = self._request_parser = httptools.HttpRequestParser(self)
        self._request: Request | None = None
        self._valid_host = b"\x00"
        self._priming = False
        """A synthetic head is being fed to set the framing of a body llhttp stopped before."""
        self.upgrade_tail: bytes | None = None
        """Set after a WebSocket upgrade request: the bytes that followed its head. Parsing
        stops until :meth:`resume` (the backend refused) or for good (tunnel)."""

    def feed(self, data: bytes) -> list[Event]:
        """Parse more bytes; returns the events they complete."""
        if self.upgrade_tail is not None:
            self.upgrade_tail += data
            return []
        return self._run(data)

    @property
    def body_left(self) -> int:
        """Bytes still to come of a Content-Length body being read; -1 inside a chunked body;
        0 between messages or inside a head (so a caller can feed a body whole but heads in
        small pieces, and stop parsing ahead of what it can serve)."""
        request = self._request
        if self._in_head or request is None:
            return 0
        if request.chunked:
            return -1
        return (request.content_length or 0) - self._body_bytes

    def resume(self) -> list[Event]:
        """The upgrade was refused: parse what followed the request as HTTP again."""
        tail, self.upgrade_tail = self.upgrade_tail or b"", None
        self._parser = self._request_parser = httptools.HttpRequestParser(self)
        self._message_done()
        return self._run(tail) if tail else []

    def on_url(self, part: bytes) -> None:
        message = self._message
        assert message is not None
        message.url += part
        if len(message.url) > self.limits.max_request_line:
            raise ProtocolError("request target too long", 414, "uri_too_long")

    def on_headers_complete(self) -> None:
        message = self._message
        assert message is not None
        self._end_head()
        if self._priming:
            return
        request = self._build(message)
        self._request = request
        self._events.append(request)

    def on_message_complete(self) -> None:
        message = self._message
        assert message is not None
        self._events.append(EndOfMessage(message.trailers))
        self._message_done()

    def _upgraded(self, tail: bytes) -> bytes | None:
        request = self._request
        if request is not None and request.websocket:
            self.upgrade_tail = tail
            return None
        # Another upgrade (h2c..., named in Connection or Proxy-Connection) is never forwarded:
        # the request goes on as plain HTTP/1.1. llhttp stopped right after its head, even
        # when a body follows; that body is framed by its Content-Length or chunked coding
        # like any other, never read as the next request.
        self._parser = self._request_parser = httptools.HttpRequestParser(self)
        self._message_done()
        if request is not None and request.has_body:
            events = self._events
            if events and isinstance(events[-1], EndOfMessage):
                events.pop()  # llhttp ended the message at its head; its body ends it
            self._frame_body(request)
        return tail or None

    def _frame_body(self, request: Request) -> None:
        """Make the fresh parser expect ``request``'s body next: it is fed a head of ours
        with the same framing, whose callbacks produce no event."""
        framing = (b"Transfer-Encoding: chunked" if request.chunked
                   else b"Content-Length: %d" % (request.content_length or 0))
        self._priming = True
        try:
            self._parser.feed_data(b"POST / HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n\r\n")
        finally:
            self._priming = False

    def _build(self, message: _Message) -> Request:
        version = _VERSIONS.get(self._parser.get_http_version())
        if version is None:
            if self._parser.get_http_version() == "0.9":
                raise ProtocolError("HTTP/0.9 is not supported", 400, "bad_version")
            raise ProtocolError("HTTP version not supported", 505, "bad_version")
        method: bytes = self._request_parser.get_method()
        if method == b"CONNECT":
            raise ProtocolError("CONNECT is not supported by a reverse proxy", 405, "bad_method")
        headers = message.headers
        hosts = message.fields.get(b"host", [])
        if len(hosts) > 1:
            raise ProtocolError("more than one Host", 400, "bad_host")
        if version == b"1.1" and not hosts:
            raise ProtocolError("HTTP/1.1 request without Host", 400, "bad_host")
        host = hosts[0] if hosts else b""
        if hosts and host != self._valid_host:
            _validate_host(host)
            self._valid_host = host  # a connection mostly asks for one host: check it once
        target, authority = self._target(message.url, method, host)
        if authority is not host:  # absolute-form: its authority replaces every Host
            headers = _with_host(headers, authority)
            host = authority
        transfer = message.tokens(b"transfer-encoding")
        if transfer and version == b"1.0":
            raise ProtocolError("Transfer-Encoding in an HTTP/1.0 request", 400, "bad_framing")
        if transfer and transfer[-1] != b"chunked":
            raise ProtocolError("Transfer-Encoding must end with chunked", 400, "parse_error")
        if len(transfer) > 1:
            # a coding before chunked could not be passed on without the backend decoding a
            # body it was not told about (RFC 9112 §6.1)
            raise ProtocolError("unsupported transfer coding", 501, "bad_framing")
        chunked = bool(transfer)
        length = None if chunked else _content_length(message)
        limit = self.limits.max_body_size
        if limit is not None and length is not None and length > limit:
            raise ProtocolError("body larger than allowed", 413, "body_too_large")
        expect = message.tokens(b"expect")
        if expect and expect != [b"100-continue"]:
            raise ProtocolError("unsupported Expect", 417, "bad_expect")
        websocket = (b"upgrade" in message.fields and method == b"GET" and version == b"1.1"
                     and b"websocket" in message.tokens(b"upgrade")
                     and b"upgrade" in message.tokens(b"connection"))
        if websocket and (chunked or length):
            # RFC 6455 §4.1: the opening handshake is a GET without a body; bytes after its
            # head are the tunnel's, or the next request's if the backend refuses
            raise ProtocolError("WebSocket upgrade request with a body", 400, "bad_upgrade")
        return Request(
            method=method, target=target, version=version, headers=headers, host=host,
            content_length=length, chunked=chunked,
            keep_alive=self._parser.should_keep_alive(), websocket=websocket,
            expect_continue=bool(expect),
        )

    @staticmethod
    def _target(url: bytes, method: bytes, host: bytes) -> tuple[bytes, bytes]:
        """Check the request target and return (origin-form target, host)."""
        # llhttp refused spaces and control characters; what is left to refuse is DEL and
        # anything beyond ASCII (targets must be percent-encoded, RFC 3986). find(), not
        # ``in``: bytes.__contains__ first tries its operand as an integer, and the TypeError
        # it builds and discards costs more than the search (here on every request).
        if not url.isascii() or url.find(b"\x7f") >= 0:
            raise ProtocolError("request target must be printable ASCII", 400, "bad_target")
        if url.find(b"#") >= 0:
            raise ProtocolError("fragment in request target", 400, "bad_target")
        if url.startswith(b"/"):
            return url, host
        if url == b"*":
            if method != b"OPTIONS":
                raise ProtocolError("asterisk-form is only for OPTIONS", 400, "bad_target")
            return url, host
        absolute = _SCHEME_RE.fullmatch(url)
        if absolute is None or not absolute.group(2):
            raise ProtocolError("request target is not origin-form or absolute-form", 400,
                                "bad_target")
        authority, rest = absolute.group(2), absolute.group(3)
        if authority.find(b"@") >= 0:
            raise ProtocolError("userinfo in request target", 400, "bad_target")
        _validate_host(authority)
        if not rest.startswith(b"/"):
            rest = b"/" + rest
        return rest, authority


class ResponseParser(_Parser):
    """Responses from a backend; call :meth:`expect` before each request is sent."""

    _malformed_status = 502

    def __init__(self, limits: HttpLimits | None = None) -> None:
        limits = limits or HttpLimits()
        super().__init__(limits, max(limits.max_header_size, RESPONSE_HEADER_FLOOR))
        self._parser = self._response_parser = httptools.HttpResponseParser(self)
        self._method = b"GET"
        self._response: Response | None = None
        self._head_buffer: bytearray | None = None
        self._answered = True
        """The request announced by :meth:`expect` has its final response (or none was
        announced): a new message now is one nobody asked for."""
        self.upgrade_tail: bytes | None = None
        """After a 101 response: the bytes that followed it (already tunnel data)."""

    def expect(self, method: bytes) -> None:
        """A response to a ``method`` request comes next."""
        self._method = method
        self._response = None
        self._answered = False
        self._interim_size = 0
        self._head_buffer = bytearray() if method == b"HEAD" else None

    @property
    def answered(self) -> bool:
        """The final response to the last announced request is complete."""
        return self._answered

    @property
    def until_close(self) -> bool:
        """The current response's body ends when the server closes."""
        response = self._response
        return response is not None and response.until_close

    def feed(self, data: bytes) -> list[Event]:
        if self._failed is not None:
            self._failed.before = []
            raise self._failed
        if self.upgrade_tail is not None:
            self.upgrade_tail += data  # after 101 everything is tunnel data
            return []
        if self._head_buffer is not None:
            try:
                return self._feed_head_only(data)
            except ProtocolError as error:
                self._failed = error
                raise
        return self._run(data)

    def feed_eof(self) -> list[Event]:
        """The server closed: ends a body delimited by the close, else the response is cut."""
        if self._response is not None and self._response.until_close:
            self._response = None
            self._answered = True
            return [EndOfMessage()]
        self._failed = ProtocolError("the server closed before the response was complete", 502,
                                     "backend_closed")
        raise self._failed

    def _feed_head_only(self, data: bytes) -> list[Event]:
        """Responses to HEAD have no body whatever their headers say: httptools cannot be told,
        so it only ever sees the header section. Interim heads before the final one are taken
        in a loop (one read may hold thousands of them: never one call each)."""
        buffer = self._head_buffer
        assert buffer is not None
        buffer += data
        events: list[Event] = []
        start = 0
        try:
            while True:
                end = buffer.find(b"\r\n\r\n", start)
                if end < 0:
                    del buffer[:start]
                    if len(buffer) > self._header_limit:
                        raise ProtocolError("response header section too large", 502,
                                            "parse_error")
                    return events
                head, start = bytes(buffer[start : end + 4]), end + 4
                self._parser = self._response_parser = httptools.HttpResponseParser(self)
                events += self._run(head)
                response = self._response
                if response is None:  # only empty lines, skipped (RFC 9112 §2.2): no answer
                    continue
                if response.status >= 200:
                    break
                if self.upgrade_tail is not None:  # 101: what follows is not HTTP
                    self.upgrade_tail += buffer[start:]
                    return events
                # an interim response: the final one follows
        except ProtocolError as error:
            error.before = events + error.before
            raise
        rest = bytes(buffer[start:])
        self._parser = self._response_parser = httptools.HttpResponseParser(self)
        self._head_buffer = None
        self._response = None
        self._answered = True
        self._message_done()
        events.append(EndOfMessage())
        if rest.strip(b"\r\n"):
            extra = ProtocolError("the backend sent a body or more after its answer to HEAD",
                                  502, "data_after_response")
            extra.before = list(events)
            raise extra
        return events

    def on_message_begin(self) -> None:
        if self._answered:
            raise ProtocolError("the backend sent more than one response to a request", 502,
                                "data_after_response")
        super().on_message_begin()
        message = self._message
        assert message is not None
        message.size = self._interim_size

    def on_status(self, reason: bytes) -> None:
        message = self._message
        assert message is not None
        message.reason += reason

    def on_headers_complete(self) -> None:
        message = self._message
        assert message is not None
        self._end_head()
        status = self._response_parser.get_status_code()
        version = _VERSIONS.get(self._parser.get_http_version())
        if version is None:
            raise ProtocolError("backend spoke an unsupported HTTP version", 502, "parse_error")
        if not 100 <= status <= 599:  # RFC 9110 §15: others are invalid, to be taken as 5xx
            raise ProtocolError(f"invalid status code {status:03d}", 502, "bad_status")
        if message.reason and not _REASON.fullmatch(message.reason):
            raise ProtocolError("a control character in the reason phrase", 502, "bad_status")
        headers = message.headers
        transfer = message.tokens(b"transfer-encoding")
        if transfer and transfer != [b"chunked"]:
            raise ProtocolError("backend used a transfer coding other than chunked", 502,
                                "parse_error")
        chunked = bool(transfer)
        length = None if chunked else _content_length(message)
        if status < 200 and (chunked or length is not None):
            # RFC 9110 §8.6, RFC 9112 §6.1: an interim response is a head and nothing else
            raise ProtocolError("an interim (1xx) response with body framing", 502,
                                "bad_interim")
        if status < 200 and status != 101 and not self._parser.should_keep_alive():
            # HTTP/1.0 or Connection: close on a 1xx: llhttp would refuse the final response
            # that must follow (answers to HEAD, parsed head by head, would take it and pool
            # a connection the server said it closes): refused alike
            raise ProtocolError("an interim (1xx) response that closes the connection", 502,
                                "bad_interim")
        if status < 200:
            # the status line and the empty line too, so heads without fields count
            self._interim_size = message.size + len(message.reason) + INTERIM_LINES
            if self._interim_size > self._header_limit:
                raise ProtocolError("too many interim (1xx) responses", 502, "too_many_interim")
        bodiless = (self._method == b"HEAD" or status < 200 or status in (204, 304))
        # A 204 that announces a body (or a 304 with chunked framing) breaks RFC 9110 §8.6:
        # the announced bytes may still come, so the connection is not used again.
        suspect = (status == 204 and (chunked or bool(length))) or (status == 304 and chunked)
        # RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing (an
        # HTTP/1.0 hop in between may have kept part of it back): close after it.
        suspect = suspect or (chunked and version == b"1.0")
        response = Response(
            status=status, reason=message.reason, version=version, headers=headers,
            content_length=length, chunked=chunked,
            keep_alive=self._parser.should_keep_alive() and not suspect, has_body=not bodiless,
            until_close=not bodiless and not chunked and length is None,
        )
        self._response = response
        self._events.append(response)

    def on_message_complete(self) -> None:
        message = self._message
        response = self._response
        assert message is not None
        self._message_done()
        if response is not None and response.status < 200:
            return  # interim: its "message" ends with its head
        if response is not None and response.until_close:
            return  # httptools never ends these; feed_eof does
        if response is not None and self._connection_trailer:
            response.keep_alive = False
        self._events.append(EndOfMessage(message.trailers))
        self._response = None
        self._answered = True

    def _upgraded(self, tail: bytes) -> bytes | None:
        self.upgrade_tail = tail
        return None
