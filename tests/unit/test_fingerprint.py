"""JA4 and JA3 of a ClientHello: the published vectors, the spec's rules one by one, and what
must not change a fingerprint (GREASE, extension order) or break the reader (any bytes).

The vectors are published values, not computed here: FoxIO's JA4 specification
(technical_details/JA4.md) and the outputs FoxIO publishes for its capture files
(python/test/testdata/*.json: each ``JA4_ro`` with its ``JA4`` and ``JA4_o``), Salesforce's
JA3 README example, and one Chrome 143 handshake as browserleaks.com reports it (its JA3 text,
JA3 and JA4 together). A hello is built here from the raw (``_ro``) lists, then fingerprinted.
"""

from __future__ import annotations

import hashlib
import re
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offload.proto.client_hello import ClientHelloError, client_hello_body, parse_client_hello
from offload.proto.fingerprint import (
    EMPTY_HASH,
    FingerprintHeaders,
    Fingerprints,
    HelloFields,
    ja3,
    ja3_text,
    ja4,
    ja4_parts,
    read_hello,
)

GREASE_VALUES = [0x0A0A + 0x1010 * index for index in range(16)]
JA4_SHAPE = re.compile(r"t(13|12|11|10|s3|s2|d1|d2|d3|00)[di]\d{4}[0-9A-Za-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}")

# ------------------------------------------------------------------ building hellos (by hand)


def ext(kind: int, data: bytes = b"") -> bytes:
    return struct.pack("!HH", kind, len(data)) + data


def u16_vector(values: list[int], length_bytes: int = 2) -> bytes:
    data = b"".join(struct.pack("!H", value) for value in values)
    return len(data).to_bytes(length_bytes, "big") + data


def sni(name: bytes = b"www.example.com") -> bytes:
    entry = b"\x00" + struct.pack("!H", len(name)) + name
    return ext(0x0000, struct.pack("!H", len(entry)) + entry)


def alpn(*names: bytes) -> bytes:
    names_data = b"".join(bytes([len(name)]) + name for name in names)
    return ext(0x0010, struct.pack("!H", len(names_data)) + names_data)


def body_of(ciphers: list[int], extensions: list[bytes] | None, legacy: int = 0x0303,
            session_id: bytes = b"") -> bytes:
    body = (struct.pack("!H", legacy) + bytes(range(32)) + bytes([len(session_id)]) + session_id
            + u16_vector(ciphers) + b"\x01\x00")
    if extensions is not None:
        joined = b"".join(extensions)
        body += struct.pack("!H", len(joined)) + joined
    return body


def records(body: bytes, split: int | None = None) -> bytes:
    """The handshake message in one TLS record, or two when ``split`` is given."""
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    parts = [message] if split is None else [message[:split], message[split:]]
    return b"".join(b"\x16\x03\x01" + struct.pack("!H", len(part)) + part for part in parts)


def hex_list(text: str) -> list[int]:
    return [int(value, 16) for value in text.split(",")] if text else []


def from_ro(ro: str, *, alpn_value: bytes = b"h2", groups: list[int] | None = None,
            point_formats: bytes = b"\x00") -> bytes:
    """A ClientHello body with exactly the lists of a JA4_ro string (SNI, ALPN, versions and
    signature algorithms filled in from it; other extensions empty)."""
    a, cipher_text, ext_text, *rest = ro.split("_")
    version = {"13": 0x0304, "12": 0x0303, "11": 0x0302, "10": 0x0301}[a[1:3]]
    extensions = []
    for kind in hex_list(ext_text):
        if kind == 0x0000:
            extensions.append(sni())
        elif kind == 0x0010:
            extensions.append(alpn(alpn_value, b"http/1.1"))
        elif kind == 0x000D:
            extensions.append(ext(kind, u16_vector(hex_list(rest[0]) if rest else [])))
        elif kind == 0x002B:
            extensions.append(ext(kind, u16_vector([version], 1)))
        elif kind == 0x000A:
            extensions.append(ext(kind, u16_vector(groups or [0x001D])))
        elif kind == 0x000B:
            extensions.append(ext(kind, bytes([len(point_formats)]) + point_formats))
        else:
            extensions.append(ext(kind))
    return body_of(hex_list(cipher_text), extensions, legacy=min(version, 0x0303))


# ------------------------------------------------------------------ published vectors

