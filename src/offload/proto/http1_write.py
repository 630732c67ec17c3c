"""Writing HTTP/1.1 (sans-IO): request heads for the backend, response heads and offload's own
responses for the client, chunk framing. What goes in the heads is decided by
:mod:`offload.proto.forwarding`; this module only says it in HTTP/1.1.

As a last line of defence every head must contain exactly one line feed per line: one smuggled
in a value would start a second message (RFC 9112 §11.2). The parser already refuses CR, LF and
NUL in values; counting them here costs one byte count and keeps that promise local.
"""

from __future__ import annotations

import re
from ipaddress import IPv6Address

from offload.errors import ProtocolError
from offload.proto.forwarding import (
    ClientFacts,
    ForwardPolicy,
    OwnResponse,
    ResponsePolicy,
    own_response,
    request_fields,
    response_fields,
)
from offload.proto.http_types import Headers, Request, Response

FRAMINGS = frozenset({"length", "chunked", "close", "none"})
"""The framings :func:`response_head` accepts."""
LAST_CHUNK = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

_CRLF = b"\r\n"
_SEP = b": "


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (RFC 9112 §7.1)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def last_chunk(trailers: Headers) -> bytes:
    if not trailers:
        return LAST_CHUNK
    return b"0\r\n" + b"".join(b"%b: %b\r\n" % pair for pair in trailers) + b"\r\n"


def _fields(out: list[bytes], fields: Headers) -> None:
    for name, value in fields:  # four appends: ``out += (...)`` would build a tuple per field
        out.append(name)
        out.append(_SEP)
        out.append(value)
        out.append(_CRLF)


def _check_head(head: bytes, lines: int, status: int) -> bytes:
    """Refuse a head in which a value carried a line feed (RFC 9112 §2.2, §11.2)."""
    if head.count(b"\n") != lines:
        raise ProtocolError("a header field contains a line break", status, "bad_header_value")
    return head


# ------------------------------------------------------------------------------ request side


