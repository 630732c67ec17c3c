"""What offload forwards between client and backend, whatever HTTP version either side speaks
(sans-IO): the fields of the request sent to the backend, the fields of the response sent to
the client, and offload's own small responses. Serialising them is another module's job
(:mod:`offload.proto.http1_write` for HTTP/1.1; HTTP/2 encodes the same lists).

Request side, :func:`request_fields`: hop-by-hop fields are removed (RFC 9110 §7.6.1: the
Connection field, every field it names, Keep-Alive, Proxy-Connection, TE, Transfer-Encoding,
Upgrade, HTTP2-Settings; Content-Length, Host and Expect are written by the serialiser from what
offload decided), the forwarding fields (X-Forwarded-*, Forwarded, the request id) are believed
only from a trusted proxy, and offload's own fields are added *after* that filtering, so no
client field can remove or forge them. Response side, :func:`response_fields`: the same
removal, and the policy's Strict-Transport-Security and Server.

Trailer is not hop-by-hop (RFC 9110 §6.6.2) but announces trailers, so it goes where they go:
with a chunked body, whose trailers are forwarded, and nowhere else.

Theory of operation: one pass over the header list; each lower-cased name is looked up in a
table precomputed by the policy (drop, pass through, or a forwarding field), everything else is
kept in its order and spelling (the tuples are passed on, not copied). Fields named by a
Connection header are hop-by-hop too; since Connection may come after the fields it names, a
second pass runs in the rare case that it names a field that is not dropped anyway.

Preconditions: heads come from offload's checked parsers (names are tokens, values have no
control characters other than HTAB).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from ipaddress import IPv4Network, IPv6Network
from types import MappingProxyType

from offload.proto.fingerprint import Fingerprints
from offload.proto.http_types import Headers, Request, Response

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade",
    b"http2-settings", b"transfer-encoding", b"content-length",
})
"""Fields that describe one connection, not the message (RFC 9110 §7.6.1), plus the framing
fields the serialiser writes itself (RFC 9112 §6)."""
CLIENT_IDENTITY = frozenset({
    b"client-cert", b"client-cert-chain", b"x-ssl-client-verify", b"x-ssl-client-dn",
    b"x-ssl-client-san", b"x-ssl-client-fingerprint"})
"""The client-certificate identity: only offload may say who the client is."""
# Host is written from the checked authority (RFC 9112 §3.2); Expect only when we mean it.
REQUEST_DROP = HOP_BY_HOP | {b"host", b"expect"} | CLIENT_IDENTITY
_HARMLESS_TOKENS = REQUEST_DROP | {b"close"}
"""Connection tokens that never need a second pass: options, or names dropped anyway."""
_HARMLESS_RESPONSE_TOKENS = HOP_BY_HOP | {b"close"}

# Actions for request fields (bit values so that the pass-through kinds combine into `seen`).
_DROP = 0
_XF_PROTO, _XF_HOST, _XF_PORT, _FWD_PASS = 1, 2, 4, 8  # trusted: pass through, remember
_XFF, _FWD_JOIN, _RID = 16, 32, 64  # trusted: collect, write ours after them

TCHAR = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2
_TCHAR_BYTES = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")  # RFC 9110 §5.5, without CR/LF/NUL/CTL
_XFP_HTTPS = (b"X-Forwarded-Proto", b"https")
_EXPECT_CONTINUE = (b"Expect", b"100-continue")


def token_names(value: bytes) -> set[bytes]:
    """The lower-cased names in one Connection field value (RFC 9110 §7.6.1)."""
    return {token for part in value.split(b",") if (token := part.strip().lower())}


# ------------------------------------------------------------------------------ request side


@dataclass(frozen=True, slots=True, init=False)
class ClientFacts:
    """Who is on the other end of the client connection (made once per connection: its
    ``__init__`` is spelled out, as a dataclass's generated one would run interpreted)."""

    address: str
    """The client IP (IPv6 without brackets); ``""`` when unknown."""
    port: int
    local_port: int
    """The port offload accepted the connection on (for X-Forwarded-Port)."""
    identity: Headers = field(default_factory=list)
    """offload's fields naming the client: the verified client certificate (frontends with
    client_auth) and its TLS fingerprints (frontends with fingerprints)."""
    fingerprints: Fingerprints | None = field(default=None, compare=False)
    """The handshake's JA4/JA3, for the rules and limits (computed when first asked)."""
    node: bytes = field(init=False, repr=False, compare=False)
    """The address as forwarded: IPv4-mapped IPv6 shown as IPv4, no zone id, else ``unknown``."""
    forwarded_for: bytes = field(init=False, repr=False, compare=False)
    """The RFC 7239 §6 ``for=`` value: IPv6 bracketed and quoted."""
    local_port_bytes: bytes = field(init=False, repr=False, compare=False)

    def __init__(self, address: str, port: int, local_port: int,
                 identity: Headers | None = None, fingerprints: Fingerprints | None = None
                 ) -> None:
        setter = object.__setattr__
        setter(self, "address", address)
        setter(self, "port", port)
        setter(self, "local_port", local_port)
        setter(self, "identity", [] if identity is None else identity)
        setter(self, "fingerprints", fingerprints)
        address = address.partition("%")[0]  # a zone id means nothing past this host
        if address[:7].lower() == "::ffff:" and "." in address:  # RFC 4291 §2.5.5.2
            address = address[7:]
        node = address.encode("ascii") if address else b"unknown"  # RFC 7239 §6.2
        setter(self, "node", node)
        setter(self, "forwarded_for", b'"[' + node + b']"' if node.find(b":") >= 0 else node)
        setter(self, "local_port_bytes", b"%d" % local_port)


@dataclass(frozen=True, slots=True)
class ForwardPolicy:
    """How much to believe the client's forwarding fields, and which ones to send."""

    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    forwarded: bool = False
    """Also send the standard Forwarded field (RFC 7239)."""
    request_id_header: bytes = b"X-Request-ID"
    own_fields: frozenset[bytes] = frozenset()
    """More fields only offload may send (lower-case), dropped from every client request: the
    fingerprint headers."""
    _v4: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)
    _v6: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)
    _actions: Mapping[bytes, int] = field(init=False, repr=False, compare=False)
    _actions_chunked: Mapping[bytes, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rid = self.request_id_header.lower()
        forwarding = {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                      b"x-forwarded-port", b"forwarded"}
        if not TCHAR.fullmatch(self.request_id_header) or rid in REQUEST_DROP | forwarding:
            raise ValueError(f"{self.request_id_header!r} cannot be the request id header")
        networks = tuple(self.trusted_proxies)
        object.__setattr__(self, "trusted_proxies", networks)
        object.__setattr__(self, "_v4", tuple(
            (int(n.network_address), int(n.netmask)) for n in networks if n.version == 4))
        object.__setattr__(self, "_v6", tuple(
            (int(n.network_address), int(n.netmask)) for n in networks if n.version == 6))
        if any(name in forwarding or name == rid or not TCHAR.fullmatch(name)
               for name in self.own_fields):
            raise ValueError(f"{sorted(self.own_fields)!r} cannot be offload's own fields")
        actions = dict.fromkeys(REQUEST_DROP | self.own_fields, _DROP)
        actions |= {b"x-forwarded-for": _XFF, b"x-forwarded-proto": _XF_PROTO,
                    b"x-forwarded-host": _XF_HOST, b"x-forwarded-port": _XF_PORT,
                    b"forwarded": _FWD_JOIN if self.forwarded else _FWD_PASS, rid: _RID}
        object.__setattr__(self, "_actions", MappingProxyType(dict(actions)))
        del actions[b"trailer"]  # a chunked body carries its trailers on: announce them too
        object.__setattr__(self, "_actions_chunked", MappingProxyType(actions))

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
                    named: Collection[bytes], out: Headers,
                    ) -> tuple[list[bytes], list[bytes], bytes | None, int, set[bytes] | None]:
    """Copy the fields that pass; return (XFF values, Forwarded values, request id, the
    pass-through kinds seen, and the Connection tokens that call for a second pass)."""
    xff: list[bytes] = []
    fwd: list[bytes] = []
    rid: bytes | None = None
    seen = 0
    extra: set[bytes] | None = None
    for pair in headers:
        name, value = pair
        lname = name.lower()
        action = actions.get(lname)
        if action is None:
            if not named or lname not in named:
                out.append(pair)
        elif action == _DROP:
            if lname == b"connection" and value.lower() not in _HARMLESS_TOKENS:
                tokens = token_names(value) - _HARMLESS_TOKENS
                if tokens:
                    extra = tokens if extra is None else extra | tokens
        elif not trusted or (named and lname in named):
            continue  # RFC 7239 §8.1: an untrusted client's forwarding fields are not believed
        elif action < _XFF:
            seen |= action
            out.append(pair)
        elif action == _XFF:
            if value:
                xff.append(value)
        elif action == _FWD_JOIN:
            if value:
                fwd.append(value)
        elif rid is None and value:
            rid = value
    return xff, fwd, rid, seen, extra


