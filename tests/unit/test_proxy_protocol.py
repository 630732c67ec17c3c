"""PROXY protocol v1/v2: exact encodings, round trips, incremental parsing and malformed input."""

from __future__ import annotations

import ipaddress
import string
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offload.errors import ProtocolError
from offload.proto.proxy_protocol import (
    PP2_SUBTYPE_SSL_CIPHER,
    PP2_SUBTYPE_SSL_VERSION,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_SSL,
    InboundHeader,
    ProxyHeader,
    TlsFacts,
    TrustedSources,
    crc32c,
    encode_v1,
    encode_v2,
    parse,
)

# The signature written out from the spec, not taken from the module under test.
SIG = bytes.fromhex("0D0A0D0A000D0A515549540A")

TLS = TlsFacts(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", sni="www.example.com", alpn="h2")


# ------------------------------------------------------------------ helpers (independent of src)


def walk_tlvs(data: bytes) -> list[tuple[int, bytes]]:
    """Decode a run of TLVs by hand; fails the test if they do not exactly fill ``data``."""
    out = []
    pos = 0
    while pos < len(data):
        assert pos + 3 <= len(data), "truncated TLV header"
        kind, length = struct.unpack_from("!BH", data, pos)
        pos += 3
        assert pos + length <= len(data), "TLV runs past the end"
        out.append((kind, data[pos : pos + length]))
        pos += length
    assert pos == len(data)
    return out


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def v2(ver_cmd: int, fam: int, body: bytes) -> bytes:
    return SIG + struct.pack("!BBH", ver_cmd, fam, len(body)) + body


IPV4_BLOCK = bytes([1, 2, 3, 4, 5, 6, 7, 8]) + struct.pack("!HH", 1111, 443)
IPV6_BLOCK = ipaddress.IPv6Address("2001:db8::1").packed + ipaddress.IPv6Address("2001:db8::2").packed \
    + struct.pack("!HH", 1111, 443)


def assert_parses_exactly(data: bytes, trailer: bytes = b"GET / HTTP/1.1\r\n\r\n") -> ProxyHeader:
    """Whole input parses with used == len; every strict prefix is incomplete; trailers are left."""
    for cut in range(len(data)):
        assert parse(data[:cut]) is None, f"prefix of {cut} bytes was not reported incomplete"
    result = parse(data)
    assert result is not None
    header, used = result
    assert used == len(data)
    assert parse(data + trailer) == (header, len(data))
    return header


# ------------------------------------------------------------------ v1: exact bytes


def test_encode_v1_ipv4_exact() -> None:
    assert encode_v1(("1.2.3.4", 1111), ("5.6.7.8", 443)) == b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 443\r\n"


def test_encode_v1_ipv6_exact() -> None:
    assert (encode_v1(("2001:db8::1", 56324), ("2001:db8::2", 443))
            == b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n")


@pytest.mark.parametrize(("source", "destination"), [
    (("1.2.3.4", 1), ("::1", 2)),
    (("::1", 1), ("1.2.3.4", 2)),
    (("", 0), ("", 0)),
    (("/run/offload.sock", 0), ("1.2.3.4", 2)),
])
def test_encode_v1_mixed_or_non_ip_is_unknown(source: tuple[str, int],
                                              destination: tuple[str, int]) -> None:
    data = encode_v1(source, destination)
    assert data == b"PROXY UNKNOWN\r\n"
    assert parse(data) == (ProxyHeader(None, None), 15)


def test_parse_v1_spec_example() -> None:
    data = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n"
    header, used = parse(data) or (None, 0)
    assert used == 47
    assert header == ProxyHeader(("192.168.0.1", 56324), ("192.168.0.11", 443))
    assert data[used:] == b"GET / HTTP/1.1\r\n"


def test_parse_v1_port_zero_and_max() -> None:
    assert parse(b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n") == (
        ProxyHeader(("0.0.0.0", 0), ("255.255.255.255", 65535)), 44)


# ------------------------------------------------------------------ v2: exact bytes, decoded by hand


def test_encode_v2_ipv4_without_tls_exact() -> None:
    data = encode_v2(("1.2.3.4", 1111), ("5.6.7.8", 443))
    assert data == (bytes.fromhex("0D0A0D0A000D0A515549540A") + b"\x21\x11\x00\x0c"
                    + b"\x01\x02\x03\x04" + b"\x05\x06\x07\x08" + b"\x04\x57" + b"\x01\xbb")


def test_encode_v2_ipv6_without_tls_exact() -> None:
    data = encode_v2(("2001:db8::1", 1111), ("2001:db8::2", 443))
    assert data == (SIG + b"\x21\x21\x00\x24"
                    + bytes.fromhex("20010db8000000000000000000000001")
                    + bytes.fromhex("20010db8000000000000000000000002")
                    + b"\x04\x57\x01\xbb")


def test_encode_v2_mixed_families_is_unspec() -> None:
    data = encode_v2(("1.2.3.4", 1111), ("::1", 443))
    assert data == SIG + b"\x21\x00\x00\x00"
    assert parse(data) == (ProxyHeader(None, None), 16)


def test_tlv_type_constants_match_the_spec() -> None:
    assert (PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_SSL) == (0x01, 0x02, 0x20)
    assert (PP2_SUBTYPE_SSL_VERSION, PP2_SUBTYPE_SSL_CIPHER) == (0x21, 0x23)


def _check_tls_tlvs(tlv_block: bytes) -> None:
    tlvs = walk_tlvs(tlv_block)
    kinds = [kind for kind, _ in tlvs]
    assert sorted(kinds) == [0x01, 0x02, 0x20]  # ALPN, AUTHORITY, SSL: each exactly once
    values = dict(tlvs)
    assert values[0x01] == b"h2"
    assert values[0x02] == b"www.example.com"
    ssl = values[0x20]
    client, verify = struct.unpack_from("!BI", ssl, 0)
    assert client == 0x01  # PP2_CLIENT_SSL
    assert verify == 0
    assert ssl[:5] == b"\x01\x00\x00\x00\x00"
    sub = walk_tlvs(ssl[5:])
    assert sorted(kind for kind, _ in sub) == [0x21, 0x23]  # SSL_VERSION, SSL_CIPHER
    assert dict(sub) == {0x21: b"TLSv1.3", 0x23: b"TLS_AES_256_GCM_SHA384"}


def test_encode_v2_ipv4_with_tls_decoded_by_hand() -> None:
    data = encode_v2(("192.0.2.10", 50000), ("198.51.100.1", 443), TLS)
    assert data[:12] == b"\r\n\r\n\x00\r\nQUIT\n"
    ver_cmd, fam, length = struct.unpack("!BBH", data[12:16])
    assert ver_cmd == 0x21
    assert fam == 0x11
    # 12 address bytes + ALPN (3+2) + AUTHORITY (3+15) + SSL (3 + 5 + (3+7) + (3+22))
    assert length == 12 + 5 + 18 + 43
    assert len(data) == 16 + length
    src, dst, sport, dport = struct.unpack("!4s4sHH", data[16:28])
    assert src == bytes([192, 0, 2, 10])
    assert dst == bytes([198, 51, 100, 1])
    assert (sport, dport) == (50000, 443)
    _check_tls_tlvs(data[28:])


def test_encode_v2_ipv6_with_tls_decoded_by_hand() -> None:
    data = encode_v2(("2001:db8::10", 50000), ("2001:db8::1", 443), TLS)
    assert data[:12] == SIG
    ver_cmd, fam, length = struct.unpack("!BBH", data[12:16])
    assert (ver_cmd, fam) == (0x21, 0x21)
    assert length == 36 + 5 + 18 + 43 == len(data) - 16
    src, dst, sport, dport = struct.unpack("!16s16sHH", data[16:52])
    assert src == bytes.fromhex("20010db8000000000000000000000010")
    assert dst == bytes.fromhex("20010db8000000000000000000000001")
    assert (sport, dport) == (50000, 443)
    _check_tls_tlvs(data[52:])


def test_parse_v2_with_tls_agrees_with_hand_decoding() -> None:
    header = assert_parses_exactly(encode_v2(("192.0.2.10", 50000), ("198.51.100.1", 443), TLS))
    assert header.source == ("192.0.2.10", 50000)
    assert header.destination == ("198.51.100.1", 443)
    assert header.tlvs[0x01] == b"h2"
    assert header.tlvs[0x02] == b"www.example.com"
    assert header.tlvs[0x20][:5] == b"\x01\x00\x00\x00\x00"
    assert header.ssl_tlvs == {0x21: b"TLSv1.3", 0x23: b"TLS_AES_256_GCM_SHA384"}


def test_parse_v2_hand_built_header_with_unknown_tlv() -> None:
    body = IPV4_BLOCK + tlv(0x04, b"") + tlv(0xE0, b"custom")  # NOOP and a custom type
    header, used = parse(v2(0x21, 0x11, body) + b"rest") or (None, 0)
    assert used == 16 + len(body)
    assert header == ProxyHeader(("1.2.3.4", 1111), ("5.6.7.8", 443), {0x04: b"", 0xE0: b"custom"}, {})


# ------------------------------------------------------------------ LOCAL, AF_UNSPEC, UNKNOWN


@pytest.mark.parametrize(("data", "used"), [
    (SIG + b"\x20\x00\x00\x00", 16),                       # LOCAL, no address
    (v2(0x20, 0x11, IPV4_BLOCK), 28),                      # LOCAL with an address block to skip
    (v2(0x20, 0x21, IPV6_BLOCK), 52),
    (SIG + b"\x21\x00\x00\x00", 16),                       # PROXY, AF_UNSPEC
    (v2(0x21, 0x00, b"\xaa\xbb\xcc\xdd"), 20),             # AF_UNSPEC with bytes to skip
    (b"PROXY UNKNOWN\r\n", 15),
    (b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
     b"65535 65535\r\n", 107),                              # the spec's worst case
])
def test_local_and_unspec_have_no_addresses(data: bytes, used: int) -> None:
    header = assert_parses_exactly(data)
    assert header.source is None
    assert header.destination is None
    assert parse(data) == (header, used)


# ------------------------------------------------------------------ hypothesis round trips

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(min_value=0, max_value=65535)
same_family_pairs = st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6))
mixed_pairs = st.one_of(st.tuples(ipv4, ipv6), st.tuples(ipv6, ipv4))
labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
hostnames = st.lists(labels, min_size=1, max_size=4).map(".".join)
tokens = st.text(alphabet=string.ascii_letters + string.digits + "-_./", min_size=1, max_size=40)
tls_facts = st.one_of(st.none(), st.builds(
    TlsFacts,
    version=st.one_of(st.none(), tokens),
    cipher=st.one_of(st.none(), tokens),
    sni=st.one_of(st.none(), hostnames),
    alpn=st.one_of(st.none(), tokens),
))
trailers = st.binary(min_size=1, max_size=64)


