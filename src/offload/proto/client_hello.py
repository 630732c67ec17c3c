"""A strict, cheap reader of the TLS ClientHello, run on the client's first bytes.

offload runs TLS itself on memory BIOs, so it sees what the client sent before OpenSSL does.
From the ClientHello it needs the offered ALPN protocols (an ACME TLS-ALPN-01 validator offers
exactly ``acme-tls/1``, RFC 8737 §3), the SNI host name, whether the client offers to resume a
session (a handshake rate limit refuses full handshakes before OpenSSL signs anything), and for
logs and metrics the offered versions and the number of cipher suites. OpenSSL still parses
and validates the whole hello afterwards; this reader only has to be right about what it
returns, never be fooled into reading past a vector, never raise anything but
:class:`ClientHelloError`, and stay cheap, because it runs on every new connection, possibly
once per read until the hello is complete.

Theory of operation: the input is the byte stream from the client so far. The records at its
start are walked (RFC 8446 §5.1); each must be a non-empty handshake record, and their payloads
are concatenated until they hold the whole handshake message (a message may span several
records). The message must end exactly where a record ends (RFC 8446 §5.1: a message before a
key change is aligned with a record boundary), so trailing bytes can only be later records,
which are ignored. Whatever is wrong is reported as soon as the bytes showing it have arrived;
anything short of the whole message is ``None``. Then the ClientHello body (RFC 8446 §4.1.2,
RFC 5246 §7.4.1.2) is read with explicit bounds on every vector: each offset is checked against
the end of the vector that contains it, never only against the end of the buffer.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from offload.errors import ProtocolError

MAX_RECORD_LENGTH = 1 << 14
"""TLSPlaintext.length limit (RFC 8446 §5.1, RFC 5246 §6.2.1); OpenSSL enforces it too."""
MAX_CLIENT_HELLO = 1 << 16
"""Our own cap on the ClientHello body; real ones are under 2 KiB (a post-quantum key share)."""
MAX_RECORDS = 256
"""Our own cap on the records one ClientHello may span: callers may re-run the parser on each
read, so its cost must stay bounded even when a client sends one-byte records."""

_HANDSHAKE = 22  # ContentType.handshake, RFC 8446 §5.1
_CLIENT_HELLO = 1  # HandshakeType.client_hello, RFC 8446 §4
_EXT_SERVER_NAME = 0  # RFC 6066 §3
_EXT_ALPN = 16  # RFC 7301 §3.1
_EXT_SESSION_TICKET = 35  # RFC 5077 §3.2
_EXT_PRE_SHARED_KEY = 41  # RFC 8446 §4.2.11
_EXT_SUPPORTED_VERSIONS = 43  # RFC 8446 §4.2.1
_TLS13 = 0x0304
_MAX_HOST_NAME = 255  # a DNS name; OpenSSL's TLSEXT_MAXLEN_host_name
_HOST_NAME_BYTES = bytes(range(0x21, 0x7F))  # printable ASCII without space
_EXTENSION_HEADER = struct.Struct("!HH")  # extension_type, extension_data length


class ClientHelloError(ProtocolError):
    """The client's first bytes are not a TLS handshake record carrying a valid ClientHello."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=400, reason="bad_client_hello")


@dataclass(frozen=True, slots=True, init=False)
class ClientHello:
    """What offload reads from a ClientHello before handing the bytes to OpenSSL (one per
    handshake: its ``__init__`` is spelled out, as a dataclass's generated one would run
    interpreted)."""

    server_name: str | None
    """The host_name of the server_name extension (RFC 6066 §3), exactly as sent (not
    lower-cased); None when the extension is absent."""
    alpn: tuple[str, ...]
    """The ALPN protocol_name_list in the client's order (RFC 7301 §3.1), latin-1 decoded."""
    versions: tuple[int, ...]
    """supported_versions (RFC 8446 §4.2.1) without GREASE values (RFC 8701 §2); when the
    extension is absent, ``(legacy_version,)``."""
    cipher_suites: int
    """How many cipher suites were offered (signalling and GREASE values included)."""
    legacy_version: int
    offers_resumption: bool = False
    """Whether the client offers a session to resume: a pre_shared_key (RFC 8446 §4.2.11), a
    non-empty SessionTicket (RFC 5077 §3.2), or a session id when TLS 1.3 is not offered (a
    TLS 1.2 session-id resumption, RFC 5246 §7.4.1.2; a TLS 1.3 client sends a random id for
    middlebox compatibility, RFC 8446 §D.4, and resumes with a pre_shared_key instead). An
    offer is not a promise: the server may still fall back to a full handshake."""

    def __init__(self, server_name: str | None, alpn: tuple[str, ...],  # noqa: PLR0917
                 versions: tuple[int, ...], cipher_suites: int, legacy_version: int,
                 offers_resumption: bool = False) -> None:  # a dataclass's positional order
        setter = object.__setattr__
        setter(self, "server_name", server_name)
        setter(self, "alpn", alpn)
        setter(self, "versions", versions)
        setter(self, "cipher_suites", cipher_suites)
        setter(self, "legacy_version", legacy_version)
        setter(self, "offers_resumption", offers_resumption)


