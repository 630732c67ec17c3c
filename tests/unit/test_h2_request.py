"""HTTP/2 request heads to the request path's Request: RFC 9113 §8, refused, never repaired."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offload.errors import ProtocolError
from offload.proto.h2_request import (
    BodyCount,
    HeadLimits,
    MalformedRequest,
    request_from_headers,
    request_trailers,
)

LIMITS = HeadLimits(max_header_size=4096, max_header_count=10, max_target=200,
                    max_body_size=1000)
BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"example.test"),
        (b":path", b"/a?b=1")]


def translate(fields, end_stream: bool = True):
    return request_from_headers(list(fields), end_stream, LIMITS)


def test_a_plain_get():
    request = translate([*BASE, (b"accept", b"*/*")])
    assert (request.method, request.target, request.host, request.version) == (
        b"GET", b"/a?b=1", b"example.test", b"2")
    assert request.headers == [(b"host", b"example.test"), (b"accept", b"*/*")]
    assert not request.has_body and request.keep_alive and not request.websocket


def test_cookie_crumbs_are_joined_and_counted():
    request = translate([*BASE, (b"cookie", b"a=1"), (b"x", b"y"), (b"cookie", b"b=2")])
    assert request.headers == [(b"host", b"example.test"), (b"x", b"y"),
                               (b"cookie", b"a=1; b=2")]
    with pytest.raises(ProtocolError) as caught:
        translate(BASE + [(b"cookie", b"c=%d" % i) for i in range(11)])
    assert caught.value.status == 431


def test_host_alone_is_the_authority_and_a_disagreeing_one_is_refused():
    fields = [f for f in BASE if f[0] != b":authority"] + [(b"host", b"other.test:8443")]
    assert translate(fields).host == b"other.test:8443"
    with pytest.raises(ProtocolError) as caught:
        translate([*BASE, (b"host", b"evil.test")])
    assert (caught.value.status, caught.value.reason) == (400, "bad_host")
    assert translate([*BASE, (b"host", b"EXAMPLE.test")]).host == b"example.test"


@pytest.mark.parametrize("fields", [
    [f for f in BASE if f[0] != b":method"],
    [f for f in BASE if f[0] != b":scheme"],
    [f for f in BASE if f[0] != b":path"],
    [*BASE, (b":path", b"/again")],
    [*BASE, (b":method", b"POST")],
    [*BASE, (b":status", b"200")],
    [*BASE, (b":protocol", b"websocket")],
    [BASE[0], (b"accept", b"*/*"), *BASE[1:]],
    [*BASE, (b"Accept", b"*/*")],
    [*BASE, (b"connection", b"keep-alive")],
    [*BASE, (b"keep-alive", b"timeout=5")],
    [*BASE, (b"proxy-connection", b"keep-alive")],
    [*BASE, (b"transfer-encoding", b"chunked")],
    [*BASE, (b"upgrade", b"h2c")],
    [*BASE, (b"te", b"gzip")],
    [*BASE, (b"x", b"a\r\nInjected: 1")],
    [*BASE, (b"x", b"a\nb")],
    [*BASE, (b"x", b"a\x00b")],
    [*BASE, (b"x", b" padded")],
    [*BASE, (b"x", b"padded\t")],
    [*BASE, (b"x y", b"v")],
    [*BASE, (b"", b"v")],
    [*BASE, (b"content-length", b"1"), (b"content-length", b"2")],
    [*BASE, (b"content-length", b"-1")],
], ids=[
    "no-method", "no-scheme", "no-path", "two-paths", "two-methods", "status", "protocol",
    "pseudo-after-regular", "upper-case-name", "connection", "keep-alive", "proxy-connection",
    "transfer-encoding", "upgrade", "te-gzip", "crlf-in-value", "lf-in-value", "nul-in-value",
    "leading-space", "trailing-tab", "space-in-name", "empty-name", "two-lengths",
    "negative-length",
])
def test_malformed_heads_reset_the_stream(fields):
    with pytest.raises(MalformedRequest):
        translate(fields, end_stream=False)


@pytest.mark.parametrize(("fields", "status"), [
    ([(b":method", b"CONNECT"), (b":authority", b"example.test:443")], 405),
    ([*BASE[:1], (b":scheme", b"http"), *BASE[2:]], 400),
    ([(b":method", b"G E T"), *BASE[1:]], 400),
    ([*BASE[:3], (b":path", b"relative")], 400),
    ([*BASE[:3], (b":path", b"/a#frag")], 400),
    ([*BASE[:3], (b":path", b"/caf\xc3\xa9")], 400),
    ([*BASE[:3], (b":path", b"*")], 400),
    ([*BASE[:3], (b":path", b"/" + b"a" * 300)], 414),
    ([*BASE[:2], (b":path", b"/")], 400),
    ([*BASE[:2], (b":authority", b"user@example.test"), (b":path", b"/")], 400),
    ([*BASE[:2], (b":authority", b"exa mple"), (b":path", b"/")], 400),
    ([*BASE, (b"host", b"a"), (b"host", b"a")], 400),
    ([*BASE, (b"expect", b"teapot")], 417),
    ([*BASE, (b"content-length", b"5000")], 413),
    (BASE + [(b"x%d" % i, b"v") for i in range(11)], 431),
    ([*BASE, (b"x", b"v" * 5000)], 431),
], ids=["connect", "http-scheme", "bad-method", "relative-path", "fragment", "non-ascii",
        "asterisk-not-options", "long-target", "no-authority", "userinfo", "bad-authority",
        "two-hosts", "expect-teapot", "too-large-body", "too-many-fields", "too-large-head"])
def test_refusals_with_an_answer(fields, status):
    with pytest.raises(ProtocolError) as caught:
        translate(fields, end_stream=False)
    assert not isinstance(caught.value, MalformedRequest)
    assert caught.value.status == status


def test_options_asterisk_and_te_trailers():
    request = translate([(b":method", b"OPTIONS"), *BASE[1:3], (b":path", b"*"),
                         (b"te", b"trailers")])
    assert request.target == b"*"
    assert (b"te", b"trailers") not in request.headers


def test_bodies_framed_for_the_http11_hop():
    with_length = translate([*BASE, (b"content-length", b"5")], end_stream=False)
    assert (with_length.content_length, with_length.chunked) == (5, False)
    unknown = translate(BASE, end_stream=False)
    assert (unknown.content_length, unknown.chunked, unknown.has_body) == (None, True, True)
    with pytest.raises(MalformedRequest):
        translate([*BASE, (b"content-length", b"5")], end_stream=True)
    assert translate([*BASE, (b"content-length", b"0")]).content_length == 0


def test_expect_continue_is_ours_to_say():
    request = translate([*BASE, (b"expect", b"100-continue"), (b"content-length", b"3")],
                        end_stream=False)
    assert request.expect_continue
    assert all(name != b"expect" for name, _ in request.headers)


@pytest.mark.parametrize(("length", "pieces", "ok"), [
    (5, [2, 3], True), (5, [2, 2], False), (5, [6], False), (None, [400, 600], True),
    (None, [600, 600], False), (0, [], True), (0, [1], False),
])
def test_body_count_holds_the_body_to_its_length(length, pieces, ok):
    fields = BASE + ([(b"content-length", b"%d" % length)] if length is not None else [])
    count = BodyCount(translate(fields, end_stream=False), LIMITS)
    try:
        for piece in pieces:
            count.data(piece)
        count.end()
    except ProtocolError:
        assert not ok
    else:
        assert ok


_names = st.one_of(st.sampled_from([b":method", b":scheme", b":authority", b":path", b"host",
                                    b"cookie", b"content-length", b"te", b"connection",
                                    b"x-a", b"Upper", b":bogus"]),
                   st.binary(max_size=8))
_values = st.one_of(st.sampled_from([b"GET", b"https", b"example.test", b"/", b"trailers",
                                     b"5", b"a\r\nb", b" x"]), st.binary(max_size=12))


@given(st.lists(st.tuples(_names, _values), max_size=12), st.booleans())
def test_any_head_is_a_request_or_a_refusal(fields, end_stream):
    """Whatever a client sends, the result is a request the HTTP/1.1 hop can carry safely
    (no CR/LF/NUL anywhere, names are lower-case tokens, one Host), or a refusal."""
    try:
        request = request_from_headers(fields, end_stream, LIMITS)
    except ProtocolError as error:
        assert 400 <= error.status <= 599
        return
    for name, value in request.headers:
        assert name == name.lower() and b"\r" not in value and b"\n" not in value
        assert b"\x00" not in value and b":" not in name[:1]
    assert [name for name, _ in request.headers].count(b"host") == 1
    assert b"\r" not in request.target and b" " not in request.target


@pytest.mark.parametrize("fields", [
    [(b":path", b"/x")],
    [(b"X-Upper", b"1")],
    [(b"x a", b"1")],
    [(b"x-a", b"1\r\nGET /smuggled HTTP/1.1")],
    [(b"x-a", b"1\n")],
    [(b"x-a", b" padded")],
    [(b"transfer-encoding", b"chunked")],
    [(b"connection", b"close")],
])
def test_malformed_trailers_reset_the_stream(fields):
    with pytest.raises(MalformedRequest):
        request_trailers(fields, HeadLimits())


def test_trailers_lose_what_the_http11_parser_would_drop():
    trailers = request_trailers([(b"x-forwarded-for", b"6.6.6.6"), (b"host", b"evil"),
                                 (b"authorization", b"Basic x"), (b"te", b"trailers"),
                                 (b"x-checksum", b"abc")], HeadLimits())
    assert trailers == [(b"x-checksum", b"abc")]
    with pytest.raises(ProtocolError) as refused:
        request_trailers([(b"x-%d" % i, b"1") for i in range(5)], HeadLimits(max_header_count=4))
    assert refused.value.status == 431
