"""TLS client fingerprints of a ClientHello: JA4 (FoxIO) and JA3 (Salesforce), sans-IO.

Operators block bots and scanners that rotate their IP addresses by the shape of their TLS
handshake, which a tool keeps however many addresses it has. offload already holds each
ClientHello before OpenSSL reads it (:mod:`offload.proto.client_hello`); this module turns its
body into the two fingerprints in use:

JA4 (FoxIO, ``technical_details/JA4.md``), ``a_b_c``: ``a`` is ``t`` (TLS over TCP), the
highest version offered (supported_versions, else the legacy version: ``13``, ``12``...,
``00`` when unknown), ``d`` with an SNI or ``i`` without, the numbers of cipher suites and of
extensions (two digits, at most 99), and the first and last characters of the first ALPN
protocol (``00`` without; the first and last hex digits of its bytes when the first or last
byte is not an ASCII letter or digit); ``b`` is the first 12 hex digits of the SHA-256 of the
cipher suites, sorted, as 4-digit lower-case hex joined by commas; ``c`` the same of the
extensions, sorted, without SNI and ALPN (already in ``a``), then ``_`` and the
signature_algorithms in the client's order (no ``_`` when there are none). An empty list
hashes to ``000000000000``. GREASE values (RFC 8701) are ignored everywhere.

JA3 (Salesforce): the MD5 of ``version,ciphers,extensions,groups,point_formats``, each a
``-``-joined list of decimal values in the client's order, GREASE removed; ``version`` is the
ClientHello's legacy_version.

Theory of operation: the stream keeps the raw ClientHello body (a few hundred bytes to 2 KiB)
in a :class:`Fingerprints`; nothing is parsed or hashed until someone asks (the access log, a
rule, a limit, the header to the backend), and then JA4 is computed, and JA3 with it when the
frontend uses it (a ``ja3`` rule or header), and the body is let go. The body is read with
explicit bounds on every vector; anything malformed raises :class:`ClientHelloError` (and
gives no fingerprint), never anything else.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from types import MappingProxyType

from offload.proto.client_hello import ClientHelloError

_SERVER_NAME = 0x0000
_SUPPORTED_GROUPS = 0x000A
_EC_POINT_FORMATS = 0x000B
_SIGNATURE_ALGORITHMS = 0x000D
_ALPN = 0x0010
_SUPPORTED_VERSIONS = 0x002B

VERSION_LABELS = MappingProxyType({
    0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3", 0x0002: "s2",
    0xFEFF: "d1", 0xFEFD: "d2", 0xFEFC: "d3",
})
"""JA4's two characters for each protocol version; any other is ``00``."""
EMPTY_HASH = "000000000000"
"""JA4's ``b`` or ``c`` for an empty list (no hash of nothing)."""
_READ = frozenset({_ALPN, _SIGNATURE_ALGORITHMS, _SUPPORTED_GROUPS, _EC_POINT_FORMATS,
                   _SUPPORTED_VERSIONS})
"""The extensions whose contents a fingerprint reads (the others count by their type)."""
_EXTENSION_HEADER = struct.Struct("!HH").unpack_from
_ALNUM = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
GREASE = frozenset(0x0A0A + 0x1010 * index for index in range(16))
"""RFC 8701 §2: 0x0A0A, 0x1A1A, ... 0xFAFA."""


def is_grease(value: int) -> bool:
    return value in GREASE


@dataclass(frozen=True, slots=True)
class HelloFields:
    """What the fingerprints read from a ClientHello, GREASE removed, in the client's order."""

    legacy_version: int
    ciphers: tuple[int, ...]
    extensions: tuple[int, ...]
    alpn: bytes | None
    """The first protocol of the ALPN extension; None without one."""
    versions: tuple[int, ...]
    """supported_versions (empty when absent)."""
    signature_algorithms: tuple[int, ...]
    groups: tuple[int, ...]
    point_formats: tuple[int, ...]


def _u16_list(body: bytes, pos: int, stop: int, what: str, length_bytes: int = 2
              ) -> tuple[int, ...]:
    """A vector of 16-bit values at ``pos`` that must end exactly at ``stop``."""
    if stop - pos < length_bytes:
        raise ClientHelloError(f"bad {what} length")
    size = body[pos] if length_bytes == 1 else (body[pos] << 8) | body[pos + 1]
    start = pos + length_bytes
    if size & 1 or start + size != stop:
        raise ClientHelloError(f"bad {what} length")
    values = struct.unpack_from(f"!{size // 2}H", body, start)
    return tuple([value for value in values if value not in GREASE])