def request_head(request: Request, fields: Headers) -> bytes:
    """The HTTP/1.1 request head for the backend: request line, Host (RFC 9112 §3.2: always one,
    empty when there is no authority), ``fields``, the WebSocket upgrade, and exactly one
    framing (RFC 9112 §6.2, §6.3). Raises :class:`ProtocolError` (400) if a value would break a
    line."""
    out = [request.method, b" ", request.target, b" HTTP/1.1\r\nHost: ", request.host, _CRLF]
    _fields(out, fields)
    lines = len(fields) + 3  # request line, Host, the empty line
    if request.websocket:  # RFC 6455 §4.1, RFC 9110 §7.8
        out.append(b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
        lines += 2
    if request.content_length is not None:
        out += (b"Content-Length: ", b"%d" % request.content_length, _CRLF)
        lines += 1
    elif request.chunked:
        out.append(b"Transfer-Encoding: chunked\r\n")
        lines += 1
    out.append(_CRLF)
    return _check_head(b"".join(out), lines, 400)


def backend_request_head(request: Request, client: ClientFacts, policy: ForwardPolicy,
                         request_id: bytes, *, trusted: bool | None = None,
                         ) -> tuple[bytes, bytes]:
    """:func:`~offload.proto.forwarding.request_fields` written by :func:`request_head`: the
    backend's request head and the request id it carries."""
    if trusted is None:  # callers that serve many requests for one client pass it in
        trusted = policy.trusts(client.address)
    fields, rid = request_fields(request, client, policy, request_id, trusted=trusted)
    return request_head(request, fields), rid


# ----------------------------------------------------------------------------- response side


def response_head(response: Response, fields: Headers, *, framing: str, keep_alive: bool,
                  client_version: bytes, backend_length: bytes | None = None) -> bytes:
    """The response head for the client with ``fields`` and the framing the caller decided:

    ``length`` (Content-Length), ``chunked``, ``close`` (the body ends when the connection
    does, so the connection is always closed) or ``none`` (1xx, 204, 304, answers to HEAD: a
    Content-Length there describes the representation, RFC 9110 §8.6, and is kept from the
    backend's ``backend_length``). Connection is written on final responses only (and
    ``Connection: Upgrade`` on 101). A framing that the status or the client's version does
    not allow is a bug in the caller: ValueError. A value that would break a line raises
    :class:`ProtocolError` (502).
    """
    status = response.status
    final = status >= 200
    if framing not in FRAMINGS:
        raise ValueError(f"unknown framing {framing!r}")
    if (not final or status == 204) and framing != "none":  # RFC 9110 §6.4.1, §8.6
        raise ValueError(f"a {status} response has no content")
    if not final and client_version != b"1.1":  # RFC 9110 §15.2: no 1xx to HTTP/1.0
        raise ValueError(f"a {status} response cannot go to an HTTP/1.0 client")
    if framing == "chunked" and client_version != b"1.1":  # RFC 9112 §6.1
        raise ValueError("chunked framing needs an HTTP/1.1 client")
    if framing == "close":  # RFC 9112 §6.3 (7): the close delimits the body
        keep_alive = False
    out = [b"HTTP/1.1 %d " % status, response.reason, _CRLF]
    _fields(out, fields)
    lines = len(fields) + 2  # status line, the empty line
    if framing == "length":
        if response.content_length is None:
            raise ValueError("length framing needs response.content_length")
        out += (b"Content-Length: ", b"%d" % response.content_length, _CRLF)
        lines += 1
    elif framing == "chunked":
        out.append(b"Transfer-Encoding: chunked\r\n")
        lines += 1
    elif framing == "none" and final and status != 204:
        if response.content_length is not None:
            out += (b"Content-Length: ", b"%d" % response.content_length, _CRLF)
            lines += 1
        elif backend_length is not None and backend_length.isdigit():
            out += (b"Content-Length: ", backend_length, _CRLF)
            lines += 1
    if status == 101:
        out.append(b"Connection: Upgrade\r\n")
        lines += 1
    elif final and not keep_alive:  # RFC 9112 §9.6
        out.append(b"Connection: close\r\n")
        lines += 1
    elif final and client_version == b"1.0":  # RFC 9112 §9.3: 1.0 persists only if told so
        out.append(b"Connection: keep-alive\r\n")
        lines += 1
    out.append(_CRLF)
    return _check_head(b"".join(out), lines, 502)


def client_response_head(response: Response, *, framing: str, keep_alive: bool,
                         client_version: bytes, policy: ResponsePolicy) -> bytes:
    """:func:`~offload.proto.forwarding.response_fields` written by :func:`response_head`."""
    fields, length = response_fields(response, policy, chunked=framing == "chunked")
    return response_head(response, fields, framing=framing, keep_alive=keep_alive,
                         client_version=client_version, backend_length=length)


# ----------------------------------------------------------------- offload's own responses


def own_response_bytes(answer: OwnResponse, *, keep_alive: bool = False) -> bytes:
    """An :class:`~offload.proto.forwarding.OwnResponse` in HTTP/1.1. With ``keep_alive`` no
    Connection field is sent (HTTP/1.1 persistence, RFC 9112 §9.3); otherwise ``close``."""
    out = [b"HTTP/1.1 %d %b\r\n" % (answer.status, answer.reason)]
    content_type, *rest = answer.fields  # the length goes right after the type
    _fields(out, [content_type])
    out += (b"Content-Length: ", b"%d" % len(answer.body), _CRLF)
    _fields(out, rest)
    if not keep_alive:
        out.append(b"Connection: close\r\n")
    out += (_CRLF, answer.body)
    return b"".join(out)


def error_response(status: int, *, detail: str = "", keep_alive: bool = False,
                   extra_headers: tuple[tuple[bytes, bytes], ...] | list[tuple[bytes, bytes]] = (),
                   policy: ResponsePolicy | None = None) -> bytes:
    """A complete plain-text error response from offload itself, in HTTP/1.1
    (:func:`~offload.proto.forwarding.own_response`)."""
    return own_response_bytes(own_response(status, detail=detail, extra_headers=extra_headers,
                                           policy=policy), keep_alive=keep_alive)


_REG_NAME = re.compile(rb"[A-Za-z0-9.-]{1,253}")
_PORT = re.compile(rb"(?::[0-9]{0,5})?")
_ORIGIN_FORM = re.compile(rb"/[\x21-\x7e]*")  # RFC 9112 §3.2.1, visible ASCII only


def _redirect_host(host: bytes) -> bytes | None:
    """The host of ``host[:port]`` when it is a plain name or a bracketed IPv6 literal."""
    if host.startswith(b"["):
        end = host.find(b"]")
        name, rest = host[: end + 1], host[end + 1 :]
        if end < 0 or b"%" in name:
            return None
        try:
            IPv6Address(name[1:-1].decode("ascii"))
        except ValueError:
            return None
    else:
        name, colon, port = host.partition(b":")
        rest = colon + port
        if not _REG_NAME.fullmatch(name):
            return None
    return name if _PORT.fullmatch(rest) else None


def redirect_response(host: bytes, target: bytes, https_port: int) -> bytes:
    """308 Permanent Redirect (RFC 9110 §15.4.9) from plain HTTP to the same target over https.

    The connection is closed after it: the client comes back over TLS, and a plain-text
    connection kept open would only hold a slot. No HSTS here: it means nothing over plain
    HTTP (RFC 6797 §7.2). A host that is not a plain name or bracketed IPv6 literal, or a
    target that is not in origin-form, gets a 400 instead.
    """
    if not 0 < https_port < 65536:
        raise ValueError(f"{https_port} is not a port")
    name = _redirect_host(host)
    if name is None or not _ORIGIN_FORM.fullmatch(target):
        return error_response(400, detail="The address asked for cannot be redirected to https.")
    port = b"" if https_port == 443 else b":%d" % https_port
    return b"".join((b"HTTP/1.1 308 Permanent Redirect\r\nLocation: https://", name, port, target,
                     b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