def _u16(data: bytes, pos: int) -> int:
    return (data[pos] << 8) | data[pos + 1]


def _is_grease(value: int) -> bool:
    """RFC 8701 §2: 0x0A0A, 0x1A1A, ... 0xFAFA."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


def _check_record_header(data: bytes, pos: int) -> None:
    """Check the bytes of the record header at ``pos`` that have arrived (RFC 8446 §5.1)."""
    available = len(data) - pos
    if available <= 0:
        return
    kind = data[pos]
    if kind != _HANDSHAKE:
        if pos == 0 and kind & 0x80:
            raise ClientHelloError("SSLv2-style ClientHello is not supported")
        if pos == 0:
            raise ClientHelloError(f"not a TLS handshake record (content type {kind})")
        raise ClientHelloError(f"record of content type {kind} inside the ClientHello")
    if available >= 2 and data[pos + 1] != 3:
        raise ClientHelloError("bad record version")
    if available >= 3 and not 1 <= data[pos + 2] <= 4:
        raise ClientHelloError("bad record version")


def _handshake_body(data: bytes) -> bytes | None:
    """The ClientHello body (after its 4-byte handshake header), reassembled from the records
    at the start of ``data``; None until every record carrying it has arrived."""
    size = len(data)
    pos = 0
    parts: list[bytes] = []
    got = 0  # payload bytes that have arrived
    declared = 0  # payload bytes the record headers announce
    need = -1  # 4 + the handshake length, once the handshake header has arrived
    while True:
        _check_record_header(data, pos)
        if pos + 5 > size:
            return None
        length = _u16(data, pos + 3)
        if length == 0:
            raise ClientHelloError("empty handshake record")  # RFC 8446 §5.1
        if length > MAX_RECORD_LENGTH:
            raise ClientHelloError(f"record length {length} exceeds 2^14")
        if len(parts) == MAX_RECORDS:
            raise ClientHelloError(f"ClientHello spans more than {MAX_RECORDS} records")
        start, end = pos + 5, pos + 5 + length
        chunk = data[start:end]
        parts.append(chunk)
        got += len(chunk)
        declared += length
        if need < 0 and got:  # the handshake header, as far as it has arrived (RFC 8446 §4)
            head = parts[0] if len(parts[0]) >= 4 else b"".join(parts)
            if head[0] != _CLIENT_HELLO:
                raise ClientHelloError(f"handshake message type {head[0]} is not client_hello")
            if len(head) >= 4:
                body_length = (head[1] << 16) | _u16(head, 2)
                if body_length > MAX_CLIENT_HELLO:
                    raise ClientHelloError(f"ClientHello of {body_length} bytes is too large")
                need = 4 + body_length
        if need >= 0 and declared > need:
            # RFC 8446 §5.1: the ClientHello must end on a record boundary.
            raise ClientHelloError("data after the ClientHello in its record")
        if end > size:
            return None
        if declared == need:
            message = parts[0] if len(parts) == 1 else b"".join(parts)
            return message[4:]
        pos = end


def _server_name(data: bytes, pos: int, stop: int) -> str:
    """RFC 6066 §3 ServerNameList. Like OpenSSL, exactly one entry, of type host_name: it is
    the only type defined, and at most one name per type is allowed."""
    if stop - pos < 5 or _u16(data, pos) != stop - pos - 2:
        raise ClientHelloError("bad server_name list length")
    if data[pos + 2] != 0:
        raise ClientHelloError(f"server_name of unknown type {data[pos + 2]}")
    length = _u16(data, pos + 3)
    if length == 0 or length != stop - pos - 5:
        raise ClientHelloError("bad host_name length")
    if length > _MAX_HOST_NAME:
        raise ClientHelloError("host_name longer than 255 bytes")
    name = data[pos + 5 : stop]
    if name.translate(None, _HOST_NAME_BYTES):
        raise ClientHelloError("host_name is not printable ASCII")
    return name.decode("ascii")


def _alpn(data: bytes, pos: int, stop: int) -> tuple[str, ...]:
    """RFC 7301 §3.1: ProtocolName protocol_name_list<2..2^16-1>, each name <1..2^8-1>."""
    if stop - pos < 4 or _u16(data, pos) != stop - pos - 2:
        raise ClientHelloError("bad ALPN list length")
    names = []
    pos += 2
    while pos < stop:
        length = data[pos]
        pos += 1
        if length == 0 or pos + length > stop:
            raise ClientHelloError("bad ALPN protocol name length")
        names.append(data[pos : pos + length].decode("latin-1"))
        pos += length
    return tuple(names)


def _versions(data: bytes, pos: int, stop: int) -> tuple[int, ...]:
    """RFC 8446 §4.2.1: ProtocolVersion versions<2..254> in a ClientHello."""
    length = stop - pos - 1
    if length < 2 or length & 1 or data[pos] != length:
        raise ClientHelloError("bad supported_versions length")
    versions = []
    for at in range(pos + 1, stop, 2):
        value = (data[at] << 8) | data[at + 1]
        if not _is_grease(value):
            versions.append(value)
    return tuple(versions)


def _parse_body(body: bytes) -> ClientHello:
    """RFC 8446 §4.1.2 (and RFC 5246 §7.4.1.2, where extensions may be absent)."""
    end = len(body)
    if end < 35:
        raise ClientHelloError("ClientHello too short")
    legacy_version = _u16(body, 0)
    pos = 34  # legacy_version, random
    session_id = body[pos]
    if session_id > 32:
        raise ClientHelloError("legacy_session_id longer than 32 bytes")
    pos += 1 + session_id
    if pos + 2 > end:
        raise ClientHelloError("ClientHello ends before its cipher_suites")
    suites = _u16(body, pos)
    if suites < 2 or suites & 1:
        raise ClientHelloError("bad cipher_suites length")
    pos += 2 + suites
    if pos + 1 > end:
        raise ClientHelloError("ClientHello ends before its legacy_compression_methods")
    compression = body[pos]
    if compression == 0:
        raise ClientHelloError("no compression methods")
    pos += 1 + compression
    if pos > end:
        raise ClientHelloError("ClientHello ends within legacy_compression_methods")
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = (legacy_version,)
    if pos == end:  # no extensions (RFC 5246 §7.4.1.2)
        return ClientHello(server_name, alpn, versions, suites // 2, legacy_version,
                           session_id > 0 and _TLS13 not in versions)
    if pos + 2 > end or _u16(body, pos) != end - pos - 2:
        raise ClientHelloError("extensions do not fill the ClientHello exactly")
    pos += 2
    seen: set[int] = set()
    ticket = False
    header = _EXTENSION_HEADER.unpack_from
    while pos < end:
        if pos + 4 > end:
            raise ClientHelloError("ClientHello ends within an extension header")
        kind, length = header(body, pos)
        pos += 4
        stop = pos + length
        if stop > end:
            raise ClientHelloError(f"extension {kind} runs past the ClientHello")
        if kind in seen:
            raise ClientHelloError(f"duplicate extension {kind}")  # RFC 8446 §4.2
        seen.add(kind)
        if kind == _EXT_SERVER_NAME:
            server_name = _server_name(body, pos, stop)
        elif kind == _EXT_ALPN:
            alpn = _alpn(body, pos, stop)
        elif kind == _EXT_SUPPORTED_VERSIONS:
            versions = _versions(body, pos, stop)
        elif kind == _EXT_SESSION_TICKET:
            ticket = length > 0
        elif kind == _EXT_PRE_SHARED_KEY and stop != end:
            raise ClientHelloError("pre_shared_key is not the last extension")  # RFC 8446 §4.2.11
        pos = stop
    resumes = (ticket or _EXT_PRE_SHARED_KEY in seen
               or (session_id > 0 and _TLS13 not in versions))
    return ClientHello(server_name, alpn, versions, suites // 2, legacy_version, resumes)


def client_hello_body(data: bytes | bytearray | memoryview) -> bytes | None:
    """The ClientHello message's body, reassembled from the records at the start of what the
    client has sent so far (None while more bytes are needed), without reading it: what a
    fingerprint keeps. Raises :class:`ClientHelloError` when the records are broken."""
    return _handshake_body(data if isinstance(data, bytes) else bytes(data))


def parse_client_hello_body(body: bytes) -> ClientHello:
    """Read a body from :func:`client_hello_body`; raises :class:`ClientHelloError`."""
    return _parse_body(body)


def parse_client_hello(data: bytes | bytearray | memoryview) -> ClientHello | None:
    """Read the ClientHello from the start of what the client has sent so far.

    Returns None while more bytes are needed; bytes after the records that carry the
    ClientHello are ignored. Raises :class:`ClientHelloError`, and nothing else, when the
    bytes are not TLS handshake records carrying one valid ClientHello.
    """
    raw = data if isinstance(data, bytes) else bytes(data)
    body = _handshake_body(raw)
    return None if body is None else _parse_body(body)


@dataclass(frozen=True, slots=True)
class ServedProtocols:
    """The ALPN protocols a frontend serves, for refusing clients that offer only others.

    RFC 7301 §3.2: a server that supports none of the client's protocols answers with a fatal
    ``no_application_protocol`` alert (nginx does; Python's ``ssl`` cannot, it ignores the
    extension instead). Deciding needs the ClientHello, but parsing one costs microseconds per
    connection, so :meth:`surely_offered` looks first for a served name, length byte included,
    in the raw bytes: real clients offer what the server serves, and then no parse is needed.
    Those bytes appearing elsewhere in a ClientHello only skip the refusal (the handshake goes
    on without ALPN, as before); a name split across reads or records is found by the parse.
    """

    names: frozenset[str]
    wire: tuple[bytes, ...]
    """Each name as it appears in a protocol_name_list: a length byte, then the name."""

    @classmethod
    def of(cls, names: tuple[str, ...]) -> ServedProtocols | None:
        """For a frontend serving ``names`` (None when there are none: nothing is refused)."""
        if not names:
            return None
        return cls(frozenset(names),
                   tuple(bytes((len(name),)) + name.encode("latin-1") for name in names))

    def surely_offered(self, data: bytes) -> bool:
        """Whether a served name appears in the client's first bytes (no parse needed)."""
        for name in self.wire:  # noqa: SIM110 - a plain loop: any() over a generator costs 1 µs
            if name in data:
                return True
        return False

    def refuses(self, hello: ClientHello) -> bool:
        """Whether ``hello`` offers ALPN protocols, none of which is served."""
        return bool(hello.alpn) and self.names.isdisjoint(hello.alpn)


_ALERT = 21  # ContentType.alert, RFC 8446 §5.1
_FATAL = 2  # AlertLevel.fatal
NO_APPLICATION_PROTOCOL = 120  # AlertDescription, RFC 7301 §3.2


def fatal_alert(description: int, hello: ClientHello | None = None) -> bytes:
    """A plaintext fatal alert record, sent instead of a ServerHello (RFC 8446 §6, RFC 5246
    §7.2). Its record version is TLS 1.2's (RFC 8446 §5.1), or the client's own when it
    offered only older versions."""
    version = 0x0303 if hello is None else max(0x0301, min(hello.legacy_version, 0x0303))
    return struct.pack("!BHHBB", _ALERT, version, 2, _FATAL, description)


def peek_alpn_and_sni(data: bytes | bytearray | memoryview) -> tuple[str | None, tuple[str, ...]] | None:
    """``(server_name, alpn)`` from the ClientHello, None while incomplete, ``(None, ())`` when
    the bytes are not a valid ClientHello (OpenSSL will then refuse the handshake itself)."""
    try:
        hello = parse_client_hello(data)
    except ClientHelloError:
        return None, ()
    return None if hello is None else (hello.server_name, hello.alpn)
