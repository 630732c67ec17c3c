"""ClientHello reading (offload.proto.client_hello) against genuine hellos from Python's ssl module.

Every hello is fed whole, as every strict prefix, with trailing bytes, and re-split into records
of our own (RFC 8446 §5.1); then every length field is made to run past its container, every
vector is truncated, and hypothesis throws arbitrary and mutated bytes at it: the answer is
always None, a ClientHello, or ClientHelloError, never another exception (DESIGN habits 3, 9).
The test-side encoder and walker below are written from the RFCs, not from the module.
"""

from __future__ import annotations

import functools
import ssl
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tls_helpers import handshake, issued, write_bundle

from offload.errors import ProtocolError
from offload.proto.client_hello import (
    MAX_CLIENT_HELLO,
    MAX_RECORD_LENGTH,
    MAX_RECORDS,
    NO_APPLICATION_PROTOCOL,
    ClientHello,
    ClientHelloError,
    ServedProtocols,
    fatal_alert,
    parse_client_hello,
    peek_alpn_and_sni,
)

HOST = "www.example.com"
TLS12, TLS13 = 0x0303, 0x0304
CCS_RECORD = b"\x14\x03\x03\x00\x01\x01"  # a TLS 1.3 compatibility change_cipher_spec
APPDATA_RECORD = b"\x17\x03\x03\x00\x05hello"

# ------------------------------------------------------------------ genuine hellos from OpenSSL