def request_fields(request: Request, client: ClientFacts, policy: ForwardPolicy,
                   request_id: bytes, *, trusted: bool) -> tuple[Headers, bytes]:
    """The fields of the request to send to the backend (without Host, framing and the
    WebSocket upgrade, which the serialiser writes), and the request id they carry.

    Our own fields follow the client's, in this order: Expect, X-Forwarded-For, -Proto,
    -Host, -Port, Forwarded, the request id, the client-certificate fields, the fields in
    ``request.added`` (rule tags).
    """
    actions = policy._actions_chunked if request.chunked else policy._actions
    out: Headers = []
    xff, fwd, rid, seen, extra = _request_fields(request.headers, actions, trusted, (), out)
    if extra is not None:  # Connection named a field we had copied: start again (rare)
        out.clear()
        xff, fwd, rid, seen, _ = _request_fields(request.headers, actions, trusted, extra, out)
    host = request.host
    if request.expect_continue:  # RFC 9110 §10.1.1
        out.append(_EXPECT_CONTINUE)
    if xff:  # RFC 7239 §5.2 (the same list discipline): append ourselves to the chain
        xff.append(client.node)
        out.append((b"X-Forwarded-For", b", ".join(xff)))
    else:
        out.append((b"X-Forwarded-For", client.node))
    if not seen & _XF_PROTO:
        out.append(_XFP_HTTPS)
    if host and not seen & _XF_HOST:
        out.append((b"X-Forwarded-Host", host))
    if not seen & _XF_PORT:
        out.append((b"X-Forwarded-Port", client.local_port_bytes))
    if policy.forwarded:  # RFC 7239 §4, §5.4: the proxy appends its own element
        element = b"for=" + client.forwarded_for + b";proto=https"
        if host:
            element += b";host=" + _forwarded_host(host)
        fwd.append(element)
        out.append((b"Forwarded", b", ".join(fwd)))
    if rid is None:
        rid = request_id
    out.append((policy.request_id_header, rid))
    if client.identity:
        out.extend(client.identity)
    if request.added:
        out.extend(request.added)
    return out, rid


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
    tail: tuple[tuple[bytes, bytes], ...] = field(init=False, repr=False, compare=False)
    """The fields the policy adds to final responses."""

    @classmethod
    def from_config(cls, hsts: str | None, server_header: str | None) -> ResponsePolicy:
        """From a frontend's ``hsts`` and ``server_header``: None passes the backend's Server
        through, ``""`` removes it, any other text replaces it."""
        return cls(hsts=hsts.encode("latin-1") if hsts else None,
                   server=server_header.encode("latin-1") if server_header else None,
                   strip_server=server_header == "")

    def __post_init__(self) -> None:
        for value in (self.hsts, self.server):
            if value is not None and (not value.strip() or not FIELD_VALUE.fullmatch(value)):
                raise ValueError(f"{value!r} is not a valid header value")
        if self.server is not None and self.strip_server:
            raise ValueError("server and strip_server cannot both be set")
        drop = set(HOP_BY_HOP)
        tail: list[tuple[bytes, bytes]] = []
        if self.server is not None:
            tail.append((b"Server", self.server))
        if self.hsts is not None:
            drop.add(b"strict-transport-security")
            tail.append((b"Strict-Transport-Security", self.hsts))
        if self.server is not None or self.strip_server:
            drop.add(b"server")
        object.__setattr__(self, "_drop", frozenset(drop))
        object.__setattr__(self, "_drop_101", frozenset(drop - {b"upgrade"}))
        object.__setattr__(self, "_drop_chunked", frozenset(drop - {b"trailer"}))
        object.__setattr__(self, "tail", tuple(tail))