# (JA4_ro, JA4, JA4_o) as FoxIO publishes them; the first is the specification's own example.
PUBLISHED = [
    ("t13d1516h2_1301,1302,1303,c02b,c02f,c02c,c030,cca9,cca8,c013,c014,009c,009d,002f,0035_"
     "001b,0000,0033,0010,4469,0017,002d,000d,0005,0023,0012,002b,ff01,000b,000a,0015_"
     "0403,0804,0401,0503,0805,0501,0806,0601",
     "t13d1516h2_8daaf6152771_e5627efa2ab1", "t13d1516h2_acb858a92679_18f69afefd3d"),
    ("t13d1516h2_1301,1302,1303,c02b,c02f,c02c,c030,cca9,cca8,c013,c014,009c,009d,002f,0035_"
     "ff01,0033,002d,0005,4469,000d,0010,0023,001b,002b,0000,0012,000a,0017,000b,0015_"
     "0403,0804,0401,0503,0805,0501,0806,0601",
     "t13d1516h2_8daaf6152771_e5627efa2ab1", "t13d1516h2_acb858a92679_8fc3c02244b2"),
    ("t12d190800_c02c,c02b,c030,c02f,c024,c023,c028,c027,c00a,c009,c014,c013,009d,009c,003d,"
     "003c,0035,002f,000a_0000,0005,000a,000b,000d,0023,0017,ff01_0804,0805,0806,0401,0501,0201,"
     "0403,0503,0203,0202,0601,0603",
     "t12d190800_d83cc789557e_7af1ed941c26", "t12d190800_e8d5f427a2c5_5e98404dd3cc"),
    ("t13d1715h2_1301,1303,1302,c02b,c02f,cca9,cca8,c02c,c030,c00a,c009,c013,c014,009c,009d,002f,"
     "0035_0000,0017,ff01,000a,000b,0023,0010,0005,0022,0033,002b,000d,002d,001c,0015_0403,0503,"
     "0603,0804,0805,0806,0401,0501,0601,0203,0201",
     "t13d1715h2_5b57614c22b0_3d5424432f57", "t13d1715h2_5b234860e130_014157ec0da2"),
    ("t12d4605h2_c030,c02c,c028,c024,c014,c00a,009f,006b,0039,cca9,cca8,ccaa,ff85,00c4,0088,0081,"
     "009d,003d,0035,00c0,0084,c02f,c02b,c027,c023,c013,c009,009e,0067,0033,00be,0045,009c,003c,"
     "002f,00ba,0041,c011,c007,0005,0004,c012,c008,0016,000a,00ff_0000,000b,000a,000d,0010_0601,"
     "0603,efef,0501,0503,0401,0403,eeee,eded,0301,0303,0201,0203",
     "t12d4605h2_85626a9a5f7f_aaf95bb78ec9", "t12d4605h2_644f5d117d98_094daec7ec8d"),
    ("t13d1615h2_1301,1302,1303,c02b,c02f,c02c,c030,cca9,cca8,c013,c014,009c,009d,002f,0035,000a_"
     "0000,0017,ff01,000a,000b,0023,0010,0005,000d,0012,0033,002d,002b,001b,0015_0403,0804,0401,"
     "0503,0805,0501,0806,0601,0201",
     "t13d1615h2_46e7e9700bed_45f260be83e2", "t13d1615h2_45f31bb0a5cc_b0e5d31d5128"),
]


@pytest.mark.parametrize(("ro", "expected", "expected_o"), PUBLISHED,
                         ids=[vector[1] + "/" + vector[2][-12:] for vector in PUBLISHED])
def test_published_ja4_vectors(ro: str, expected: str, expected_o: str) -> None:
    fields = read_hello(from_ro(ro))
    assert ja4(fields) == expected
    assert ja4(fields, original=True) == expected_o
    assert "_".join(ja4_parts(fields, original=True)) == ro


def test_the_specifications_raw_output() -> None:
    fields = read_hello(from_ro(PUBLISHED[0][0]))
    assert "_".join(ja4_parts(fields)) == (
        "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_"
        "0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_"
        "0403,0804,0401,0503,0805,0501,0806,0601")


def test_no_signature_algorithms_means_no_underscore() -> None:
    """The specification's example: the extension list alone hashes to 6d807ffa2a79."""
    fields = read_hello(from_ro(PUBLISHED[0][0]))
    bare = HelloFields(fields.legacy_version, fields.ciphers, fields.extensions, fields.alpn,
                       fields.versions, (), fields.groups, fields.point_formats)
    assert ja4(bare).endswith("_6d807ffa2a79")