def _first_alpn(body: bytes, pos: int, stop: int) -> bytes:
    """RFC 7301 §3.1: the first name of protocol_name_list (the list must be well formed)."""
    if stop - pos < 2 or (body[pos] << 8) | body[pos + 1] != stop - pos - 2:
        raise ClientHelloError("bad ALPN list length")
    first: bytes | None = None
    at = pos + 2
    while at < stop:
        length = body[at]
        if length == 0 or at + 1 + length > stop:
            raise ClientHelloError("bad ALPN protocol name length")
        if first is None:
            first = body[at + 1 : at + 1 + length]
        at += 1 + length
    if first is None:
        raise ClientHelloError("empty ALPN list")
    return first


def _point_formats(body: bytes, pos: int, stop: int) -> tuple[int, ...]:
    if stop - pos < 1 or body[pos] + 1 != stop - pos:
        raise ClientHelloError("bad ec_point_formats length")
    return tuple(body[pos + 1 : stop])


def read_hello(body: bytes) -> HelloFields:
    """The fields of a ClientHello body (after the 4-byte handshake header; RFC 8446 §4.1.2,
    RFC 5246 §7.4.1.2). Raises :class:`ClientHelloError`, and nothing else."""
    end = len(body)
    if end < 35:
        raise ClientHelloError("ClientHello too short")
    legacy_version = (body[0] << 8) | body[1]
    pos = 35 + body[34]  # legacy_version, random, legacy_session_id
    if body[34] > 32 or pos + 2 > end:
        raise ClientHelloError("bad legacy_session_id")
    size = (body[pos] << 8) | body[pos + 1]
    if size < 2 or size & 1 or pos + 2 + size > end:
        raise ClientHelloError("bad cipher_suites length")
    suites = struct.unpack_from(f"!{size // 2}H", body, pos + 2)
    ciphers = tuple([suite for suite in suites if suite not in GREASE])
    pos += 2 + size
    if pos >= end or body[pos] == 0 or pos + 1 + body[pos] > end:
        raise ClientHelloError("bad legacy_compression_methods")
    pos += 1 + body[pos]
    extensions: list[int] = []
    append = extensions.append
    alpn: bytes | None = None
    versions: tuple[int, ...] = ()
    signatures: tuple[int, ...] = ()
    groups: tuple[int, ...] = ()
    formats: tuple[int, ...] = ()
    if pos != end:  # extensions may be absent (RFC 5246 §7.4.1.2)
        if pos + 2 > end or (body[pos] << 8) | body[pos + 1] != end - pos - 2:
            raise ClientHelloError("extensions do not fill the ClientHello exactly")
        pos += 2
        header = _EXTENSION_HEADER
        while pos < end:
            if pos + 4 > end:
                raise ClientHelloError("ClientHello ends within an extension header")
            kind, length = header(body, pos)
            pos += 4
            stop = pos + length
            if stop > end:
                raise ClientHelloError(f"extension {kind} runs past the ClientHello")
            if kind in _READ:  # one test for the many extensions read by their type alone
                append(kind)
                if kind == _ALPN:
                    alpn = _first_alpn(body, pos, stop)
                elif kind == _SIGNATURE_ALGORITHMS:
                    signatures = _u16_list(body, pos, stop, "signature_algorithms")
                elif kind == _SUPPORTED_GROUPS:
                    groups = _u16_list(body, pos, stop, "supported_groups")
                elif kind == _EC_POINT_FORMATS:
                    formats = _point_formats(body, pos, stop)
                else:
                    versions = _u16_list(body, pos, stop, "supported_versions", 1)
            elif kind not in GREASE:
                append(kind)
            pos = stop
    return HelloFields(legacy_version, ciphers, tuple(extensions), alpn, versions, signatures,
                       groups, formats)


def _alpn_label(alpn: bytes | None) -> str:
    if not alpn:
        return "00"
    first, last = alpn[0], alpn[-1]
    if first in _ALNUM and last in _ALNUM:
        return chr(first) + chr(last)
    text = alpn.hex()
    return text[0] + text[-1]


def _hash12(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:12] if text else EMPTY_HASH


def _hex_list(values: tuple[int, ...] | list[int]) -> str:
    """``0a0b,1301``: 4-digit lower-case hex joined by commas (one C call for the lot)."""
    return struct.pack(f"!{len(values)}H", *values).hex(",", 2)


