"""An HTTP/2 request head as the request path's :class:`~offload.proto.http_types.Request`
(sans-IO), checked the way RFC 9113 §8 asks of a server that forwards to HTTP/1.1.

Refused, never repaired (a lenient translation is a request-smuggling bug waiting for the
HTTP/1.1 hop behind us):

* malformed (RFC 9113 §8.1.1: a stream error PROTOCOL_ERROR): pseudo-header fields after
  regular ones, unknown, repeated or response pseudo-headers, a missing ``:method``,
  ``:scheme`` or ``:path``; an upper-case field name; a connection-specific field
  (Connection, Keep-Alive, Proxy-Connection, Transfer-Encoding, Upgrade) or TE other than
  ``trailers`` (§8.2.2); CR, LF or NUL anywhere in a name or value, other control characters
  or whitespace at either end of a value (§8.2.1); a Content-Length that is not one number;
* answered like their HTTP/1.1 twins: CONNECT (405, a reverse proxy has nothing to tunnel to),
  a ``:scheme`` other than ``https`` (400), a method that is not a token, a ``:path`` that is
  not origin-form or ``*`` for OPTIONS, a fragment or a byte beyond printable ASCII in it
  (400), a missing or invalid authority, or a Host that disagrees with ``:authority`` (400),
  too many fields (each cookie crumb counts) or too large a header list (431), an unknown
  Expect (417), a body over ``max_body_size`` (413).

Translation (§8.3.1): ``:authority`` (else Host) becomes the one Host, ``:path`` the target,
cookie crumbs are joined with ``"; "`` (§8.2.3). A body without Content-Length is forwarded
chunked; Content-Length is checked against the DATA received by :class:`BodyCount`.

Trailers (:func:`request_trailers`) go to the backend as the chunked body's trailer section, so
they get the head's checks (a pseudo-header, a bad name or value, a connection-specific field:
malformed, §8.1) and then the HTTP/1.1 parser's deny list: a trailer never stands in for a
field that frames, routes or vouches for the request (RFC 9110 §6.5.1). The python-hyper
engine runs without h2's own validation, so without these checks a CR LF in a trailer value
would have started a request of the client's own on the pooled backend connection.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from offload.errors import ProtocolError
from offload.proto.h2_engine import Header
from offload.proto.http1 import TRAILER_DENYLIST, HttpLimits, valid_host
from offload.proto.http_types import Headers, Request

CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection",
                                 b"transfer-encoding", b"upgrade"})
_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path"})
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NAME_BAD = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9a-z]")
"""Anything a lower-case field name may not hold."""
_VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_PATH_OK = re.compile(rb"/[\x21-\x7e]*")


class MalformedRequest(ProtocolError):
    """RFC 9113 §8.1.1: reset the stream with PROTOCOL_ERROR (no answer is owed)."""

    def __init__(self, message: str, reason: str = "h2_malformed") -> None:
        super().__init__(message, 400, reason)


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """How big a request head may be: the frontend's limits for HTTP/1.1 heads, applied to
    the decoded list (each field counted as name + value + 32, as SETTINGS_MAX_HEADER_LIST_SIZE
    counts, RFC 9113 §6.5.2)."""

    max_header_size: int = 64 * 1024
    max_header_count: int = 100
    max_target: int = 8 * 1024
    max_body_size: int | None = None

    @classmethod
    def of(cls, limits: HttpLimits, header_list: int) -> HeadLimits:
        return cls(max_header_size=header_list, max_header_count=limits.max_header_count,
                   max_target=limits.max_request_line, max_body_size=limits.max_body_size)


def request_from_headers(fields: list[Header], end_stream: bool, limits: HeadLimits
                         ) -> Request:
    """The request a decoded header block asks for; raises :class:`MalformedRequest` or
    :class:`ProtocolError` (with the status to answer)."""
    method = scheme = authority = path = None
    headers: Headers = []
    cookies: list[bytes] = []
    size = 0
    regular = False
    host: bytes | None = None
    lengths: list[bytes] = []
    expect = False
    for name, value in fields:
        size += len(name) + len(value) + 32
        if _VALUE_BAD.search(value) or (value and value[0] in b" \t") \
                or (value and value[-1] in b" \t"):
            raise MalformedRequest("a field value holds a control character or surrounding "
                                   "whitespace")
        if name.startswith(b":"):
            if regular:
                raise MalformedRequest("a pseudo-header after a regular field")
            if name not in _PSEUDO:
                raise MalformedRequest("an unknown or response pseudo-header")
            if name == b":method":
                if method is not None:
                    raise MalformedRequest("two :method fields")
                method = value
            elif name == b":scheme":
                if scheme is not None:
                    raise MalformedRequest("two :scheme fields")
                scheme = value
            elif name == b":authority":
                if authority is not None:
                    raise MalformedRequest("two :authority fields")
                authority = value
            else:
                if path is not None:
                    raise MalformedRequest("two :path fields")
                path = value
            continue
        regular = True
        if not name or _NAME_BAD.search(name):
            raise MalformedRequest("a field name that is not a lower-case token")
        if name in CONNECTION_SPECIFIC:
            raise MalformedRequest(f"connection-specific field {name.decode()}")
        if name == b"te":
            if value.lower() != b"trailers":
                raise MalformedRequest("TE other than trailers")
            continue  # a hop-by-hop field the HTTP/1.1 hop does not need
        if name == b"cookie":
            cookies.append(value)
            continue
        if name == b"host":
            if host is not None:
                raise ProtocolError("more than one Host", 400, "bad_host")
            host = value
        elif name == b"content-length":
            lengths.append(value)
        elif name == b"expect":
            if value.lower() != b"100-continue":
                raise ProtocolError("unsupported Expect", 417, "bad_expect")
            expect = True
            continue  # offload says it to the backend when it means it
        headers.append((name, value))
    if len(headers) + len(cookies) > limits.max_header_count:
        raise ProtocolError("too many header fields", 431, "headers_too_large")
    if size > limits.max_header_size:
        raise ProtocolError("header list too large", 431, "headers_too_large")
    if method is None or scheme is None or path is None:
        if method == b"CONNECT":
            raise ProtocolError("CONNECT is not supported by a reverse proxy", 405,
                                "bad_method")
        raise MalformedRequest("a request without :method, :scheme or :path")
    if method == b"CONNECT":
        raise ProtocolError("CONNECT is not supported by a reverse proxy", 405, "bad_method")
    if not _TOKEN.fullmatch(method):
        raise ProtocolError("invalid method", 400, "bad_method")
    if scheme != b"https":
        raise ProtocolError("only https is served here", 400, "bad_scheme")
    target = _target(path, method, limits)
    host = _authority(authority, host)
    if cookies:  # RFC 9113 §8.2.3: one field for the HTTP/1.1 hop
        headers.append((b"cookie", b"; ".join(cookies)))
    headers.insert(0, (b"host", host))  # the one authority everything downstream sees
    length = _content_length(lengths, limits)
    has_body = not end_stream
    chunked = has_body and length is None
    if end_stream and length:
        raise MalformedRequest("Content-Length with no body", "h2_content_length")
    return Request(method=method, target=target, version=b"2", headers=headers, host=host,
                   content_length=length if has_body or length == 0 else None,
                   chunked=chunked, keep_alive=True, websocket=False, expect_continue=expect)


def request_trailers(fields: list[Header], limits: HeadLimits) -> Headers:
    """A request's trailer block as the HTTP/1.1 trailer section (module docstring); raises
    :class:`MalformedRequest`, or :class:`ProtocolError` (431) for too many fields."""
    trailers: Headers = []
    for name, value in fields:
        if name.startswith(b":"):
            raise MalformedRequest("a pseudo-header in trailers")
        if not name or _NAME_BAD.search(name):
            raise MalformedRequest("a trailer name that is not a lower-case token")
        if _VALUE_BAD.search(value) or (value and value[0] in b" \t") \
                or (value and value[-1] in b" \t"):
            raise MalformedRequest("a trailer value holds a control character or surrounding "
                                   "whitespace")
        if name in CONNECTION_SPECIFIC:
            raise MalformedRequest(f"connection-specific field {name.decode()} in trailers")
        if name in TRAILER_DENYLIST:
            continue  # RFC 9110 §6.5.1: dropped, as the HTTP/1.1 parser drops it
        trailers.append((name, value))
    if len(trailers) > limits.max_header_count:
        raise ProtocolError("too many trailer fields", 431, "headers_too_large")
    return trailers


def _target(path: bytes, method: bytes, limits: HeadLimits) -> bytes:
    if len(path) > limits.max_target:
        raise ProtocolError("request target too long", 414, "uri_too_long")
    if path == b"*":
        if method != b"OPTIONS":
            raise ProtocolError("asterisk-form is only for OPTIONS", 400, "bad_target")
        return path
    if not _PATH_OK.fullmatch(path):
        raise ProtocolError("request target must be origin-form printable ASCII", 400,
                            "bad_target")
    if b"#" in path:
        raise ProtocolError("fragment in request target", 400, "bad_target")
    return path


def _authority(authority: bytes | None, host: bytes | None) -> bytes:
    """RFC 9113 §8.3.1: ``:authority`` wins; a Host field that says otherwise is an error."""
    chosen = authority if authority is not None else host
    if not chosen:
        raise ProtocolError("a request without an authority", 400, "bad_host")
    if b"@" in chosen:
        raise ProtocolError("userinfo in the authority", 400, "bad_host")
    if not valid_host(chosen):
        raise ProtocolError("invalid authority", 400, "bad_host")
    if authority is not None and host is not None and host.lower() != authority.lower():
        raise ProtocolError("Host disagrees with :authority", 400, "bad_host")
    return chosen


def _content_length(values: list[bytes], limits: HeadLimits) -> int | None:
    if not values:
        return None
    if len(set(values)) != 1 or not values[0].isdigit() or len(values[0]) > 18:
        raise MalformedRequest("an invalid Content-Length", "h2_content_length")
    length = int(values[0])
    if limits.max_body_size is not None and length > limits.max_body_size:
        raise ProtocolError("body larger than allowed", 413, "body_too_large")
    return length


class BodyCount:
    """The DATA of one request against its Content-Length and the body limit (RFC 9113
    §8.1.1: a mismatch is malformed)."""

    __slots__ = ("expected", "limit", "received")

    def __init__(self, request: Request, limits: HeadLimits) -> None:
        self.expected = request.content_length
        self.limit = limits.max_body_size
        self.received = 0

    def data(self, size: int) -> None:
        self.received += size
        if self.expected is not None and self.received > self.expected:
            raise MalformedRequest("more DATA than Content-Length", "h2_content_length")
        if self.limit is not None and self.received > self.limit:
            raise ProtocolError("body larger than allowed", 413, "body_too_large")

    def end(self) -> None:
        if self.expected is not None and self.received != self.expected:
            raise MalformedRequest("less DATA than Content-Length", "h2_content_length")