@settings(deadline=None)
@given(pair=same_family_pairs, sport=ports, dport=ports, trailer=trailers)
def test_v1_round_trip(pair: tuple[str, str], sport: int, dport: int, trailer: bytes) -> None:
    data = encode_v1((pair[0], sport), (pair[1], dport))
    family = ipaddress.ip_address(pair[0]).version
    assert data.startswith(f"PROXY TCP{family} ".encode())
    assert data.endswith(b"\r\n")
    assert len(data) <= 107
    header = assert_parses_exactly(data, trailer)
    assert header.source == (pair[0], sport)
    assert header.destination == (pair[1], dport)
    assert header.tlvs == {}


@settings(deadline=None)
@given(pair=mixed_pairs, sport=ports, dport=ports, trailer=trailers)
def test_v1_mixed_round_trip(pair: tuple[str, str], sport: int, dport: int, trailer: bytes) -> None:
    data = encode_v1((pair[0], sport), (pair[1], dport))
    assert data == b"PROXY UNKNOWN\r\n"
    assert assert_parses_exactly(data, trailer) == ProxyHeader(None, None)


def expected_tlvs(tls: TlsFacts | None) -> tuple[dict[int, bytes], dict[int, bytes]]:
    if tls is None:
        return {}, {}
    tlvs: dict[int, bytes] = {}
    if tls.alpn:
        tlvs[0x01] = tls.alpn.encode("ascii")
    if tls.sni:
        tlvs[0x02] = tls.sni.encode("ascii")
    ssl: dict[int, bytes] = {}
    if tls.version:
        ssl[0x21] = tls.version.encode("ascii")
    if tls.cipher:
        ssl[0x23] = tls.cipher.encode("ascii")
    return tlvs, ssl