@functools.cache
def genuine(alpn: tuple[str, ...], server_hostname: str | None, tls12_only: bool) -> bytes:
    """The first flight of a real client: one ClientHello, as OpenSSL writes it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(list(alpn))
    if tls12_only:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    data = outgoing.read()
    assert data[0] == 22 and len(data) == 5 + struct.unpack_from("!H", data, 3)[0]
    return data


H2_H1 = ("h2", "http/1.1")
ACME = ("acme-tls/1",)
# name: (genuine()'s arguments: alpn, server_hostname, tls12_only), expected (cipher_suites -1)
GENUINE_CASES: dict[str, tuple[tuple[tuple[str, ...], str | None, bool], ClientHello]] = {
    "default": ((H2_H1, HOST, False), ClientHello(HOST, H2_H1, (TLS13, TLS12), -1, TLS12)),
    "tls12": ((H2_H1, HOST, True), ClientHello(HOST, H2_H1, (TLS12,), -1, TLS12)),
    "no-sni": ((H2_H1, None, False), ClientHello(None, H2_H1, (TLS13, TLS12), -1, TLS12)),
    "ip-no-sni": ((H2_H1, "127.0.0.1", False), ClientHello(None, H2_H1, (TLS13, TLS12), -1, TLS12)),
    "no-alpn": (((), HOST, False), ClientHello(HOST, (), (TLS13, TLS12), -1, TLS12)),
    "acme": ((ACME, HOST, False), ClientHello(HOST, ACME, (TLS13, TLS12), -1, TLS12)),
    "acme-tls12-no-sni": ((ACME, None, True), ClientHello(None, ACME, (TLS12,), -1, TLS12)),
}


def case(name: str) -> tuple[bytes, ClientHello]:
    arguments, expected = GENUINE_CASES[name]
    return genuine(*arguments), expected


def matches(hello: ClientHello | None, expected: ClientHello) -> None:
    """Everything as expected; the cipher suite count is whatever OpenSSL offered (> 0)."""
    assert hello is not None
    assert hello.cipher_suites > 0
    assert replace(hello, cipher_suites=-1) == expected


# ------------------------------------------------------------------ a test-side encoder (RFC 8446 §4.1.2)


def u8(data: bytes) -> bytes:
    return bytes([len(data)]) + data


def u16(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def ext(kind: int, body: bytes) -> tuple[int, bytes]:
    return kind, body


def sni_ext(name: bytes) -> tuple[int, bytes]:
    return ext(0, u16(b"\x00" + u16(name)))


def alpn_ext(*names: bytes) -> tuple[int, bytes]:
    return ext(16, u16(b"".join(u8(name) for name in names)))


def versions_ext(*versions: int) -> tuple[int, bytes]:
    return ext(43, u8(b"".join(struct.pack("!H", v) for v in versions)))


def message_of(body: bytes) -> bytes:
    """A handshake message of type client_hello (RFC 8446 §4)."""
    return b"\x01" + len(body).to_bytes(3, "big") + body


@dataclass(frozen=True)
class Parts:
    """A ClientHello taken apart, to be rebuilt with changes."""

    legacy_version: int = TLS12
    random: bytes = bytes(range(32))
    session_id: bytes = b"\x01" * 32
    suites: bytes = b"\x13\x01\x13\x02\xc0\x2f"
    compression: bytes = b"\x00"
    extensions: tuple[tuple[int, bytes], ...] | None = ()

    def body(self) -> bytes:
        out = (struct.pack("!H", self.legacy_version) + self.random + u8(self.session_id)
               + u16(self.suites) + u8(self.compression))
        if self.extensions is not None:
            out += u16(b"".join(struct.pack("!HH", kind, len(data)) + data for kind, data in self.extensions))
        return out

    def message(self) -> bytes:
        return message_of(self.body())

    def record(self) -> bytes:
        return records(self.message())


def records(message: bytes, sizes: Sequence[int] = (), version: int = 0x0301) -> bytes:
    """``message`` as handshake records of the given sizes (the rest in records of 2^14)."""
    out, pos = b"", 0
    for size in [*sizes, *[MAX_RECORD_LENGTH] * (len(message) // MAX_RECORD_LENGTH + 1)]:
        if pos >= len(message):
            break
        piece = message[pos : pos + size]
        out += struct.pack("!BHH", 22, version, len(piece)) + piece
        pos += len(piece)
    return out


def take_apart(data: bytes) -> Parts:
    """Decode a single-record hello by hand (trusting it: it came from OpenSSL)."""
    body = data[9:]
    pos = 34
    session_id = body[pos + 1 : pos + 1 + body[pos]]
    pos += 1 + body[pos]
    (length,) = struct.unpack_from("!H", body, pos)
    suites = body[pos + 2 : pos + 2 + length]
    pos += 2 + length
    compression = body[pos + 1 : pos + 1 + body[pos]]
    pos += 1 + body[pos] + 2
    extensions = []
    while pos < len(body):
        kind, length = struct.unpack_from("!HH", body, pos)
        extensions.append((kind, body[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    return Parts(struct.unpack_from("!H", body)[0], body[2:34], session_id, suites, compression,
                 tuple(extensions))


def with_extensions(parts: Parts, *extensions: tuple[int, bytes]) -> Parts:
    """``parts`` with each extension replaced where its type is present, appended otherwise."""
    current = list(parts.extensions or ())
    for kind, data in extensions:
        index = next((i for i, (k, _) in enumerate(current) if k == kind), None)
        if index is None:
            current.append((kind, data))
        else:
            current[index] = (kind, data)
    return replace(parts, extensions=tuple(current))


def outcome(data: bytes) -> ClientHello | type[ClientHelloError] | None:
    """The contract: None, a ClientHello, or ClientHelloError; anything else fails the test."""
    try:
        result = parse_client_hello(data)
    except ClientHelloError as error:
        assert error.status == 400 and error.reason == "bad_client_hello"
        peeked = peek_alpn_and_sni(data)
        assert peeked == (None, ())
        return ClientHelloError
    peeked = peek_alpn_and_sni(data)
    assert peeked == (None if result is None else (result.server_name, result.alpn))
    return result


def rejects(data: bytes, match: str | None = None) -> None:
    with pytest.raises(ClientHelloError, match=match):
        parse_client_hello(data)
    assert peek_alpn_and_sni(data) == (None, ())


# ------------------------------------------------------------------ genuine hellos


@pytest.mark.parametrize("name", GENUINE_CASES)
def test_genuine_hello(name: str) -> None:
    data, expected = case(name)
    matches(parse_client_hello(data), expected)
    assert peek_alpn_and_sni(data) == (expected.server_name, expected.alpn)


@pytest.mark.parametrize("name", GENUINE_CASES)
def test_every_strict_prefix_is_incomplete(name: str) -> None:
    data, _ = case(name)
    for end in range(len(data)):
        assert parse_client_hello(data[:end]) is None, end
        assert peek_alpn_and_sni(data[:end]) is None, end


@pytest.mark.parametrize("name", GENUINE_CASES)
@pytest.mark.parametrize("trailer", [CCS_RECORD, APPDATA_RECORD, CCS_RECORD + APPDATA_RECORD,
                                     b"\x16\x03\x03", b"GET / HTTP/1.1\r\n", b"\x00" * 100])
def test_trailing_bytes_are_ignored(name: str, trailer: bytes) -> None:
    data, expected = case(name)
    matches(parse_client_hello(data + trailer), expected)


@pytest.mark.parametrize("buffer", [bytearray, memoryview])
def test_other_buffers(buffer: type[bytearray] | type[memoryview]) -> None:
    data, expected = case("default")
    matches(parse_client_hello(buffer(data)), expected)
    assert peek_alpn_and_sni(buffer(data)) == (HOST, ("h2", "http/1.1"))
    assert peek_alpn_and_sni(buffer(data[:100])) is None


def test_error_type() -> None:
    error = ClientHelloError("x")
    assert isinstance(error, ProtocolError)
    assert (error.status, error.reason) == (400, "bad_client_hello")


# ------------------------------------------------------------------ fragmentation (RFC 8446 §5.1)


@pytest.mark.parametrize("name", ["default", "tls12", "acme"])
@pytest.mark.parametrize("sizes", [[1], [3], [4], [5], [100], [1, 1, 1], [2, 200, 50], [300, 1, 2],
                                   [4, 4, 4]])
def test_fragmented_hello(name: str, sizes: list[int]) -> None:
    data, expected = case(name)
    message = data[5:]
    split = records(message, sizes)
    assert len(split) > len(data) or sizes[0] >= len(message)
    matches(parse_client_hello(split), expected)
    matches(parse_client_hello(split + CCS_RECORD), expected)
    for end in range(len(split)):
        assert parse_client_hello(split[:end]) is None, end


def test_records_may_differ_in_version() -> None:
    data, expected = case("default")
    message = data[5:]
    split = records(message[:10], version=0x0301) + records(message[10:], version=0x0304)
    matches(parse_client_hello(split), expected)


def test_record_limit() -> None:
    message = Parts(extensions=((0xFFCE, bytes(400)),)).message()
    sizes = [1] * (MAX_RECORDS - 1)
    assert len(message) > MAX_RECORDS
    assert parse_client_hello(records(message, [*sizes, len(message)])) is not None
    rejects(records(message, [*sizes, 1, len(message)]), "records")


def test_interleaved_record_type() -> None:
    data, _ = case("default")
    message = data[5:]
    rejects(records(message[:100]) + CCS_RECORD + records(message[100:]), "content type 20")


def test_hello_must_end_its_record() -> None:
    """RFC 8446 §5.1: bytes after the ClientHello in its own record are an error, known as soon
    as the record header has been seen."""
    message = Parts().message()
    header = struct.pack("!BHH", 22, 0x0301, len(message) + 4)
    rejects(header + message[:4], "after the ClientHello")
    rejects(header + message + b"\x02\x00\x00\x00", "after the ClientHello")
    # the same across two records
    rejects(records(message[:10]) + struct.pack("!BHH", 22, 0x0301, len(message)), "after")


# ------------------------------------------------------------------ record layer errors


@pytest.mark.parametrize(("data", "match"), [
    (b"\x17", "content type 23"),
    (b"\x15\x03\x01\x00\x02\x02\x28", "content type 21"),
    (b"GET / HTTP/1.1\r\n", "content type 71"),
    (b"\x00", "content type 0"),
    (b"\x80", "SSLv2"),
    # an SSLv2-compatible CLIENT-HELLO (RFC 5246 appendix E.2)
    (b"\x80\x2e\x01\x03\x01\x00\x15\x00\x00\x00\x10" + bytes(21 + 16), "SSLv2"),
    (b"\x16\x02", "record version"),
    (b"\x16\x04", "record version"),
    (b"\x16\x03\x00", "record version"),
    (b"\x16\x03\x05", "record version"),
    (b"\x16\x03\xff", "record version"),
    (b"\x16\x03\x01\x00\x00", "empty"),
    (b"\x16\x03\x01\x40\x01", "exceeds"),
    (b"\x16\x03\x03\xff\xff", "exceeds"),
    (b"\x16\x03\x01\x00\x04\x02", "not client_hello"),  # a ServerHello type
    (b"\x16\x03\x01\x00\x04\x00\x00\x00\x00", "not client_hello"),
    (b"\x16\x03\x01\x00\x04\x01\x01\x00\x01", "too large"),  # 64 KiB + 1
    (b"\x16\x03\x01\x00\x04\x01\xff\xff\xff", "too large"),
])
def test_bad_start_is_rejected_as_soon_as_seen(data: bytes, match: str) -> None:
    rejects(data, match)


@pytest.mark.parametrize("version", [0x0301, 0x0302, 0x0303, 0x0304])
def test_accepted_record_versions(version: int) -> None:
    assert parse_client_hello(records(Parts().message(), version=version)) is not None


def test_largest_record_and_largest_hello() -> None:
    base = len(Parts().body()) + 4 + 4  # message header, extension header
    filled = Parts(extensions=((0xFFCE, bytes(MAX_RECORD_LENGTH - base)),))
    assert len(filled.message()) == MAX_RECORD_LENGTH
    assert parse_client_hello(filled.record()) is not None
    rejects(struct.pack("!BHH", 22, 0x0301, MAX_RECORD_LENGTH + 1) + filled.message() + b"\x00", "exceeds")
    # 64 KiB exactly, in five records, is the largest hello accepted; one byte more is not
    padding = MAX_CLIENT_HELLO - len(Parts().body()) - 8
    biggest = Parts(extensions=((0xFFCE, bytes(padding // 2)), (0xFFCF, bytes(padding - padding // 2))))
    assert len(biggest.body()) == MAX_CLIENT_HELLO
    assert parse_client_hello(biggest.record()) is not None
    too_big = Parts(extensions=((0xFFCE, bytes(padding // 2)), (0xFFCF, bytes(padding - padding // 2 + 1))))
    rejects(too_big.record()[:9], "too large")


# ------------------------------------------------------------------ the ClientHello body


def test_built_hello() -> None:
    parts = Parts(extensions=(sni_ext(b"a.example"), alpn_ext(b"h2"), versions_ext(TLS13)))
    hello = parse_client_hello(parts.record())
    assert hello == ClientHello("a.example", ("h2",), (TLS13,), 3, TLS12)


def test_no_extensions_at_all() -> None:
    """RFC 5246 §7.4.1.2: extensions may be absent; versions fall back to legacy_version."""
    hello = parse_client_hello(Parts(legacy_version=0x0302, extensions=None).record())
    assert hello == ClientHello(None, (), (0x0302,), 3, 0x0302, offers_resumption=True)
    hello = parse_client_hello(Parts(session_id=b"", extensions=()).record())
    assert hello == ClientHello(None, (), (TLS12,), 3, TLS12)


def test_grease_versions_are_dropped() -> None:
    """RFC 8701: GREASE values carry no meaning; they are left out of ``versions``."""
    parts = Parts(extensions=(versions_ext(0x7A7A, TLS13, 0xFAFA, TLS12, 0x0A0A),))
    hello = parse_client_hello(parts.record())
    assert hello is not None and hello.versions == (TLS13, TLS12)
    # 0x7A6A is not GREASE
    hello = parse_client_hello(Parts(extensions=(versions_ext(0x7A6A),)).record())
    assert hello is not None and hello.versions == (0x7A6A,)


def test_alpn_names_are_latin1_and_ordered() -> None:
    parts = Parts(extensions=(alpn_ext(b"http/1.1", b"\xff\x00", b"h2", b"h2"),))
    hello = parse_client_hello(parts.record())
    assert hello is not None and hello.alpn == ("http/1.1", "\xff\x00", "h2", "h2")


def test_pre_shared_key_must_be_last() -> None:
    """RFC 8446 §4.2.11."""
    psk = ext(41, b"\x00")
    assert parse_client_hello(Parts(extensions=(sni_ext(b"a"), psk)).record()) is not None
    rejects(Parts(extensions=(psk, sni_ext(b"a"))).record(), "pre_shared_key")


@functools.cache
def resuming_hello(tls12_only: bool) -> tuple[bytes, bytes]:
    """(a genuine first hello, the same client's hello resuming the session it got)."""
    with tempfile.TemporaryDirectory() as directory:
        bundle = write_bundle(Path(directory), "server.pem", issued((HOST,)))
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(bundle)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    if tls12_only:
        client.maximum_version = ssl.TLSVersion.TLSv1_2
    first, _ = handshake(client, server, HOST)
    with pytest.raises(ssl.SSLWantReadError):
        first.read()  # takes the TLS 1.3 NewSessionTicket
    assert first.session is not None and first.session.has_ticket
    hellos = []
    for session in (None, first.session):
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        again = client.wrap_bio(incoming, outgoing, server_hostname=HOST, session=session)
        with pytest.raises(ssl.SSLWantReadError):
            again.do_handshake()
        hellos.append(outgoing.read())
    return hellos[0], hellos[1]


@pytest.mark.parametrize("tls12_only", [False, True])
def test_genuine_resumption_offer(tls12_only: bool) -> None:
    """A client with a session offers it (TLS 1.3: pre_shared_key; TLS 1.2: the ticket), and
    one without offers nothing, though a TLS 1.3 client always sends a session id."""
    fresh, resuming = resuming_hello(tls12_only)
    first = parse_client_hello(fresh)
    again = parse_client_hello(resuming)
    assert first is not None and not first.offers_resumption
    assert again is not None and again.offers_resumption
    kinds = {kind for kind, _ in take_apart(resuming).extensions or ()}
    assert (41 in kinds) != tls12_only
    if not tls12_only:
        assert take_apart(fresh).session_id  # the compatibility id is not an offer


@pytest.mark.parametrize(("parts", "offers"), [
    (Parts(session_id=b"", extensions=(versions_ext(TLS13, TLS12),)), False),
    (Parts(session_id=b"\x01" * 32, extensions=(versions_ext(TLS13, TLS12),)), False),
    (Parts(session_id=b"\x01" * 32, extensions=(versions_ext(TLS12),)), True),
    (Parts(session_id=b"\x01", extensions=()), True),
    (Parts(session_id=b"", extensions=(ext(35, b""),)), False),
    (Parts(session_id=b"", extensions=(ext(35, b"ticket"),)), True),
    (Parts(session_id=b"", extensions=(versions_ext(TLS13), ext(35, b"ticket"))), True),
    (Parts(session_id=b"", extensions=(versions_ext(TLS13), ext(41, b"\x00"))), True),
    (Parts(session_id=b"\x01" * 32, extensions=(versions_ext(TLS13), ext(41, b""))), True),
])
def test_resumption_offer(parts: Parts, offers: bool) -> None:
    """RFC 8446 §4.2.11 (pre_shared_key), RFC 5077 §3.2 (a non-empty SessionTicket), RFC 5246
    §7.4.1.2 (a session id, meaningful only without TLS 1.3: RFC 8446 §D.4)."""
    hello = parse_client_hello(parts.record())
    assert hello is not None and hello.offers_resumption is offers


@pytest.mark.parametrize("kind", [0, 16, 43, 10, 23, 0xFFCE])
def test_duplicate_extension(kind: int) -> None:
    """RFC 8446 §4.2: at most one extension of each type."""
    data, _ = case("default")
    parts = take_apart(data)
    extensions = parts.extensions or ()
    duplicate = next((e for e in extensions if e[0] == kind), (kind, b""))
    extended = replace(parts, extensions=(*extensions, duplicate, duplicate))
    rejects(extended.record(), "duplicate")


@pytest.mark.parametrize(("extension", "match"), [
    (sni_ext("exämple.com".encode()), "ASCII"),
    (sni_ext(b"a b"), "ASCII"),
    (sni_ext(b"a\x00b"), "ASCII"),
    (sni_ext(b"a\nb"), "ASCII"),
    (sni_ext(b"a\x7fb"), "ASCII"),
    (sni_ext(b""), "host_name length"),
    (sni_ext(b"a" * 256), "255"),
    (ext(0, b""), "server_name list"),
    (ext(0, b"\x00\x00"), "server_name list"),
    (ext(0, u16(b"\x01" + u16(b"a.example"))), "unknown type"),
    (ext(0, u16(b"\x00" + u16(b"a.example") + b"\x00" + u16(b"b.example"))), "host_name length"),
    (ext(0, u16(b"\x00" + u16(b"a.example")) + b"\x00"), "server_name list"),
    (ext(16, b""), "ALPN list"),
    (ext(16, b"\x00\x00"), "ALPN list"),
    (alpn_ext(b""), "ALPN list"),
    (alpn_ext(b"h2", b""), "protocol name"),
    (ext(16, u16(b"\x03h2")), "protocol name"),
    (ext(16, u16(b"\x02h2") + b"\x00"), "ALPN list"),
    (ext(43, b""), "supported_versions"),
    (ext(43, b"\x00"), "supported_versions"),
    (ext(43, b"\x01\x03"), "supported_versions"),
    (ext(43, b"\x03\x03\x04\x03"), "supported_versions"),
    (ext(43, b"\x04\x03\x04"), "supported_versions"),
    (ext(43, b"\x02\x03\x04\x00"), "supported_versions"),
])
def test_bad_decoded_extension(extension: tuple[int, bytes], match: str) -> None:
    data, _ = case("default")
    rejects(with_extensions(take_apart(data), extension).record(), match)


def test_host_name_limits() -> None:
    name = b".".join([b"a" * 63] * 4)[:255]
    hello = parse_client_hello(Parts(extensions=(sni_ext(name),)).record())
    assert hello is not None and hello.server_name == name.decode()
    hello = parse_client_hello(Parts(extensions=(sni_ext(b"WWW.Example.COM."),)).record())
    assert hello is not None and hello.server_name == "WWW.Example.COM."  # exactly as sent


@pytest.mark.parametrize(("parts", "match"), [
    (Parts(session_id=bytes(33)), "legacy_session_id"),
    (Parts(suites=b""), "cipher_suites"),
    (Parts(suites=b"\x13\x01\x13"), "cipher_suites"),
    (Parts(compression=b""), "compression"),
])
def test_bad_vector_lengths(parts: Parts, match: str) -> None:
    rejects(parts.record(), match)


def test_vectors_running_past_the_body() -> None:
    body = Parts(extensions=None).body()
    assert len(body) == 77  # version 2, random 32, session id 1 + 32, suites 2 + 6, compression 1 + 1
    for cut, match in [(0, "too short"), (34, "too short"), (35, "before its cipher_suites"),
                       (67, "before its cipher_suites"), (68, "before its cipher_suites"),
                       (69, "before its legacy_compression"), (74, "before its legacy_compression"),
                       (75, "before its legacy_compression"), (76, "within legacy_compression")]:
        short = body[:cut]
        rejects(records(message_of(short)), match)
    assert parse_client_hello(records(message_of(body))) is not None


@pytest.mark.parametrize("stray", [b"\x00", b"\x00\x00", b"\x00\x00\x00"])
def test_extension_block_ending_in_a_partial_header(stray: bytes) -> None:
    for extensions in [b"", struct.pack("!HH", 0xFFCE, 1) + b"\x00"]:
        body = Parts(extensions=None).body() + u16(extensions + stray)
        rejects(records(message_of(body)), "within an extension header")


def test_every_truncation_of_the_body() -> None:
    """A complete handshake message whose body stops early is malformed at every cut, except
    right after the compression methods, where a hello without extensions ends."""
    data, expected = case("default")
    parts = take_apart(data)
    body = parts.body()
    no_extensions = len(replace(parts, extensions=None).body())
    for cut in range(len(body)):
        message = message_of(body[:cut])
        if cut == no_extensions:  # a TLS 1.2 hello with a session id: a resumption offer
            assert parse_client_hello(records(message)) == ClientHello(
                None, (), (TLS12,), len(parts.suites) // 2, TLS12, offers_resumption=True)
        else:
            rejects(records(message))
    matches(parse_client_hello(records(message_of(body))), expected)


# ------------------------------------------------------------------ every length field, mutated


@dataclass(frozen=True)
class Field:
    """A length prefix in a hello: ``width`` bytes at ``offset``, its vector right after."""

    name: str
    offset: int
    width: int

    @property
    def start(self) -> int:
        return self.offset + self.width

    def value(self, data: bytes) -> int:
        return int.from_bytes(data[self.offset : self.start], "big")

    def end(self, data: bytes) -> int:
        return self.start + self.value(data)

    def set(self, data: bytes, value: int) -> bytes:
        return data[: self.offset] + value.to_bytes(self.width, "big") + data[self.start :]

    def encloses(self, data: bytes, index: int) -> bool:
        return self.start <= index < self.end(data)


def length_fields(data: bytes) -> list[Field]:
    """Every length prefix of a single-record hello, found by walking it by hand."""
    fields = [Field("record", 3, 2), Field("handshake", 6, 3)]
    pos = 9 + 34
    for name, width in [("session_id", 1), ("cipher_suites", 2), ("compression", 1)]:
        field = Field(name, pos, width)
        fields.append(field)
        pos = field.end(data)
    fields.append(Field("extensions", pos, 2))
    pos += 2
    while pos < len(data):
        kind = struct.unpack_from("!H", data, pos)[0]
        field = Field(f"extension {kind}", pos + 2, 2)
        fields.append(field)
        inner = field.start
        if kind == 0:
            fields += [Field("server_name list", inner, 2), Field("host_name", inner + 3, 2)]
        elif kind == 16:
            fields.append(Field("ALPN list", inner, 2))
            at = inner + 2
            while at < field.end(data):
                fields.append(Field(f"ALPN name at {at}", at, 1))
                at += 1 + data[at]
        elif kind == 43:
            fields.append(Field("versions", inner, 1))
        pos = field.end(data)
    return fields


@pytest.mark.parametrize("name", GENUINE_CASES)
def test_each_length_one_past_its_container(name: str) -> None:
    """Grow each length field inside the body so that its vector ends one byte past the vector
    that contains it: always an error, never a read into the neighbour."""
    data, _ = case(name)
    fields = length_fields(data)
    tested = []
    for field in fields[2:]:
        parent = min((f for f in fields if f is not field and f.encloses(data, field.offset)),
                     key=lambda f: f.end(data) - f.start)
        value = parent.end(data) - field.start + 1
        if value >= 1 << (8 * field.width):
            continue  # e.g. compression: it cannot say that much; see test_vectors_running_past_the_body
        with pytest.raises(ClientHelloError):
            parse_client_hello(field.set(data, value))
        tested.append(field.name)
    assert {"cipher_suites", "extensions"} <= set(tested)
    assert len(tested) >= len(fields) - 4


@pytest.mark.parametrize("name", GENUINE_CASES)
def test_each_vector_truncated(name: str) -> None:
    """Cut each vector's container one byte before the vector ends (shortening every length
    around it): the vector now runs past its container. Inside the body that is an error; for
    the handshake message and the record it means that more bytes are to come (and for the
    message, that a following non-handshake record is an error)."""
    data, _ = case(name)
    fields = length_fields(data)
    for field in fields:
        if field.value(data) == 0:
            continue
        ancestors = [f for f in fields if f is not field and f.encloses(data, field.offset)]
        last = field.end(data) - 1
        cut = min((f.end(data) for f in ancestors), default=len(data)) - last
        mutated = data
        for ancestor in ancestors:
            mutated = ancestor.set(mutated, ancestor.value(data) - cut)
        mutated = mutated[:last] + mutated[last + cut :]
        if field.name == "record":
            assert parse_client_hello(mutated) is None
        elif field.name == "handshake":
            assert parse_client_hello(mutated) is None
            rejects(mutated + APPDATA_RECORD, "content type 23")
        else:
            with pytest.raises(ClientHelloError):
                parse_client_hello(mutated)


def test_growing_the_handshake_length_waits_for_another_record() -> None:
    data, _ = case("default")
    field = Field("handshake", 6, 3)
    grown = field.set(data, field.value(data) + 1)
    assert parse_client_hello(grown) is None
    # the next handshake record completes it (and then the extensions no longer fill the body)
    rejects(grown + records(b"\x00"), "extensions do not fill")
    rejects(grown + CCS_RECORD, "content type 20")


# ------------------------------------------------------------------ properties (hypothesis)

record_like = st.builds(
    lambda version, length, rest: struct.pack("!BHH", 22, version, length) + rest,
    st.sampled_from([0x0301, 0x0303, 0x0304, 0x0300, 0x0200]),
    st.integers(0, 600), st.binary(max_size=600))
hello_like = st.builds(
    lambda length, body, tail: records(b"\x01" + length.to_bytes(3, "big") + body) + tail,
    st.integers(0, 400), st.binary(max_size=400), st.binary(max_size=20))

extension_block_like = st.binary(max_size=300).map(
    lambda raw: records(message_of(Parts(extensions=None).body() + u16(raw))))
extension_like = st.builds(
    lambda kind, raw: Parts(extensions=((kind, raw),)).record(),
    st.sampled_from([0, 16, 35, 41, 43]), st.binary(max_size=40))


@settings(max_examples=1000)
@given(st.one_of(st.binary(max_size=700), record_like, hello_like, extension_block_like, extension_like))
def test_arbitrary_bytes_keep_the_contract(data: bytes) -> None:
    outcome(data)


@settings(max_examples=500)
@given(st.sampled_from(sorted(GENUINE_CASES)), st.data())
def test_single_byte_mutations_keep_the_contract(name: str, draws: st.DataObject) -> None:
    data, _ = case(name)
    index = draws.draw(st.integers(0, len(data) - 1))
    value = draws.draw(st.integers(0, 255))
    outcome(data[:index] + bytes([value]) + data[index + 1 :])


@settings(max_examples=200)
@given(st.sampled_from(sorted(GENUINE_CASES)), st.lists(st.integers(1, 300), max_size=12),
       st.sampled_from([0x0301, 0x0302, 0x0303, 0x0304]))
def test_fragmentation_does_not_change_the_result(name: str, sizes: list[int], version: int) -> None:
    data, expected = case(name)
    split = records(data[5:], sizes, version)
    matches(parse_client_hello(split), expected)
    matches(parse_client_hello(split + APPDATA_RECORD), expected)


host_names = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1,
                     max_size=255)
protocol_names = st.binary(min_size=1, max_size=255)


@settings(max_examples=200)
@given(st.one_of(st.none(), host_names), st.lists(protocol_names, max_size=5),
       st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=20), st.integers(1, 1000),
       st.binary(max_size=32), st.lists(st.integers(0x0100, 0xFFCD), unique=True, max_size=5))
