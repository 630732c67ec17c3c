"""PROXY protocol v1 (text) and v2 (binary) headers, per HAProxy's proxy-protocol.txt.

offload sends one of these first on each backend connection so that the backend learns the
client's address; v2 also carries what the TLS handshake established (TLVs: ALPN, authority =
SNI, and the SSL TLV with version and cipher). It also reads one at the start of every client
connection of a frontend with ``accept_proxy`` (an L4 balancer in front, which would otherwise
hide every client behind its own address): :class:`InboundHeader` collects the header from the
first reads, :class:`TrustedSources` says which peers may send one. Both directions are sans-IO.

The parser is strict, because what it returns becomes the client's address for limits, bans,
logs and X-Forwarded-For: anything that is not exactly a header is refused (no repair), a v1
line is at most 107 bytes, an inbound v2 header at most :data:`MAX_INBOUND_HEADER` bytes
(refused as soon as its length field says so, before the rest arrives), TLVs must fill the
header exactly and are otherwise skipped, and a CRC32c TLV must match (section 2.2.2).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network

from offload.errors import ProtocolError

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX_LENGTH = 107
V2_MAX_LENGTH = 16 + 0xFFFF
"""The largest header the v2 length field can describe."""
MAX_INBOUND_HEADER = 4096
"""Our own cap on a v2 header from a balancer: real ones carry a few small TLVs (an AWS VPC
endpoint id, a GCP PSC connection id, HAProxy's SSL facts) and stay under a few hundred
bytes; a connection must not make us hold 64 KiB before its TLS handshake starts."""

# TLV types (section 2.2)
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25
PP2_CLIENT_SSL = 0x01

_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_STREAM, _DGRAM = 0x1, 0x2
_SUPPORTED = frozenset({(_AF_INET, _STREAM), (_AF_INET6, _STREAM)})


@dataclass(frozen=True)
class TlsFacts:
    """What the TLS handshake established, as sent in the v2 SSL TLV."""

    version: str | None = None
    cipher: str | None = None
    sni: str | None = None
    alpn: str | None = None


@dataclass(frozen=True)
class ProxyHeader:
    """A decoded PROXY header. ``source``/``destination`` are None for ``UNKNOWN``/LOCAL."""

    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    tlvs: dict[int, bytes] = field(default_factory=dict)
    ssl_tlvs: dict[int, bytes] = field(default_factory=dict)


def _bare(address: str) -> str:
    """An address without an IPv6 zone id (``fe80::1%eth0``): the protocol carries 128 bits."""
    return address.partition("%")[0]


def _family(source: str, destination: str) -> int | None:
    try:
        src, dst = ipaddress.ip_address(_bare(source)), ipaddress.ip_address(_bare(destination))
    except ValueError:
        return None
    if src.version != dst.version:
        return None
    return 4 if src.version == 4 else 6


def encode_v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """``PROXY TCP4 src dst sport dport\\r\\n`` (or ``PROXY UNKNOWN`` for non-IP peers)."""
    family = _family(source[0], destination[0])
    if family is None:
        return b"PROXY UNKNOWN\r\n"
    src, dst = _bare(source[0]), _bare(destination[0])
    return f"PROXY TCP{family} {src} {dst} {source[1]} {destination[1]}\r\n".encode("ascii")


def _tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def encode_v2(source: tuple[str, int], destination: tuple[str, int],
              tls: TlsFacts | None = None) -> bytes:
    """The binary v2 header for a proxied TCP connection, with TLS TLVs when given."""
    family = _family(source[0], destination[0])
    if family == 4:
        address = (ipaddress.IPv4Address(_bare(source[0])).packed
                   + ipaddress.IPv4Address(_bare(destination[0])).packed
                   + struct.pack("!HH", source[1], destination[1]))
        fam_byte = (_AF_INET << 4) | _STREAM
    elif family == 6:
        address = (ipaddress.IPv6Address(_bare(source[0])).packed
                   + ipaddress.IPv6Address(_bare(destination[0])).packed
                   + struct.pack("!HH", source[1], destination[1]))
        fam_byte = (_AF_INET6 << 4) | _STREAM
    else:
        address, fam_byte = b"", (_AF_UNSPEC << 4)
    tlvs = b""
    if tls is not None:
        if tls.alpn:
            tlvs += _tlv(PP2_TYPE_ALPN, tls.alpn.encode("ascii"))
        if tls.sni:
            # The exact bytes the client sent: OpenSSL passes names IDNA would refuse.
            tlvs += _tlv(PP2_TYPE_AUTHORITY, tls.sni.encode("utf-8", "replace"))
        sub = b""
        if tls.version:
            sub += _tlv(PP2_SUBTYPE_SSL_VERSION, tls.version.encode("ascii"))
        if tls.cipher:
            sub += _tlv(PP2_SUBTYPE_SSL_CIPHER, tls.cipher.encode("ascii"))
        # client byte: connection used SSL; verify: 0 = success (no client cert was required)
        tlvs += _tlv(PP2_TYPE_SSL, struct.pack("!BI", PP2_CLIENT_SSL, 0) + sub)
    body = address + tlvs
    command = 0x21  # version 2, PROXY
    return V2_SIGNATURE + struct.pack("!BBH", command, fam_byte, len(body)) + body


def _parse_tlvs(data: bytes) -> dict[int, bytes]:
    tlvs: dict[int, bytes] = {}
    pos = 0
    while pos < len(data):
        if pos + 3 > len(data):
            raise ProtocolError("PROXY v2: truncated TLV")
        kind, length = struct.unpack_from("!BH", data, pos)
        pos += 3
        if pos + length > len(data):
            raise ProtocolError("PROXY v2: TLV longer than the header")
        tlvs[kind] = data[pos : pos + length]
        pos += length
    return tlvs


def _parse_v1(line: bytes) -> ProxyHeader:
    parts = line[:-2].decode("ascii", "strict").split(" ")
    if parts[:2] == ["PROXY", "UNKNOWN"]:
        return ProxyHeader(None, None)
    if len(parts) != 6 or parts[0] != "PROXY" or parts[1] not in ("TCP4", "TCP6"):
        raise ProtocolError("PROXY v1: malformed header")
    _, proto, src_text, dst_text, sport, dport = parts
    version = 4 if proto == "TCP4" else 6
    addresses = []
    for text in (src_text, dst_text):
        try:
            if "%" in text:  # a zone id would let any text through
                raise ValueError
            address = ipaddress.ip_address(text)
        except ValueError:
            raise ProtocolError("PROXY v1: bad address") from None
        if address.version != version:
            raise ProtocolError("PROXY v1: address does not match the protocol family")
        addresses.append(str(address))
    ports = []
    for text in (sport, dport):
        # ASCII digits, no heading zeroes, at most 65535 (section 2.1)
        if not (text.isascii() and text.isdigit()) or (len(text) > 1 and text[0] == "0"):
            raise ProtocolError("PROXY v1: bad port")
        if int(text) > 65535:
            raise ProtocolError("PROXY v1: port out of range")
        ports.append(int(text))
    return ProxyHeader((addresses[0], ports[0]), (addresses[1], ports[1]))


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
        table.append(crc)
    return tuple(table)


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, RFC 3720 appendix B.4), as the v2 CRC32C TLV carries it."""
    crc = 0xFFFFFFFF
    table = _CRC32C
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _check_crc32c(header: bytes, tlv_start: int) -> None:
    """Section 2.2.2: the checksum of the whole header with the TLV's value zeroed."""
    pos = tlv_start
    while pos < len(header):
        kind, length = struct.unpack_from("!BH", header, pos)
        if kind == PP2_TYPE_CRC32C:
            if length != 4:
                raise ProtocolError("PROXY v2: CRC32C TLV is not 4 bytes")
            value = pos + 3
            expected = int.from_bytes(header[value : value + 4])
            zeroed = header[:value] + b"\0\0\0\0" + header[value + 4 :]
            if crc32c(zeroed) != expected:
                raise ProtocolError("PROXY v2: CRC32C does not match the header")
            return
        pos += 3 + length


def _parse_v2(data: bytes, limit: int) -> tuple[ProxyHeader, int] | None:
    if len(data) < 16:
        return None
    command, fam_byte, length = struct.unpack_from("!BBH", data, 12)
    if command >> 4 != 2 or command & 0xF not in (0, 1):
        raise ProtocolError("PROXY v2: bad version or command")
    if 16 + length > limit:
        raise ProtocolError(f"PROXY v2: header of {16 + length} bytes is over {limit}")
    if len(data) < 16 + length:
        return None
    body, used = data[16 : 16 + length], 16 + length
    family, transport = fam_byte >> 4, fam_byte & 0xF
    if family > _AF_UNIX or transport > _DGRAM or (family == _AF_UNSPEC) != (transport == 0):
        raise ProtocolError("PROXY v2: invalid address family or transport")
    if command & 0xF == 0 or (family, transport) not in _SUPPORTED:
        # LOCAL, or a valid combination we do not carry (UDP, UNIX): the spec says to fall
        # back to UNSPEC and skip the address block.
        return ProxyHeader(None, None), used
    size = {_AF_INET: 4, _AF_INET6: 16}[family]
    if length < 2 * size + 4:
        raise ProtocolError("PROXY v2: address block shorter than its family needs")
    src = str(ipaddress.ip_address(body[:size]))
    dst = str(ipaddress.ip_address(body[size : 2 * size]))
    sport, dport = struct.unpack_from("!HH", body, 2 * size)
    tlvs = _parse_tlvs(body[2 * size + 4 :])
    if PP2_TYPE_CRC32C in tlvs:
        _check_crc32c(data[:used], 16 + 2 * size + 4)
    ssl_tlvs = {}
    if PP2_TYPE_SSL in tlvs:
        if len(tlvs[PP2_TYPE_SSL]) < 5:
            raise ProtocolError("PROXY v2: SSL TLV too short")
        ssl_tlvs = _parse_tlvs(tlvs[PP2_TYPE_SSL][5:])
    return ProxyHeader((src, sport), (dst, dport), tlvs, ssl_tlvs), used


def parse(data: bytes, *, limit: int = V2_MAX_LENGTH) -> tuple[ProxyHeader, int] | None:
    """Parse a header at the start of ``data``: (header, bytes used), or None if incomplete.

    Raises :class:`ProtocolError` for anything that is not a valid header, and for a v2 header
    longer than ``limit`` bytes (as soon as its fixed part has arrived).
    """
    if not data:
        return None
    if data[:1] == b"\r":
        if not V2_SIGNATURE.startswith(data[:12]):
            raise ProtocolError("not a PROXY protocol header")
        return _parse_v2(data, limit)
    if not b"PROXY ".startswith(data[:6]):
        raise ProtocolError("not a PROXY protocol header")
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    line_end = end if end >= 0 else min(len(data), V1_MAX_LENGTH)
    if data.find(b"\n", 0, line_end) >= 0 or 0 <= data.find(b"\r", 0, line_end) < len(data) - 1:
        raise ProtocolError("PROXY v1: CR or LF alone in the header line")  # refused at once
    if end < 0:
        if len(data) >= V1_MAX_LENGTH:
            raise ProtocolError("PROXY v1: header longer than 107 bytes")
        return None
    try:
        return _parse_v1(data[: end + 2]), end + 2
    except UnicodeDecodeError:
        raise ProtocolError("PROXY v1: header is not ASCII") from None


class InboundHeader:
    """The PROXY header at the start of a connection from a balancer, collected from the
    first reads (sans-IO): :meth:`feed` each read until it returns the header and the bytes
    after it (the start of the TLS handshake).

    LOCAL (the balancer's own health checks), ``PROXY UNKNOWN`` and address families other
    than TCP over IPv4/IPv6 give a header without addresses: the connection's own peer is
    then the client (section 2.1 and 2.2). What is held while waiting is bounded by the
    header limits (107 bytes for v1, ``limit`` for v2).
    """

    __slots__ = ("_held", "limit")

    def __init__(self, limit: int = MAX_INBOUND_HEADER) -> None:
        self._held = b""
        self.limit = limit

    def feed(self, data: bytes) -> tuple[ProxyHeader, bytes] | None:
        """The header and what follows it once complete, else None; raises
        :class:`ProtocolError` as soon as the bytes cannot be a valid header."""
        held = self._held + data if self._held else data
        result = parse(held, limit=self.limit)
        if result is None:
            self._held = held
            return None
        header, used = result
        self._held = b""
        return header, held[used:]


@dataclass(frozen=True, slots=True)
class TrustedSources:
    """The peers allowed to send a PROXY header: the balancers in front of a frontend.

    Anyone else must be refused, since whoever may send the header may claim any address
    (and so escape every per-client limit and ban, or get someone else banned)."""

    networks: tuple[IPv4Network | IPv6Network, ...]

    def admits(self, address: str) -> bool:
        """Whether ``address`` (a socket's peer: IPv4-mapped IPv6 counts as IPv4) is one."""
        try:
            ip = ipaddress.ip_address(address.partition("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)