def _response_fields(headers: Headers, drop: frozenset[bytes], named: Collection[bytes],
                     out: Headers) -> tuple[bytes | None, set[bytes] | None]:
    """Copy the fields that pass; return (the backend's Content-Length value, the Connection
    tokens that call for a second pass)."""
    length: bytes | None = None
    extra: set[bytes] | None = None
    for pair in headers:
        name, value = pair
        lname = name.lower()
        if lname in drop:
            if lname == b"connection" and value.lower() not in _HARMLESS_RESPONSE_TOKENS:
                tokens = token_names(value) - drop - {b"close"}
                if tokens:
                    extra = tokens if extra is None else extra | tokens
            elif lname == b"content-length" and length is None:
                length = value
        elif not named or lname not in named:
            out.append(pair)
    return length, extra


def response_fields(response: Response, policy: ResponsePolicy, *, chunked: bool = False,
                    ) -> tuple[Headers, bytes | None]:
    """The fields of ``response`` to send to the client (without framing and Connection, which
    the serialiser writes), and the backend's Content-Length value (for a body-less answer,
    which still describes the representation). ``chunked``: the body goes out chunked, so
    its trailers, and the Trailer field announcing them, go on. On a 101, ``Upgrade`` stays.
    The policy's fields are added to final responses only."""
    status = response.status
    switching = status == 101  # RFC 9110 §15.2.2: Upgrade says what we switch to
    drop = policy._drop_101 if switching else policy._drop_chunked if chunked else policy._drop
    out: Headers = []
    length, extra = _response_fields(response.headers, drop, (), out)
    if extra is not None and (not switching or extra - {b"upgrade"}):  # rare: see module doc
        out.clear()
        length, extra = _response_fields(
            response.headers, drop, extra - {b"upgrade"} if switching else extra, out)
    if status >= 200 and policy.tail:
        out.extend(policy.tail)
    return out, length


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
    505: ("HTTP Version Not Supported", "this server speaks HTTP/1.0, HTTP/1.1 and HTTP/2 only."),
})
_MAX_DETAIL = 200
OWN_FIELDS = HOP_BY_HOP | {b"content-type", b"cache-control"}
"""Fields an own response writes itself: extra fields may not name them."""
_OWN_TYPE = (b"Content-Type", b"text/plain; charset=utf-8")
_NO_STORE = (b"Cache-Control", b"no-store")  # RFC 9111 §5.2.2.5: an error is not worth keeping


