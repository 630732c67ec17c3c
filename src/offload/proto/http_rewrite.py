"""Rewriting HTTP/1 message heads between client and backend, and offload's own responses (sans-IO).

:func:`backend_request_head` turns a checked client :class:`Request` into exactly one unambiguous
HTTP/1.1 request head for the backend: hop-by-hop fields are removed, framing and Host are
written by us, and the forwarding fields (X-Forwarded-*, Forwarded, the request id) are taken
from the client only when its address is a trusted proxy. :func:`client_response_head` does the
same for the backend's :class:`Response` on its way to the client, with the framing the caller
chose. :func:`error_response` and :func:`redirect_response` build the complete small responses
offload answers with itself.

Theory of operation: one pass over the header list; each lower-cased name is looked up in a
table precomputed by the policy (drop, pass through, or a forwarding field), everything else is
copied in its order and spelling. Fields named by a Connection header are hop-by-hop too
(RFC 9110 §7.6.1); since Connection may come after the fields it names, a second pass runs in
the rare case that it names a field that is not dropped anyway. As a last line of defence the
serialized head must contain exactly one line feed per line: one smuggled in a value would
start a second message (RFC 9112 §11.2).

Preconditions: heads come from offload's checked parser (names are tokens, values have no
control characters other than HTAB, the request target is in origin-form).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from ipaddress import IPv4Network, IPv6Address, IPv6Network
from types import MappingProxyType

from offload.errors import ProtocolError
from offload.proto.http_types import Headers, Request, Response

FRAMINGS = frozenset({"length", "chunked", "close", "none"})
"""The framings :func:`client_response_head` accepts."""

_CRLF = b"\r\n"
_SEP = b": "

# RFC 9110 §7.6.1 (Connection and the fields it names, Proxy-Connection, Keep-Alive, TE,
# Transfer-Encoding, Upgrade); HTTP2-Settings is only for the h2c upgrade (RFC 7540 §3.2.1).
# Trailer is not hop-by-hop (RFC 9110 §6.6.2) but announces trailers, so it goes where they go:
# with a chunked body, whose trailers are forwarded, and nowhere else. Content-Length and
# Transfer-Encoding are re-written from the framing we chose (RFC 9112 §6).
_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade",
    b"http2-settings", b"transfer-encoding", b"content-length",
})
# Host is re-written from the checked authority (RFC 9112 §3.2); Expect only when we mean it.
_REQUEST_DROP = _HOP_BY_HOP | {b"host", b"expect"} | {
    # the client-certificate identity: only offload may say who the client is
    b"client-cert", b"client-cert-chain", b"x-ssl-client-verify", b"x-ssl-client-dn",
    b"x-ssl-client-san", b"x-ssl-client-fingerprint"}
# Connection tokens that never need a second pass: options, or names dropped anyway.
_HARMLESS_TOKENS = _REQUEST_DROP | {b"close"}
_HARMLESS_RESPONSE_TOKENS = _HOP_BY_HOP | {b"close"}

# Actions for request fields (bit values so that the pass-through kinds combine into `seen`).
_DROP = 0
_XF_PROTO, _XF_HOST, _XF_PORT, _FWD_PASS = 1, 2, 4, 8  # trusted: pass through, remember
_XFF, _FWD_JOIN, _RID = 16, 32, 64  # trusted: collect, write ours after them

_TCHAR = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2
_TCHAR_BYTES = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")  # RFC 9110 §5.5, without CR/LF/NUL/CTL


def _token_names(value: bytes) -> set[bytes]:
    """The lower-cased names in one Connection field value (RFC 9110 §7.6.1)."""
    return {token for part in value.split(b",") if (token := part.strip().lower())}


def _check_head(head: bytes, lines: int, status: int) -> bytes:
    """Refuse a head in which a value carried a line feed: it would end the line early and
    could start a second message (RFC 9112 §2.2, §11.2). The parser already rejects CR, LF and
    NUL in values; this costs one byte count and keeps that promise local."""
    if head.count(b"\n") != lines:
        raise ProtocolError("a header field contains a line break", status, "bad_header_value")
    return head


# ------------------------------------------------------------------------------ request side


@dataclass(frozen=True, slots=True)
class ClientFacts:
    """Who is on the other end of the client connection."""

    address: str
    """The client IP (IPv6 without brackets); ``""`` when unknown."""
    port: int
    local_port: int
    """The port offload accepted the connection on (for X-Forwarded-Port)."""
    identity: bytes = b""
    """Header lines naming the verified client certificate (frontends with client_auth)."""
    identity_lines: int = field(init=False, repr=False, compare=False)
    node: bytes = field(init=False, repr=False, compare=False)
    """The address as forwarded: IPv4-mapped IPv6 shown as IPv4, no zone id, else ``unknown``."""
    forwarded_for: bytes = field(init=False, repr=False, compare=False)
    """The RFC 7239 §6 ``for=`` value: IPv6 bracketed and quoted."""

    def __post_init__(self) -> None:
        address = self.address.partition("%")[0]  # a zone id means nothing past this host
        if address[:7].lower() == "::ffff:" and "." in address:  # RFC 4291 §2.5.5.2
            address = address[7:]
        node = address.encode("ascii") if address else b"unknown"  # RFC 7239 §6.2
        object.__setattr__(self, "node", node)
        object.__setattr__(self, "identity_lines", self.identity.count(b"\n"))
        object.__setattr__(self, "forwarded_for", b'"[' + node + b']"' if b":" in node else node)


@dataclass(frozen=True, slots=True)
class ForwardPolicy:
    """How much to believe the client's forwarding fields, and which ones to send."""

    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    forwarded: bool = False
    """Also send the standard Forwarded field (RFC 7239)."""
    request_id_header: bytes = b"X-Request-ID"
    _v4: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)
    _v6: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)
    _actions: Mapping[bytes, int] = field(init=False, repr=False, compare=False)
    _actions_chunked: Mapping[bytes, int] = field(init=False, repr=False, compare=False)
    _rid_prefix: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rid = self.request_id_header.lower()
        forwarding = {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                      b"x-forwarded-port", b"forwarded"}
        if not _TCHAR.fullmatch(self.request_id_header) or rid in _REQUEST_DROP | forwarding:
            raise ValueError(f"{self.request_id_header!r} cannot be the request id header")
        networks = tuple(self.trusted_proxies)
        object.__setattr__(self, "trusted_proxies", networks)
        object.__setattr__(self, "_v4", tuple(
            (int(n.network_address), int(n.netmask)) for n in networks if n.version == 4))
        object.__setattr__(self, "_v6", tuple(
            (int(n.network_address), int(n.netmask)) for n in networks if n.version == 6))
        actions = dict.fromkeys(_REQUEST_DROP, _DROP)
        actions |= {b"x-forwarded-for": _XFF, b"x-forwarded-proto": _XF_PROTO,
                    b"x-forwarded-host": _XF_HOST, b"x-forwarded-port": _XF_PORT,
                    b"forwarded": _FWD_JOIN if self.forwarded else _FWD_PASS, rid: _RID}
        object.__setattr__(self, "_actions", MappingProxyType(dict(actions)))
        del actions[b"trailer"]  # a chunked body carries its trailers on: announce them too
        object.__setattr__(self, "_actions_chunked", MappingProxyType(actions))
        object.__setattr__(self, "_rid_prefix", self.request_id_header + _SEP)

    def trusts(self, address: str) -> bool:
        """Whether ``address`` is inside a trusted network (IPv4-mapped IPv6 matches IPv4)."""
        if not self.trusted_proxies:
            return False
        address = address.partition("%")[0]
        try:
            if ":" not in address:
                value = int.from_bytes(socket.inet_pton(socket.AF_INET, address))
                networks = self._v4
            else:
                value = int.from_bytes(socket.inet_pton(socket.AF_INET6, address))
                networks = self._v6
                if value >> 32 == 0xFFFF:  # ::ffff:0:0/96 holds IPv4 (RFC 4291 §2.5.5.2)
                    for net, mask in self._v4:
                        if value & 0xFFFFFFFF & mask == net:
                            return True
        except (OSError, ValueError):
            return False
        for net, mask in networks:  # noqa: SIM110 - a loop is twice as fast as any(genexpr)
            if value & mask == net:
                return True
        return False