def test_chrome_143_as_browserleaks_reports_it() -> None:
    """One handshake, three published values: its JA3 text, JA3 and JA4."""
    text = ("771,4865-4866-4867-49195-49199-49196-49200-52393-52392-49171-49172-156-157-47-53,"
            "45-51-16-65037-23-17613-0-11-10-43-65281-35-18-5-13-27,4588-29-23-24,0")
    ro = ("t13d1516h2_1301,1302,1303,c02b,c02f,c02c,c030,cca9,cca8,c013,c014,009c,009d,002f,0035_"
          "002d,0033,0010,fe0d,0017,44cd,0000,000b,000a,002b,ff01,0023,0012,0005,000d,001b_"
          "0403,0804,0401,0503,0805,0501,0806,0601")
    fields = read_hello(from_ro(ro, groups=[4588, 29, 23, 24]))
    assert ja3_text(fields) == text
    assert ja3(fields) == "98487aa16281980e7d1120d399efb6a4"
    assert ja4(fields) == "t13d1516h2_8daaf6152771_d8a2da3f94cd"
    assert ja4(fields, original=True) == "t13d1516h2_acb858a92679_f96a17c57971"


def test_salesforce_ja3_example() -> None:
    body = body_of([47, 53, 5, 10, 49161, 49162, 49171, 49172, 50, 56, 19, 4],
                   [sni(), ext(10, u16_vector([23, 24, 25])), ext(11, b"\x01\x00")], legacy=769)
    fields = read_hello(body)
    assert ja3_text(fields) == "769,47-53-5-10-49161-49162-49171-49172-50-56-19-4,0-10-11,23-24-25,0"
    assert ja3(fields) == "ada70206e40642a3e4461f35503241d5"


# ------------------------------------------------------------------ the spec's rules, one by one


@pytest.mark.parametrize(("value", "label"), [
    (b"h2", "h2"), (b"http/1.1", "h1"), (b"h", "hh"),
    # the specification's examples of a first or last byte that is not ASCII alphanumeric
    (b"\xab", "ab"), (b" ", "20"), (b"\xab\xcd", "ad"), (b" a", "21"), (b"0\xab", "3b"),
    (b"a ", "60"), (b"01\xab\xcd", "3d"), (b"0\xab\xcd1", "01"),
    (b"\xba\xad", "bd"),  # FoxIO's tls-non-ascii-alpn capture (see test_ja4_of_non_ascii_alpn)
])
def test_alpn_characters(value: bytes, label: str) -> None:
    fields = read_hello(body_of([0x1301], [alpn(value)]))
    assert ja4(fields)[8:10] == label


def test_no_alpn_is_00() -> None:
    assert ja4(read_hello(body_of([0x1301], [sni()])))[8:10] == "00"


def test_ja4_of_non_ascii_alpn() -> None:
    """The specification (since 2024-08) prints such an ALPN as hex digits; the outputs FoxIO
    published for this capture (``t13d151699_...``) come from implementations that printed
    "99" for any non-ASCII ALPN before that. offload follows the specification."""
    ro = PUBLISHED[1][0]
    assert ja4(read_hello(from_ro(ro, alpn_value=b"\xba\xad"))) == (
        "t13d1516bd_8daaf6152771_e5627efa2ab1")


@pytest.mark.parametrize(("versions", "legacy", "label"), [
    ([0x0304, 0x0303], 0x0303, "13"), ([0x0303, 0x0304], 0x0303, "13"),
    ([0x0A0A, 0x0304], 0x0303, "13"),              # GREASE ignored
    ([0x0303], 0x0303, "12"), (None, 0x0303, "12"), (None, 0x0302, "11"), (None, 0x0301, "10"),
    (None, 0x0300, "s3"), ([0x7F1C], 0x0303, "00"),  # a draft version: unknown
    ([0x1A1A], 0x0301, "10"),                      # only GREASE: as if absent
])
def test_version(versions: list[int] | None, legacy: int, label: str) -> None:
    extensions = [] if versions is None else [ext(0x002B, u16_vector(versions, 1))]
    assert ja4(read_hello(body_of([0x1301], extensions, legacy=legacy)))[1:3] == label