def test_built_hellos_round_trip(server_name: str | None, alpn: list[bytes], versions: list[int],
                                 suites: int, session_id: bytes, others: list[int]) -> None:
    extensions = [ext(kind, b"\x00" * (kind % 7)) for kind in others if kind not in (35, 41)]
    if server_name is not None:
        extensions.insert(len(extensions) // 2, sni_ext(server_name.encode()))
    if alpn:
        extensions.append(alpn_ext(*alpn))
    extensions.insert(0, versions_ext(*versions))
    parts = Parts(session_id=session_id, suites=bytes(2 * suites), extensions=tuple(extensions))
    grease = {0x0A0A + 0x1010 * i for i in range(16)}
    offered = tuple(v for v in versions if v not in grease)
    assert parse_client_hello(parts.record()) == ClientHello(
        server_name, tuple(name.decode("latin-1") for name in alpn), offered, suites, TLS12,
        offers_resumption=bool(session_id) and TLS13 not in offered)


# ------------------------------------------------------------------ ALPN refusal (RFC 7301 §3.2)


def test_nothing_served_refuses_nothing() -> None:
    assert ServedProtocols.of(()) is None


@pytest.mark.parametrize(("offered", "refused"), [
    ((), False),  # no ALPN extension: no refusal, the handshake goes on without ALPN
    (("http/1.1",), False),
    (("h2", "http/1.1"), False),
    (("h2",), True),
    (("acme-tls/1",), True),
    (("foo", "bar", "http/1.1"), False),
    (("HTTP/1.1",), True),  # RFC 7301 §6: names are compared as bytes
])
def test_refuses_only_when_nothing_offered_is_served(offered: tuple[str, ...],
                                                     refused: bool) -> None:
    served = ServedProtocols.of(("http/1.1",))
    assert served is not None
    hello = ClientHello(HOST, offered, (TLS13, TLS12), 3, TLS12)
    assert served.refuses(hello) is refused


@pytest.mark.parametrize(("alpn", "found"), [
    (H2_H1, True), (("http/1.1",), True), (("h2",), False), ((), False), (ACME, False),
])
def test_quick_search_on_genuine_hellos(alpn: tuple[str, ...], found: bool) -> None:
    """The search finds a served name in a real first flight without parsing it; when it does
    not, the caller parses (so a miss is never a wrong refusal)."""
    served = ServedProtocols.of(("http/1.1",))
    assert served is not None
    data = genuine(alpn, HOST, False)
    assert served.surely_offered(data) is found
    hello = parse_client_hello(data)
    assert hello is not None
    assert served.refuses(hello) is (bool(alpn) and not found)


@settings(max_examples=200)
@given(st.lists(protocol_names, min_size=1, max_size=6), st.lists(protocol_names, min_size=1,
                                                                   max_size=3))
def test_quick_search_never_misses_a_served_name_in_one_record(offered: list[bytes],
                                                               served_names: list[bytes]) -> None:
    """A served name in a one-record hello is always found by the search: the parse is needed
    only for hellos that offer none of them (or that arrive in pieces)."""
    served = ServedProtocols.of(tuple(name.decode("latin-1") for name in served_names))
    assert served is not None
    data = Parts(extensions=(sni_ext(HOST.encode()), alpn_ext(*offered))).record()
    hello = parse_client_hello(data)
    assert hello is not None
    if not served.refuses(hello):
        assert served.surely_offered(data)


def test_fatal_alert_record() -> None:
    """RFC 8446 §5.1 / §6: alert record, TLS 1.2 record version, fatal, description 120."""
    assert fatal_alert(NO_APPLICATION_PROTOCOL) == bytes([21, 3, 3, 0, 2, 2, 120])
    modern = ClientHello(HOST, ("h2",), (TLS13, TLS12), 3, TLS12)
    assert fatal_alert(NO_APPLICATION_PROTOCOL, modern)[1:3] == b"\x03\x03"
    old = ClientHello(HOST, ("h2",), (0x0301,), 3, 0x0301)
    assert fatal_alert(NO_APPLICATION_PROTOCOL, old)[1:3] == b"\x03\x01"