@settings(deadline=None)
@given(pair=same_family_pairs, sport=ports, dport=ports, tls=tls_facts, trailer=trailers)
def test_v2_round_trip(pair: tuple[str, str], sport: int, dport: int, tls: TlsFacts | None,
                       trailer: bytes) -> None:
    data = encode_v2((pair[0], sport), (pair[1], dport), tls)
    family = ipaddress.ip_address(pair[0]).version
    assert data[:12] == SIG
    assert data[12] == 0x21
    assert data[13] == (0x11 if family == 4 else 0x21)
    assert struct.unpack_from("!H", data, 14)[0] == len(data) - 16

    header = assert_parses_exactly(data, trailer)
    assert header.source == (pair[0], sport)
    assert header.destination == (pair[1], dport)
    tlvs, ssl = expected_tlvs(tls)
    if tls is None:
        assert header.tlvs == {}
    else:
        others = {kind: value for kind, value in header.tlvs.items() if kind != 0x20}
        assert header.tlvs[0x20][:5] == b"\x01\x00\x00\x00\x00"
        assert others == tlvs
    assert header.ssl_tlvs == ssl


@settings(deadline=None)
@given(pair=mixed_pairs, sport=ports, dport=ports, trailer=trailers)
def test_v2_mixed_round_trip(pair: tuple[str, str], sport: int, dport: int, trailer: bytes) -> None:
    data = encode_v2((pair[0], sport), (pair[1], dport))
    assert data[12:14] == b"\x21\x00"
    assert assert_parses_exactly(data, trailer) == ProxyHeader(None, None)