def test_sni_and_counts() -> None:
    body = body_of(list(range(1, 121)), [ext(0x1000 + index) for index in range(120)])
    fields = read_hello(body)
    assert ja4(fields)[:10] == "t12i999900"  # at most 99 of each; no SNI: "i"
    assert ja4(read_hello(body_of([0x1301, 0x00FF], [sni()])))[:10] == "t12d020100"


def test_empty_lists_hash_to_zeros() -> None:
    fields = read_hello(body_of([0x1301], [sni(), alpn(b"h2")]))
    assert ja4(fields) == f"t12d0102h2_{hashlib.sha256(b'1301').hexdigest()[:12]}_{EMPTY_HASH}"
    no_extensions = read_hello(body_of([0x1301], None))
    assert ja4(no_extensions).endswith("_" + EMPTY_HASH)
    assert ja3_text(no_extensions) == "771,4865,,,"


def test_hashes_are_of_the_raw_lists() -> None:
    ro = PUBLISHED[0][0]
    fields = read_hello(from_ro(ro))
    a, ciphers, extensions = ja4_parts(fields)
    assert ja4(fields).startswith(a + "_")
    b, c = ja4(fields).split("_")[1:]
    assert b == hashlib.sha256(ciphers.encode()).hexdigest()[:12]
    assert c == hashlib.sha256(extensions.encode()).hexdigest()[:12]


# ------------------------------------------------------------------ invariants (Hypothesis)

u16 = st.integers(0, 0xFFFF).filter(lambda value: value not in GREASE_VALUES)
extension_kinds = st.lists(u16.filter(lambda kind: kind not in (0x0000, 0x000A, 0x000B, 0x000D,
                                                                0x0010, 0x002B, 0x0029)),
                           max_size=20, unique=True)
"""Empty extensions of kinds nobody reads (pre_shared_key would have to come last)."""


@st.composite
def hellos(draw: st.DrawFn) -> tuple[list[int], list[bytes], list[int]]:
    """(ciphers, extensions, signature algorithms) of a well-formed hello."""
    ciphers = draw(st.lists(u16, min_size=1, max_size=40))
    signatures = draw(st.lists(u16, min_size=1, max_size=12))
    extensions = [ext(kind) for kind in draw(extension_kinds)]
    extensions += [sni(), alpn(b"h2", b"http/1.1"), ext(0x000D, u16_vector(signatures)),
                   ext(0x002B, u16_vector([0x0304, 0x0303], 1)),
                   ext(0x000A, u16_vector(draw(st.lists(u16, min_size=1, max_size=6)))),
                   ext(0x000B, b"\x01\x00")]
    return ciphers, draw(st.permutations(extensions)), signatures


def _with_grease(values: list[int], draw: st.DrawFn) -> list[int]:
    out = list(values)
    for _ in range(draw(st.integers(0, 3))):
        out.insert(draw(st.integers(0, len(out))), draw(st.sampled_from(GREASE_VALUES)))
    return out


@settings(deadline=None, max_examples=200)
@given(hello=hellos(), data=st.data())
def test_grease_changes_nothing(hello: tuple[list[int], list[bytes], list[int]],
                                data: st.DataObject) -> None:
    ciphers, extensions, signatures = hello
    plain = read_hello(body_of(ciphers, extensions))
    greased_extensions = [e if e[:2] != b"\x00\x0d" else ext(0x000D, u16_vector(
        _with_grease(signatures, data.draw))) for e in extensions]
    for _ in range(data.draw(st.integers(0, 2))):
        position = data.draw(st.integers(0, len(greased_extensions)))
        greased_extensions.insert(position, ext(data.draw(st.sampled_from(GREASE_VALUES)),
                                                data.draw(st.binary(max_size=4))))
    greased = read_hello(body_of(_with_grease(ciphers, data.draw), greased_extensions))
    assert ja4(greased) == ja4(plain)
    assert ja4(greased, original=True) == ja4(plain, original=True)
    assert ja3(greased) == ja3(plain)


@settings(deadline=None, max_examples=200)
@given(hello=hellos(), data=st.data())
def test_extension_order_does_not_change_ja4(hello: tuple[list[int], list[bytes], list[int]],
                                             data: st.DataObject) -> None:
    """Chrome shuffles its extensions on every connection: JA4 sorts them, JA3 does not."""
    ciphers, extensions, _ = hello
    shuffled = data.draw(st.permutations(extensions))
    first, second = read_hello(body_of(ciphers, extensions)), read_hello(body_of(ciphers, shuffled))
    assert ja4(first) == ja4(second)
    assert (ja3(first) == ja3(second)) == (extensions == shuffled)
    assert JA4_SHAPE.fullmatch(ja4(first))
    assert re.fullmatch(r"[0-9a-f]{32}", ja3(first))