def status_text(status: int) -> tuple[str, str]:
    """The reason phrase of an error ``status`` and a sentence saying what it means."""
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


@dataclass(frozen=True, slots=True)
class OwnResponse:
    """A complete small response from offload itself, before serialisation."""

    status: int
    reason: bytes
    fields: Headers
    """Content-Type, Cache-Control, the policy's fields and any extra ones (no framing)."""
    body: bytes


def own_response(status: int, *, detail: str = "",
                 extra_headers: Iterable[tuple[bytes, bytes]] = (),
                 policy: ResponsePolicy | None = None) -> OwnResponse:
    """Offload's own plain-text error response: the body names the status and what it means to
    a person; ``detail``, a short sentence from offload's own code, becomes a second line
    (control characters replaced, length capped). Nothing about the backend or the failure's
    internals is shown."""
    reason, message = status_text(status)
    body = f"{status} {reason}: {message}\n"
    detail = "".join(c if c.isprintable() else " " for c in detail[:_MAX_DETAIL]).strip()
    if detail:
        body += detail + "\n"
    fields: Headers = [_OWN_TYPE, _NO_STORE]
    if policy is not None:
        fields.extend(policy.tail)
    for name, value in extra_headers:
        if (not TCHAR.fullmatch(name) or not FIELD_VALUE.fullmatch(value)
                or name.lower() in OWN_FIELDS):
            raise ValueError(f"invalid extra header {name!r}: {value!r}")
        fields.append((name, value))
    return OwnResponse(status, reason.encode("ascii"), fields, body.encode("utf-8"))