# ------------------------------------------------------------------ malformed input


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",      # a TLS ClientHello
    b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY\r\n",
    b"PROXYTCP4",
    b"\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x0c",            # wrong signature
    b"\r\x00",
    b"\x00" * 20,
    b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY \r\n",
    b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\nGET / HTTP/1.1\r\n",  # lone LF ending the line
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rGET / HTTP/1.1\r\n",  # lone CR ending the line
])
def test_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse(data)


@pytest.mark.parametrize("line", [
    "PROXY TCP4 1.2.3 5.6.7.8 1 2",
    "PROXY TCP4 256.2.3.4 5.6.7.8 1 2",
    "PROXY TCP4 1.2.3.4 5.6.7.8.9 1 2",
    "PROXY TCP4 01.2.3.4 5.6.7.8 1 2",
    "PROXY TCP4 localhost 5.6.7.8 1 2",
    "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2",
    "PROXY TCP4 1.2.3.4 5.6.7.8 1 99999",
    "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2",
    "PROXY TCP4 1.2.3.4 5.6.7.8 +1 2",
    "PROXY TCP4 1.2.3.4 5.6.7.8 1_0 2",
    "PROXY TCP4 1.2.3.4 5.6.7.8 0x1 2",
    "PROXY TCP4 1.2.3.4 5.6.7.8 x 2",
    "PROXY TCP4 ::1 ::2 1 2",
    "PROXY TCP6 1.2.3.4 5.6.7.8 1 2",
    "PROXY TCP4 1.2.3.4 ::1 1 2",
    "PROXY TCP6 ::1 1.2.3.4 1 2",
    "PROXY TCP6 ::1 ::g 1 2",
    "PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2",
])
def test_v1_bad_addresses_and_ports(line: str) -> None:
    with pytest.raises(ProtocolError):
        parse(line.encode("ascii") + b"\r\n")