def _forwarded_host(host: bytes) -> bytes:
    """A Forwarded ``host=`` value: a token, else a quoted-string (RFC 7239 §4, RFC 9110 §5.6.4)."""
    if not host.translate(None, _TCHAR_BYTES):
        return host
    return b'"' + host.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _request_fields(headers: Headers, actions: Mapping[bytes, int], trusted: bool,
                    named: Collection[bytes], out: list[bytes],
                    ) -> tuple[int, list[bytes], list[bytes], bytes | None, int, set[bytes] | None]:
    """Copy the fields that pass; return (lines, XFF values, Forwarded values, request id,
    the pass-through kinds seen, and the Connection tokens that call for a second pass)."""
    lines = 0
    xff: list[bytes] = []
    fwd: list[bytes] = []
    rid: bytes | None = None
    seen = 0
    extra: set[bytes] | None = None
    for name, value in headers:
        lname = name.lower()
        action = actions.get(lname)
        if action is None:
            if not named or lname not in named:
                out += (name, _SEP, value, _CRLF)
                lines += 1
        elif action == _DROP:
            if lname == b"connection" and value.lower() not in _HARMLESS_TOKENS:
                tokens = _token_names(value) - _HARMLESS_TOKENS
                if tokens:
                    extra = tokens if extra is None else extra | tokens
        elif not trusted or (named and lname in named):
            continue  # RFC 7239 §8.1: an untrusted client's forwarding fields are not believed
        elif action < _XFF:
            seen |= action
            out += (name, _SEP, value, _CRLF)
            lines += 1
        elif action == _XFF:
            if value:
                xff.append(value)
        elif action == _FWD_JOIN:
            if value:
                fwd.append(value)
        elif rid is None and value:
            rid = value
    return lines, xff, fwd, rid, seen, extra