@settings(deadline=None, max_examples=200)
@given(hello=hellos())
def test_agrees_with_the_client_hello_reader(hello: tuple[list[int], list[bytes], list[int]]) -> None:
    ciphers, extensions, _ = hello
    body = body_of(ciphers, extensions)
    wire = records(body, split=len(body) // 2)
    assert client_hello_body(wire) == body  # reassembled from two records
    parsed = parse_client_hello(wire)
    assert parsed is not None
    label = ja4(read_hello(body))
    assert label[3] == ("d" if parsed.server_name is not None else "i")
    assert label[1:3] == "13" and label[8:10] == "h2"


def _mutations(body: bytes) -> st.SearchStrategy[bytes]:
    return st.builds(lambda at, value: body[: at % len(body)] + bytes([value]) + body[at % len(body) + 1 :],
                     st.integers(min_value=0), st.integers(0, 255))


VALID = from_ro(PUBLISHED[0][0])


@settings(deadline=None, max_examples=500)
@given(st.one_of(st.binary(max_size=400), _mutations(VALID),
                 st.integers(0, len(VALID)).map(lambda cut: VALID[:cut]),
                 st.binary(max_size=60).map(lambda tail: VALID + tail)))
def test_any_bytes_give_fields_or_client_hello_error(data: bytes) -> None:
    try:
        fields = read_hello(data)
    except ClientHelloError:
        assert Fingerprints(data).ja4 is None
        assert Fingerprints(data, with_ja3=True).ja3 is None
        return
    assert JA4_SHAPE.fullmatch(ja4(fields))
    assert Fingerprints(data).ja4 == ja4(fields)


@pytest.mark.parametrize("body", [
    VALID[:34],                                                     # no session id length
    body_of([0x1301], None)[:-3],                                   # cut in the compression
    body_of([0x1301], [alpn(b"h2")])[:-1],                          # extension runs past
    body_of([0x1301], [ext(0x0010, b"\x00\x00")]),                  # empty ALPN list
    body_of([0x1301], [ext(0x0010, b"\x00\x03\x00h2")]),            # empty protocol name
    body_of([0x1301], [ext(0x000D, b"\x00\x03\x04\x03\x05")]),      # odd signature list
    body_of([0x1301], [ext(0x000B, b"\x02\x00")]),                  # point formats short
    body_of([0x1301], [ext(0x002B, b"\x04\x03\x04")]),              # versions past the end
    VALID[:35] + b"\x00\x03\x13\x01\x13",                           # odd cipher list
])
def test_malformed_hellos_give_no_fingerprint(body: bytes) -> None:
    with pytest.raises(ClientHelloError):
        read_hello(body)
    assert Fingerprints(body).ja4 is None


# ------------------------------------------------------------------ the lazy holder, the header


def test_fingerprints_are_computed_once_and_the_hello_let_go() -> None:
    fingerprints = Fingerprints(VALID, with_ja3=True)
    assert fingerprints.ja3 == ja3(read_hello(VALID))
    assert fingerprints.ja4 == PUBLISHED[0][1]
    assert fingerprints._body is None  # memory: the hello is not kept once read


def test_ja3_only_when_asked_for() -> None:
    """JA3 costs as much again as JA4: computed only for frontends that read it."""
    fingerprints = Fingerprints(VALID)
    assert fingerprints.ja4 == PUBLISHED[0][1]
    assert fingerprints.ja3 is None


def test_fingerprint_headers() -> None:
    fingerprints = Fingerprints(VALID, with_ja3=True)
    headers = FingerprintHeaders.of("X-JA4", "X-JA3")
    assert headers.names == {b"x-ja4", b"x-ja3"}
    assert headers.fields(fingerprints) == [(b"X-JA4", PUBLISHED[0][1].encode()),
                                            (b"X-JA3", ja3(read_hello(VALID)).encode())]
    assert headers.fields(None) == []
    assert FingerprintHeaders.of("X-JA4", "").fields(Fingerprints(b"broken")) == []
    assert FingerprintHeaders.of("", "").names == frozenset()