def ja4_parts(fields: HelloFields, *, original: bool = False) -> tuple[str, str, str]:
    """JA4's ``a`` and the two lists ``b`` and ``c`` hash (JA4_r; with ``original``, JA4_ro:
    the client's order, SNI and ALPN kept)."""
    version = max(fields.versions) if fields.versions else fields.legacy_version
    extensions = fields.extensions
    a = (f"t{VERSION_LABELS.get(version, '00')}{'d' if _SERVER_NAME in extensions else 'i'}"
         f"{min(len(fields.ciphers), 99):02d}{min(len(extensions), 99):02d}"
         f"{_alpn_label(fields.alpn)}")
    if original:
        ciphers, listed = _hex_list(fields.ciphers), _hex_list(extensions)
    else:
        ciphers = _hex_list(sorted(fields.ciphers))
        listed = _hex_list(sorted(e for e in extensions if e not in (_SERVER_NAME, _ALPN)))
    if listed and fields.signature_algorithms:
        listed += "_" + _hex_list(fields.signature_algorithms)
    return a, ciphers, listed


def ja4(fields: HelloFields, *, original: bool = False) -> str:
    """The JA4 fingerprint (with ``original``: JA4_o, the lists in the client's order)."""
    a, ciphers, listed = ja4_parts(fields, original=original)
    return f"{a}_{_hash12(ciphers)}_{_hash12(listed)}"


def ja3_text(fields: HelloFields) -> str:
    """The string JA3 hashes."""
    return ",".join((str(fields.legacy_version),
                     *("-".join(map(str, values)) for values in (
                         fields.ciphers, fields.extensions, fields.groups,
                         fields.point_formats))))


def ja3(fields: HelloFields) -> str:
    return hashlib.md5(ja3_text(fields).encode("ascii"), usedforsecurity=False).hexdigest()


class Fingerprints:
    """The fingerprints of one handshake, computed from its ClientHello body when first asked
    (then the body is let go). ``None`` when the body cannot be read, and JA3 unless
    ``with_ja3`` (it costs as much again, and only JA3 rules and headers read it)."""

    __slots__ = ("_body", "_ja3", "_ja4", "_with_ja3")

    def __init__(self, body: bytes, *, with_ja3: bool = False) -> None:
        self._body: bytes | None = body
        self._with_ja3 = with_ja3
        self._ja4 = ""
        self._ja3 = ""

    def _compute(self) -> None:
        body, self._body = self._body, None
        if body is None:
            return
        try:
            fields = read_hello(body)
        except ClientHelloError:
            return
        self._ja4 = ja4(fields)
        if self._with_ja3:
            self._ja3 = ja3(fields)

    @property
    def ja4(self) -> str | None:
        if self._body is not None:
            self._compute()
        return self._ja4 or None

    @property
    def ja3(self) -> str | None:
        if self._body is not None:
            self._compute()
        return self._ja3 or None


@dataclass(frozen=True, slots=True)
class FingerprintHeaders:
    """The fields that carry the fingerprints to the backend (``X-JA4``; ``None``: not sent).

    Only offload may send them: the same names are dropped from every client request
    (:attr:`names`, for :class:`~offload.proto.forwarding.ForwardPolicy`)."""

    ja4: bytes | None = b"X-JA4"
    ja3: bytes | None = None

    @classmethod
    def of(cls, ja4: str, ja3: str) -> FingerprintHeaders:
        """From a frontend's ``ja4_header``/``ja3_header`` (``""``: not sent)."""
        return cls(ja4.encode("ascii") or None, ja3.encode("ascii") or None)

    @property
    def names(self) -> frozenset[bytes]:
        return frozenset(name.lower() for name in (self.ja4, self.ja3) if name)

    def fields(self, fingerprints: Fingerprints | None) -> list[tuple[bytes, bytes]]:
        """The fields for one connection's requests (none for a hello that gave none)."""
        if fingerprints is None:
            return []
        out = []
        if self.ja4 and (value := fingerprints.ja4):
            out.append((self.ja4, value.encode("ascii")))
        if self.ja3 and (value := fingerprints.ja3):
            out.append((self.ja3, value.encode("ascii")))
        return out


__all__ = [
    "FingerprintHeaders", "Fingerprints", "HelloFields", "ja3", "ja3_text", "ja4", "ja4_parts",
    "read_hello",
]