def test_v1_without_crlf_in_107_bytes() -> None:
    assert parse(b"PROXY " + b"A" * 100) is None          # 106 bytes: may still end
    with pytest.raises(ProtocolError):
        parse(b"PROXY " + b"A" * 101)                      # 107 bytes and no CRLF
    with pytest.raises(ProtocolError):
        parse(b"PROXY " + b"A" * 500)
    with pytest.raises(ProtocolError):                     # CRLF too late: a 108-byte line
        parse(b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n")


def test_v1_line_of_exactly_107_bytes_is_accepted() -> None:
    data = b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n"
    assert len(data) == 107
    assert parse(data + b"more") == (ProxyHeader(None, None), 107)


@pytest.mark.parametrize("data", [
    b"PROXY TCP4 1.2.3.4 5.6.7.\xc3\xa9 1 2\r\n",
    b"PROXY \xff\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \x80\r\n",
])
def test_v1_non_ascii(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse(data)


@pytest.mark.parametrize("ver_cmd", [0x01, 0x11, 0x31, 0xF1, 0x10, 0x30])
def test_v2_bad_version(ver_cmd: int) -> None:
    with pytest.raises(ProtocolError):
        parse(v2(ver_cmd, 0x11, IPV4_BLOCK))
    with pytest.raises(ProtocolError):  # refused on the fixed part alone, before the body arrives
        parse(SIG + bytes([ver_cmd, 0x11]) + b"\x00\x0c")


@pytest.mark.parametrize("ver_cmd", [0x22, 0x23, 0x2F])
def test_v2_bad_command(ver_cmd: int) -> None:
    with pytest.raises(ProtocolError):
        parse(v2(ver_cmd, 0x11, IPV4_BLOCK))


@pytest.mark.parametrize(("fam", "body"), [
    pytest.param(0x41, IPV4_BLOCK, id="family-4"),      # families above 3 do not exist
    pytest.param(0xF1, IPV4_BLOCK, id="family-15"),
    pytest.param(0x13, IPV4_BLOCK, id="inet-transport-3"),  # transports above 2 do not exist
    pytest.param(0x1F, IPV4_BLOCK, id="inet-transport-15"),
    pytest.param(0x23, IPV6_BLOCK, id="inet6-transport-3"),
])
def test_v2_invalid_family_or_transport(fam: int, body: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse(v2(0x21, fam, body))


@pytest.mark.parametrize(("fam", "body"), [
    pytest.param(0x11, IPV4_BLOCK[:11], id="inet-11"),
    pytest.param(0x11, b"", id="inet-0"),
    pytest.param(0x21, IPV6_BLOCK[:35], id="inet6-35"),
    pytest.param(0x21, IPV4_BLOCK, id="inet6-12"),
])
def test_v2_short_address_block(fam: int, body: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse(v2(0x21, fam, body))


@pytest.mark.parametrize("tlvs", [
    b"\x01\x00\x05ab",                                     # TLV longer than the header
    b"\x01\xff\xff",
    b"\x01\x00",                                           # truncated TLV header
    b"\x01",
    tlv(0x01, b"h2") + b"\x02\x00\x10example",
    tlv(0x20, b""),                                        # SSL TLV shorter than 5 bytes
    tlv(0x20, b"\x01\x00\x00\x00"),
    tlv(0x20, b"\x01\x00\x00\x00\x00" + b"\x21\x00\x09TLS"),  # sub-TLV runs past the SSL TLV
    tlv(0x20, b"\x01\x00\x00\x00\x00" + b"\x21\x00"),
])
def test_v2_bad_tlvs(tlvs: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse(v2(0x21, 0x11, IPV4_BLOCK + tlvs))


def test_v2_tlv_cannot_reach_into_the_payload() -> None:
    # The TLV claims 10 bytes; the header ends after 2 of them, the rest is payload.
    data = v2(0x21, 0x11, IPV4_BLOCK + b"\x01\x00\x0aab") + b"cdefghijkl"
    with pytest.raises(ProtocolError):
        parse(data)


# ------------------------------------------------------------------ arbitrary bytes never crash

v1_fields = st.text(alphabet="0123456789abcdefABCDEF.:%+-_ x\r\n\xe9", max_size=30)
v1_like = st.builds(
    lambda proto, fields, end: ("PROXY " + proto + " " + " ".join(fields)).encode("utf-8") + end,
    st.sampled_from(["TCP4", "TCP6", "UNKNOWN", "UDP4", "", "TCP4 "]),
    st.lists(v1_fields, max_size=7),
    st.sampled_from([b"\r\n", b"\n", b"\r", b"", b"\r\nrest"]),
)
v2_like = st.builds(
    lambda ver_cmd, fam, body, extra: v2(ver_cmd, fam, body) + extra,
    st.one_of(st.sampled_from([0x20, 0x21]), st.integers(0, 255)),
    st.one_of(st.sampled_from([0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32]), st.integers(0, 255)),
    st.one_of(
        st.binary(max_size=80),
        st.builds(lambda block, rest: block + rest, st.sampled_from([IPV4_BLOCK, IPV6_BLOCK]),
                  st.binary(max_size=60)),
        st.builds(lambda block, ssl: block + tlv(0x20, ssl), st.sampled_from([IPV4_BLOCK, IPV6_BLOCK]),
                  st.binary(max_size=40)),
    ),
    st.binary(max_size=8),
)
valid_headers = st.one_of(
    st.builds(lambda pair, sp, dp: encode_v1((pair[0], sp), (pair[1], dp)), same_family_pairs, ports, ports),
    st.builds(lambda pair, sp, dp, tls: encode_v2((pair[0], sp), (pair[1], dp), tls),
              same_family_pairs, ports, ports, tls_facts),
)
mutated = st.builds(
    lambda data, where, value: data[: where % len(data)] + bytes([value]) + data[where % len(data) + 1 :],
    valid_headers, st.integers(min_value=0), st.integers(0, 255),
)
truncated = st.builds(lambda data, cut: data[: cut % (len(data) + 1)], v2_like, st.integers(min_value=0))


@settings(deadline=None, max_examples=500)
@given(st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=120).map(lambda tail: SIG + tail),
    st.binary(max_size=120).map(lambda tail: b"PROXY " + tail),
    v1_like, v2_like, mutated, truncated,
))
def test_parse_arbitrary_bytes_never_crashes(data: bytes) -> None:
    try:
        result = parse(data)
    except ProtocolError:
        return
    if result is not None:
        header, used = result
        assert isinstance(header, ProxyHeader)
        assert 0 < used <= len(data)
        # A complete header parses the same from exactly its own bytes.
        assert parse(data[:used]) == result


# ------------------------------------------------------------------ found by these tests, fixed


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 1.2.3.4 5.6.7.8 0443 443\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 443 00\r\n",
])
def test_v1_port_with_heading_zero_is_refused(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse(line)


@pytest.mark.parametrize("line", [
    b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
    b"PROXY TCP6 ::1%\x1b[31m\nFAKE ::1 1 2\r\n",
])
def test_v1_ipv6_zone_id_is_refused(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse(line)


def test_encode_v1_link_local_peer_has_no_zone_id() -> None:
    data = encode_v1(("fe80::1%eth0", 1111), ("fe80::2%eth0", 443))
    assert data == b"PROXY TCP6 fe80::1 fe80::2 1111 443\r\n"


@pytest.mark.parametrize(("fam", "body"), [
    pytest.param(0x12, IPV4_BLOCK, id="udp4"),
    pytest.param(0x22, IPV6_BLOCK, id="udp6"),
    pytest.param(0x31, b"\x00" * 216, id="unix-stream"),
    pytest.param(0x32, b"\x00" * 216, id="unix-dgram"),
])
def test_v2_valid_unsupported_family_falls_back(fam: int, body: bytes) -> None:
    result = parse(v2(0x21, fam, body) + b"payload")
    assert result is not None
    assert result[1] == 16 + len(body)


@pytest.mark.parametrize("sni", ["a" * 64 + ".example", "a..b", "."])
def test_encode_v2_any_client_sni(sni: str) -> None:
    data = encode_v2(("1.2.3.4", 1111), ("5.6.7.8", 443), TlsFacts(sni=sni))
    assert dict(walk_tlvs(data[28:]))[0x02] == sni.encode("ascii")


# ------------------------------------------------------------------ inbound: CRC32c, size cap


def crc32c_by_hand(data: bytes) -> int:
    """Bit by bit, from the definition (RFC 3720 B.4: reflected polynomial 0x82F63B78)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 * (crc & 1))
    return crc ^ 0xFFFFFFFF


def test_crc32c_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value of CRC-32C
    assert crc32c(b"") == 0


@settings(deadline=None)
@given(st.binary(max_size=200))
def test_crc32c_matches_the_definition(data: bytes) -> None:
    assert crc32c(data) == crc32c_by_hand(data)


def with_crc(body_before: bytes, body_after: bytes = b"", *, corrupt: bool = False) -> bytes:
    """A v2 PROXY header (IPv4) whose TLVs include a CRC32C TLV between the two parts."""
    body = IPV4_BLOCK + body_before + tlv(0x03, b"\0\0\0\0") + body_after
    zeroed = v2(0x21, 0x11, body)
    crc = crc32c_by_hand(zeroed) ^ (1 if corrupt else 0)
    return zeroed.replace(tlv(0x03, b"\0\0\0\0"), tlv(0x03, struct.pack("!I", crc)))


@pytest.mark.parametrize(("before", "after"), [
    (b"", b""), (tlv(0x01, b"h2"), b""), (b"", tlv(0xE0, b"x" * 40)), (tlv(0x04, b""), tlv(0x02, b"a")),
])
def test_v2_with_a_matching_crc32c_is_accepted(before: bytes, after: bytes) -> None:
    header = assert_parses_exactly(with_crc(before, after))
    assert header.source == ("1.2.3.4", 1111)


def test_v2_with_a_wrong_crc32c_is_refused() -> None:
    with pytest.raises(ProtocolError, match="CRC32C"):
        parse(with_crc(tlv(0x01, b"h2"), corrupt=True))


def test_v2_changed_after_its_crc32c_was_computed_is_refused() -> None:
    data = bytearray(with_crc(tlv(0x01, b"h2")))
    data[16] ^= 0x01  # the source address: 0.2.3.4 instead of 1.2.3.4
    with pytest.raises(ProtocolError, match="CRC32C"):
        parse(bytes(data))


@pytest.mark.parametrize("value", [b"", b"\0\0\0", b"\0\0\0\0\0"])
def test_v2_crc32c_tlv_of_the_wrong_size_is_refused(value: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse(v2(0x21, 0x11, IPV4_BLOCK + tlv(0x03, value)))


def test_v2_longer_than_the_limit_is_refused_from_its_fixed_part() -> None:
    data = v2(0x21, 0x11, IPV4_BLOCK + tlv(0xE0, b"x" * 5000))
    assert parse(data) is not None  # the protocol allows it ...
    with pytest.raises(ProtocolError, match="over 4096"):
        parse(data, limit=4096)  # ... a balancer's header never needs it
    with pytest.raises(ProtocolError, match="over 4096"):
        parse(data[:16], limit=4096)  # refused before the body arrives: nothing to hold
    exact = v2(0x21, 0x11, IPV4_BLOCK + tlv(0xE0, b"x" * (4096 - 16 - 12 - 3)))
    assert len(exact) == 4096
    assert parse(exact, limit=4096) is not None


# ------------------------------------------------------------------ InboundHeader


def feed_in_pieces(data: bytes, cuts: list[int]) -> tuple[ProxyHeader, bytes] | None:
    reader = InboundHeader()
    result = None
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        piece = data[start:cut]
        start = cut
        if not piece:
            continue
        assert result is None, "bytes were fed after the header was complete"
        result = reader.feed(piece)
        if result is not None and start < len(data):
            header, rest = result
            return header, rest + data[start:]
    return result


TLS_START = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


@pytest.mark.parametrize("data", [
    encode_v1(("192.0.2.7", 50000), ("198.51.100.1", 443)),
    encode_v2(("192.0.2.7", 50000), ("198.51.100.1", 443)),
    encode_v2(("2001:db8::7", 50000), ("2001:db8::1", 443), TLS),
    with_crc(tlv(0xEA, b"\x01vpce-0123456789abcdef")),
])
def test_inbound_header_whole_and_byte_by_byte(data: bytes) -> None:
    expected = parse(data)
    assert expected is not None
    whole = InboundHeader().feed(data + TLS_START)
    assert whole == (expected[0], TLS_START)
    reader = InboundHeader()
    for index, byte in enumerate(data[:-1]):
        assert reader.feed(bytes([byte])) is None, f"complete after {index + 1} bytes"
    assert reader.feed(data[-1:] + TLS_START) == (expected[0], TLS_START)
    assert InboundHeader().feed(data) == (expected[0], b"")


@pytest.mark.parametrize("data", [
    SIG + b"\x20\x00\x00\x00",                   # LOCAL: a health check from the balancer
    v2(0x20, 0x11, IPV4_BLOCK),                  # LOCAL with an address block to ignore
    b"PROXY UNKNOWN\r\n",
])
def test_inbound_local_and_unknown_name_no_client(data: bytes) -> None:
    result = InboundHeader().feed(data + TLS_START)
    assert result == (ProxyHeader(None, None), TLS_START)


@pytest.mark.parametrize("data", [
    TLS_START,                                              # TLS straight away: no header
    b"GET / HTTP/1.1\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
    SIG + b"\x22\x11\x00\x0c",                              # unknown command
    v2(0x21, 0x11, IPV4_BLOCK + b"\x01\x00\x05ab"),          # TLV running past the header
])
def test_inbound_malformed_is_refused(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        InboundHeader().feed(data)


def test_inbound_holds_at_most_the_limits() -> None:
    reader = InboundHeader()
    assert reader.feed(b"PROXY TCP4 ") is None
    with pytest.raises(ProtocolError):
        reader.feed(b"1" * 96)                                  # 107 bytes, no CRLF
    reader = InboundHeader()
    with pytest.raises(ProtocolError):
        reader.feed(SIG + b"\x21\x11\xff\xff")                  # claims 65551 bytes
    reader = InboundHeader(limit=64)
    assert reader.feed(SIG + b"\x21\x11\x00\x30") is None      # 64 bytes: may come
    with pytest.raises(ProtocolError):
        InboundHeader(limit=64).feed(SIG + b"\x21\x11\x00\x31")


@settings(deadline=None, max_examples=300)
@given(header=valid_headers, trailer=st.binary(max_size=40),
       cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_inbound_any_split_gives_the_same_header(header: bytes, trailer: bytes,
                                                  cuts: list[int]) -> None:
    data = header + trailer
    expected = parse(header)
    assert expected is not None
    result = feed_in_pieces(data, [cut % (len(data) + 1) for cut in cuts])
    assert result == (expected[0], trailer)


@settings(deadline=None, max_examples=300)
@given(data=st.one_of(st.binary(max_size=300), v1_like, v2_like, mutated, truncated),
       cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=4))
def test_inbound_arbitrary_bytes_header_or_refusal(data: bytes, cuts: list[int]) -> None:
    try:
        result = feed_in_pieces(data, [cut % (len(data) + 1) for cut in cuts])
    except ProtocolError:
        with pytest.raises(ProtocolError):
            parse(data, limit=4096)  # refused in pieces only if refused whole
        return
    whole = parse(data, limit=4096)
    if result is None:
        assert whole is None
    else:
        assert whole is not None
        assert result == (whole[0], data[whole[1]:])


# ------------------------------------------------------------------ TrustedSources


@pytest.mark.parametrize(("address", "admitted"), [
    ("10.1.2.3", True), ("10.255.255.255", True), ("11.0.0.1", False),
    ("::ffff:10.1.2.3", True),                   # a dual-stack socket's IPv4 peer
    ("2001:db8::5", True), ("2001:db8:0:1::5", False),
    ("fe80::1%eth0", False), ("", False), ("unix", False), ("10.1.2.3/8", False),
])
def test_trusted_sources(address: str, admitted: bool) -> None:
    sources = TrustedSources((ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/64")))
    assert sources.admits(address) is admitted


def test_no_trusted_sources_admit_nobody() -> None:
    assert not TrustedSources(()).admits("127.0.0.1")