def backend_request_head(request: Request, client: ClientFacts, policy: ForwardPolicy,
                         request_id: bytes, *, trusted: bool | None = None,
                         ) -> tuple[bytes, bytes]:
    """The HTTP/1.1 request head to send to the backend, and the request id it carries.

    Our own fields follow the client's, in this order: Expect, X-Forwarded-For, -Proto,
    -Host, -Port, Forwarded, the request id, the client-certificate fields, the fields in
    ``request.added`` (rule tags), Connection and Upgrade (WebSocket), framing. They are
    written after the client's fields are filtered, so a client's Connection field naming one
    of them removes only the client's own copy.
    Raises :class:`ProtocolError` (400) if a value would break a line.
    """
    if trusted is None:  # callers that serve many requests for one client pass it in
        trusted = policy.trusts(client.address)
    host = request.host
    # RFC 9112 §3.2: an HTTP/1.1 request always has one Host, empty when there is no authority.
    out = [request.method, b" ", request.target, b" HTTP/1.1\r\nHost: ", host, _CRLF]
    actions = policy._actions_chunked if request.chunked else policy._actions
    lines, xff, fwd, rid, seen, extra = _request_fields(
        request.headers, actions, trusted, (), out)
    if extra is not None:  # Connection named a field we had copied: start again (rare)
        del out[6:]
        lines, xff, fwd, rid, seen, _ = _request_fields(
            request.headers, actions, trusted, extra, out)
    lines += 4  # request line, Host, X-Forwarded-For, the request id
    if request.expect_continue:  # RFC 9110 §10.1.1
        out.append(b"Expect: 100-continue\r\n")
        lines += 1
    if xff:  # RFC 7239 §5.2 (the same list discipline): append ourselves to the chain
        xff.append(client.node)
        out += (b"X-Forwarded-For: ", b", ".join(xff), _CRLF)
    else:
        out += (b"X-Forwarded-For: ", client.node, _CRLF)
    if not seen & _XF_PROTO:
        out.append(b"X-Forwarded-Proto: https\r\n")
        lines += 1
    if host and not seen & _XF_HOST:
        out += (b"X-Forwarded-Host: ", host, _CRLF)
        lines += 1
    if not seen & _XF_PORT:
        out += (b"X-Forwarded-Port: ", b"%d" % client.local_port, _CRLF)
        lines += 1
    if policy.forwarded:  # RFC 7239 §4, §5.4: the proxy appends its own element
        element = b"for=" + client.forwarded_for + b";proto=https"
        if host:
            element += b";host=" + _forwarded_host(host)
        fwd.append(element)
        out += (b"Forwarded: ", b", ".join(fwd), _CRLF)
        lines += 1
    if rid is None:
        rid = request_id
    out += (policy._rid_prefix, rid, _CRLF)
    if client.identity:
        out.append(client.identity)
        lines += client.identity_lines
    for name, value in request.added:
        out += (name, _SEP, value, _CRLF)
        lines += 1
    if request.websocket:  # RFC 6455 §4.1, RFC 9110 §7.8
        out.append(b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
        lines += 2
    if request.content_length is not None:  # RFC 9112 §6.2, §6.3: exactly one framing
        out += (b"Content-Length: ", b"%d" % request.content_length, _CRLF)
        lines += 1
    elif request.chunked:
        out.append(b"Transfer-Encoding: chunked\r\n")
        lines += 1
    out.append(_CRLF)
    return _check_head(b"".join(out), lines + 1, 400), rid


# ----------------------------------------------------------------------------- response side


@dataclass(frozen=True, slots=True)
class ResponsePolicy:
    """What offload adds to or removes from every response head."""

    hsts: bytes | None = None
    """The Strict-Transport-Security value to set (RFC 6797 §6.1), replacing the backend's."""
    server: bytes | None = None
    """A Server value to set instead of the backend's (RFC 9110 §10.2.4)."""
    strip_server: bool = False
    _drop: frozenset[bytes] = field(init=False, repr=False, compare=False)
    _drop_101: frozenset[bytes] = field(init=False, repr=False, compare=False)
    _drop_chunked: frozenset[bytes] = field(init=False, repr=False, compare=False)
    _tail: bytes = field(init=False, repr=False, compare=False)
    _tail_lines: int = field(init=False, repr=False, compare=False)

    @classmethod
    def from_config(cls, hsts: str | None, server_header: str | None) -> ResponsePolicy:
        """From a frontend's ``hsts`` and ``server_header``: None passes the backend's Server
        through, ``""`` removes it, any other text replaces it."""
        return cls(hsts=hsts.encode("latin-1") if hsts else None,
                   server=server_header.encode("latin-1") if server_header else None,
                   strip_server=server_header == "")

    def __post_init__(self) -> None:
        for value in (self.hsts, self.server):
            if value is not None and (not value.strip() or not _FIELD_VALUE.fullmatch(value)):
                raise ValueError(f"{value!r} is not a valid header value")
        if self.server is not None and self.strip_server:
            raise ValueError("server and strip_server cannot both be set")
        drop = set(_HOP_BY_HOP)
        tail = b""
        if self.hsts is not None:
            drop.add(b"strict-transport-security")
            tail += b"Strict-Transport-Security: " + self.hsts + _CRLF
        if self.server is not None or self.strip_server:
            drop.add(b"server")
        if self.server is not None:
            tail = b"Server: " + self.server + _CRLF + tail
        object.__setattr__(self, "_drop", frozenset(drop))
        object.__setattr__(self, "_drop_101", frozenset(drop - {b"upgrade"}))
        object.__setattr__(self, "_drop_chunked", frozenset(drop - {b"trailer"}))
        object.__setattr__(self, "_tail", tail)
        object.__setattr__(self, "_tail_lines", tail.count(b"\n"))


def _response_fields(headers: Headers, drop: frozenset[bytes], named: Collection[bytes],
                     out: list[bytes]) -> tuple[int, bytes | None, set[bytes] | None]:
    """Copy the fields that pass; return (lines, the backend's Content-Length value,
    the Connection tokens that call for a second pass)."""
    lines = 0
    length: bytes | None = None
    extra: set[bytes] | None = None
    for name, value in headers:
        lname = name.lower()
        if lname in drop:
            if lname == b"connection" and value.lower() not in _HARMLESS_RESPONSE_TOKENS:
                tokens = _token_names(value) - drop - {b"close"}
                if tokens:
                    extra = tokens if extra is None else extra | tokens
            elif lname == b"content-length" and length is None:
                length = value
        elif not named or lname not in named:
            out += (name, _SEP, value, _CRLF)
            lines += 1
    return lines, length, extra


def client_response_head(response: Response, *, framing: str, keep_alive: bool,
                         client_version: bytes, policy: ResponsePolicy) -> bytes:
    """The response head to send to the client, framed as the caller decided:

    ``length`` (Content-Length), ``chunked``, ``close`` (the body ends when the connection
    does, so the connection is always closed) or ``none`` (1xx, 204, 304, answers to HEAD).
    Connection, Server and Strict-Transport-Security are written on final responses only (and
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
    switching = status == 101  # RFC 9110 §15.2.2: Upgrade says what we switch to
    drop = (policy._drop_101 if switching else policy._drop_chunked if framing == "chunked"
            else policy._drop)
    out = [b"HTTP/1.1 %d " % status, response.reason, _CRLF]
    lines, length, extra = _response_fields(response.headers, drop, (), out)
    if extra is not None and (not switching or extra - {b"upgrade"}):  # rare: see module doc
        del out[3:]
        lines, length, extra = _response_fields(
            response.headers, drop, extra - {b"upgrade"} if switching else extra, out)
    if final:
        out.append(policy._tail)
        lines += policy._tail_lines
    if framing == "length":
        if response.content_length is None:
            raise ValueError("length framing needs response.content_length")
        out += (b"Content-Length: ", b"%d" % response.content_length, _CRLF)
        lines += 1
    elif framing == "chunked":
        out.append(b"Transfer-Encoding: chunked\r\n")
        lines += 1
    elif framing == "none" and final and status != 204:
        # RFC 9110 §8.6: for HEAD and 304 it describes the representation GET would carry.
        if response.content_length is not None:
            out += (b"Content-Length: ", b"%d" % response.content_length, _CRLF)
            lines += 1
        elif length is not None and length.isdigit():
            out += (b"Content-Length: ", length, _CRLF)
            lines += 1
    if switching:
        out.append(b"Connection: Upgrade\r\n")
        lines += 1
    elif final and not keep_alive:  # RFC 9112 §9.6
        out.append(b"Connection: close\r\n")
        lines += 1
    elif final and client_version == b"1.0":  # RFC 9112 §9.3: 1.0 persists only if told so
        out.append(b"Connection: keep-alive\r\n")
        lines += 1
    out.append(_CRLF)
    return _check_head(b"".join(out), lines + 2, 502)


# ----------------------------------------------------------------- offload's own responses

# RFC 9110 §15 reason phrases, and what to tell a person who reads the body.
_OWN_STATUSES: Mapping[int, tuple[str, str]] = MappingProxyType({
    400: ("Bad Request", "the request is not valid HTTP."),
    403: ("Forbidden", "this request is not allowed."),
    404: ("Not Found", "nothing is served at this address."),
    405: ("Method Not Allowed", "this method is not allowed here."),
    408: ("Request Timeout", "the request did not arrive in time."),
    413: ("Content Too Large", "the request body is larger than this server accepts."),
    414: ("URI Too Long", "the request target is longer than this server accepts."),
    417: ("Expectation Failed", "this server cannot meet the request's Expect header."),
    421: ("Misdirected Request", "this server does not serve the host that was asked for."),
    429: ("Too Many Requests", "too many requests; slow down and try again later."),
    431: ("Request Header Fields Too Large", "the request headers are larger than this server accepts."),
    501: ("Not Implemented", "this server does not support what the request asks for."),
    502: ("Bad Gateway", "the server behind this proxy did not answer properly; try again shortly."),
    503: ("Service Unavailable", "no server is available to answer; try again shortly."),
    504: ("Gateway Timeout", "the server behind this proxy did not answer in time; try again shortly."),
    505: ("HTTP Version Not Supported", "this server speaks HTTP/1.0 and HTTP/1.1 only."),
})
_MAX_DETAIL = 200
_OWN_FIELDS = _HOP_BY_HOP | {b"content-type", b"cache-control"}  # error_response writes these


def _status_text(status: int) -> tuple[str, str]:
    known = _OWN_STATUSES.get(status)
    if known is not None:
        return known
    if not 400 <= status <= 599:
        raise ValueError(f"{status} is not an error status")
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Client Error" if status < 500 else "Server Error"
    return reason, "the request could not be answered."


def error_response(status: int, *, detail: str = "", keep_alive: bool = False,
                   extra_headers: Iterable[tuple[bytes, bytes]] = (),
                   policy: ResponsePolicy | None = None) -> bytes:
    """A complete plain-text error response from offload itself.

    The body names the status and what it means to a person; ``detail``, a short sentence from
    offload's own code, becomes a second line (control characters replaced, length capped).
    Nothing about the backend or the failure's internals is shown. With ``keep_alive`` no
    Connection field is sent (HTTP/1.1 persistence, RFC 9112 §9.3); otherwise ``close``.
    """
    reason, message = _status_text(status)
    body = f"{status} {reason}: {message}\n"
    detail = "".join(c if c.isprintable() else " " for c in detail[:_MAX_DETAIL]).strip()
    if detail:
        body += detail + "\n"
    payload = body.encode("utf-8")
    out = [b"HTTP/1.1 %d %s\r\n" % (status, reason.encode("ascii")),
           b"Content-Type: text/plain; charset=utf-8\r\n",
           b"Content-Length: %d\r\n" % len(payload),
           b"Cache-Control: no-store\r\n"]  # RFC 9111 §5.2.2.5: an error is not worth keeping
    if policy is not None:
        out.append(policy._tail)
    for name, value in extra_headers:
        if (not _TCHAR.fullmatch(name) or not _FIELD_VALUE.fullmatch(value)
                or name.lower() in _OWN_FIELDS):
            raise ValueError(f"invalid extra header {name!r}: {value!r}")
        out += (name, _SEP, value, _CRLF)
    if not keep_alive:
        out.append(b"Connection: close\r\n")
    out += (_CRLF, payload)
    return b"".join(out)


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
