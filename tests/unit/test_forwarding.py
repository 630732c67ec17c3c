"""Head rewriting: exact bytes, hop-by-hop removal, forwarding trust, framing, offload's own
responses, and a property test that every backend head parses as exactly one request."""

from __future__ import annotations

from ipaddress import ip_network

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offload.errors import ProtocolError
from offload.proto.forwarding import ClientFacts, ForwardPolicy, ResponsePolicy
from offload.proto.http1_write import (
    backend_request_head,
    client_response_head,
    error_response,
    redirect_response,
)
from offload.proto.http_types import Request, Response

NETS = (ip_network("10.0.0.0/8"), ip_network("2001:db8::/32"))
UNTRUSTED = ClientFacts("203.0.113.9", 50000, 443)
PROXY = ClientFacts("10.1.2.3", 50001, 8443)
PLAIN = ForwardPolicy()
TRUSTING = ForwardPolicy(trusted_proxies=NETS)
RID = b"rid-0001"
NO_POLICY = ResponsePolicy()

# Written out from RFC 9110 §7.6.1 / RFC 9112, not taken from the module under test.
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade",
              b"http2-settings", b"transfer-encoding", b"content-length"}


# ------------------------------------------------------------------ helpers (independent of src)


def req(headers: list[tuple[bytes, bytes]] | None = None, **kw: object) -> Request:
    kw.setdefault("host", b"example.com")
    method = kw.pop("method", b"GET")
    target = kw.pop("target", b"/")
    version = kw.pop("version", b"1.1")
    return Request(method, target, version, list(headers or []), **kw)  # type: ignore[arg-type]


def resp(status: int = 200, headers: list[tuple[bytes, bytes]] | None = None,
         **kw: object) -> Response:
    reason = kw.pop("reason", b"OK")
    return Response(status, reason, b"1.1", list(headers or []), **kw)  # type: ignore[arg-type]


def split_head(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """(start line, fields) of a head, split by hand; fails unless it ends with CRLF CRLF."""
    assert head.endswith(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    pairs = []
    for line in lines[1:]:
        name, sep, value = line.partition(b": ")
        assert sep, line
        pairs.append((name, value))
    return lines[0], pairs


def values(head: bytes, name: bytes) -> list[bytes]:
    return [v for n, v in split_head(head)[1] if n.lower() == name]


def lower_names(head: bytes) -> list[bytes]:
    return [n.lower() for n, _ in split_head(head)[1]]


def forward(request: Request, client: ClientFacts = UNTRUSTED,
            policy: ForwardPolicy = PLAIN) -> bytes:
    return backend_request_head(request, client, policy, RID)[0]


def respond(response: Response, framing: str = "length", *, keep_alive: bool = True,
            version: bytes = b"1.1", policy: ResponsePolicy = NO_POLICY) -> bytes:
    return client_response_head(response, framing=framing, keep_alive=keep_alive,
                                client_version=version, policy=policy)


class Collector:
    """httptools callbacks, recording every message."""

    def __init__(self) -> None:
        self.begun = 0
        self.messages: list[tuple[list[tuple[bytes, bytes]], bytes]] = []
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""

    def on_message_begin(self) -> None:
        self.begun += 1
        self.headers, self.body = [], b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.messages.append((self.headers, self.body))


def parse_requests(data: bytes) -> Collector:
    collector = Collector()
    parser = httptools.HttpRequestParser(collector)
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        pass
    return collector


def parse_response(data: bytes) -> tuple[int, Collector]:
    collector = Collector()
    parser = httptools.HttpResponseParser(collector)
    parser.feed_data(data)
    return parser.get_status_code(), collector


# ------------------------------------------------------------------------ request: exact bytes


def test_request_exact_bytes() -> None:
    request = req([(b"Host", b"example.com"), (b"User-Agent", b"curl/8.5"),
                   (b"Accept", b"*/*"), (b"Connection", b"keep-alive")],
                  target=b"/a?b=1")
    head, rid = backend_request_head(request, UNTRUSTED, PLAIN, RID)
    assert head == (b"GET /a?b=1 HTTP/1.1\r\n"
                    b"Host: example.com\r\n"
                    b"User-Agent: curl/8.5\r\n"
                    b"Accept: */*\r\n"
                    b"X-Forwarded-For: 203.0.113.9\r\n"
                    b"X-Forwarded-Proto: https\r\n"
                    b"X-Forwarded-Host: example.com\r\n"
                    b"X-Forwarded-Port: 443\r\n"
                    b"X-Request-ID: rid-0001\r\n"
                    b"\r\n")
    assert rid == RID


def test_request_exact_bytes_with_body_and_forwarded() -> None:
    request = req([(b"Host", b"api.example.com:8443"), (b"Content-Type", b"application/json"),
                   (b"Content-Length", b"7")],
                  method=b"POST", target=b"/v1/items", host=b"api.example.com:8443",
                  content_length=7)
    policy = ForwardPolicy(forwarded=True)
    head = forward(request, ClientFacts("2001:db8::1", 1, 443), policy)
    assert head == (b"POST /v1/items HTTP/1.1\r\n"
                    b"Host: api.example.com:8443\r\n"
                    b"Content-Type: application/json\r\n"
                    b"X-Forwarded-For: 2001:db8::1\r\n"
                    b"X-Forwarded-Proto: https\r\n"
                    b"X-Forwarded-Host: api.example.com:8443\r\n"
                    b"X-Forwarded-Port: 443\r\n"
                    b'Forwarded: for="[2001:db8::1]";proto=https;host="api.example.com:8443"\r\n'
                    b"X-Request-ID: rid-0001\r\n"
                    b"Content-Length: 7\r\n"
                    b"\r\n")


def test_http10_client_is_forwarded_as_http11_with_empty_host() -> None:
    head = forward(req([(b"Accept", b"*/*")], version=b"1.0", host=b""))
    start, fields = split_head(head)
    assert start == b"GET / HTTP/1.1"
    assert fields[0] == (b"Host", b"")  # RFC 9112 §3.2: present, empty
    assert b"x-forwarded-host" not in lower_names(head)
    assert len(parse_requests(head).messages) == 1


# ---------------------------------------------------------------------- request: hop-by-hop


def test_hop_by_hop_fields_are_removed() -> None:
    request = req([(b"Host", b"example.com"), (b"Keep-Alive", b"timeout=5"),
                   (b"Proxy-Connection", b"keep-alive"), (b"TE", b"trailers"),
                   (b"Trailer", b"X-Checksum"), (b"Upgrade", b"h2c"),
                   (b"HTTP2-Settings", b"AAMAAABkAAQAoAAAAAIAAAAA"), (b"X-Keep", b"1"),
                   (b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"3"),
                   (b"Connection", b"Upgrade, HTTP2-Settings, TE")])
    head = forward(request)
    assert not HOP_BY_HOP & set(lower_names(head))
    assert values(head, b"x-keep") == [b"1"]
    assert values(head, b"host") == [b"example.com"]


@pytest.mark.parametrize("chunked", [True, False])
def test_trailer_goes_with_a_chunked_request_body(chunked: bool) -> None:
    request = req([(b"Trailer", b"X-Checksum")], chunked=chunked,
                  content_length=None if chunked else 3)
    assert values(forward(request), b"trailer") == ([b"X-Checksum"] if chunked else [])


@pytest.mark.parametrize(("framing", "forwarded"), [("chunked", True), ("length", False),
                                                    ("close", False), ("none", False)])
def test_trailer_goes_with_a_chunked_response_body(framing: str, forwarded: bool) -> None:
    response = resp(200, [(b"Trailer", b"Server-Timing"), (b"Transfer-Encoding", b"chunked")],
                    chunked=True, content_length=3 if framing == "length" else None)
    version = b"1.0" if framing == "close" else b"1.1"
    head = client_response_head(response, framing=framing, keep_alive=True,
                                client_version=version, policy=NO_POLICY)
    assert values(head, b"trailer") == ([b"Server-Timing"] if forwarded else [])


def test_fields_named_by_connection_are_removed_wherever_they_are() -> None:
    request = req([(b"X-Secret", b"before"), (b"X-Keep", b"1"),
                   (b"Connection", b"close, X-Secret"), (b"x-secret", b"after"),
                   (b"connection", b"x-other"), (b"X-Other", b"2"), (b"X-Keep", b"3")])
    head = forward(request)
    assert b"x-secret" not in lower_names(head)
    assert b"x-other" not in lower_names(head)
    assert values(head, b"x-keep") == [b"1", b"3"]


def test_connection_cannot_remove_the_fields_offload_adds() -> None:
    request = req([(b"Connection", b"Host, X-Forwarded-For, X-Request-ID, Content-Length"),
                   (b"X-Forwarded-For", b"10.9.9.9")], content_length=2)
    head = forward(request, PROXY, TRUSTING)
    assert values(head, b"host") == [b"example.com"]
    # the trusted proxy declared its X-Forwarded-For hop-by-hop: only our hop remains
    assert values(head, b"x-forwarded-for") == [b"10.1.2.3"]
    assert values(head, b"x-request-id") == [RID]
    assert values(head, b"content-length") == [b"2"]


OURS = [b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port",
        b"forwarded", b"x-request-id", b"client-cert", b"x-ssl-client-verify", b"x-offload-tag"]
"""Every field offload adds to a request (with forwarded on, a client identity and a tag)."""


@pytest.mark.parametrize("client", [UNTRUSTED, PROXY], ids=["untrusted", "trusted-proxy"])
@pytest.mark.parametrize("named", [*OURS, b"all"])
def test_a_clients_connection_field_never_removes_what_offload_adds(client: ClientFacts,
                                                                    named: bytes) -> None:
    """Hop-by-hop removal applies to the client's fields only: ours are written after it."""
    tokens = b", ".join(OURS) if named == b"all" else named
    identity = ClientFacts(client.address, client.port, client.local_port,
                           identity=[(b"Client-Cert", b":Zm9v:"), (b"X-SSL-Client-Verify", b"SUCCESS")])
    request = req([(b"Connection", b"keep-alive, " + tokens), (b"Accept", b"*/*")])
    request.added = ((b"X-Offload-Tag", b"api-call"),)
    policy = ForwardPolicy(trusted_proxies=NETS, forwarded=True)
    head = forward(request, identity, policy)
    names = lower_names(head)
    for field in OURS:
        assert names.count(field) == 1, (field, head)
    assert values(head, b"x-offload-tag") == [b"api-call"]
    assert values(head, b"accept") == [b"*/*"]


def test_duplicate_fields_keep_their_order_and_spelling() -> None:
    request = req([(b"Accept", b"a"), (b"x-Custom-HEADER", b"1"), (b"accept", b"b"),
                   (b"Cookie", b"k=1"), (b"Cookie", b"k=2"), (b"ACCEPT", b"c")])
    _, fields = split_head(forward(request))
    assert fields[1:7] == [(b"Accept", b"a"), (b"x-Custom-HEADER", b"1"), (b"accept", b"b"),
                           (b"Cookie", b"k=1"), (b"Cookie", b"k=2"), (b"ACCEPT", b"c")]


def test_a_line_break_in_a_value_is_refused() -> None:
    request = req([(b"X-Evil", b"a\r\nContent-Length: 5")])
    with pytest.raises(ProtocolError) as caught:
        forward(request)
    assert caught.value.status == 400


# ------------------------------------------------------------------- request: forwarding trust


@pytest.mark.parametrize(("address", "trusted"), [
    ("10.0.0.1", True),
    ("10.255.255.255", True),
    ("11.0.0.1", False),
    ("::ffff:10.0.0.1", True),
    ("::FFFF:10.0.0.1", True),
    ("::ffff:11.0.0.1", False),
    ("2001:db8::1", True),
    ("2001:db8:ffff::1", True),
    ("2001:db9::1", False),
    ("fe80::1%eth0", False),
    ("[2001:db8::1]", False),
    ("10.0.0.1.5", False),
    ("not an address", False),
    ("", False),
])
def test_trusts(address: str, trusted: bool) -> None:
    assert TRUSTING.trusts(address) is trusted
    assert PLAIN.trusts(address) is False


def test_trusts_ipv6_zone_and_single_host() -> None:
    policy = ForwardPolicy(trusted_proxies=(ip_network("fe80::/10"), ip_network("192.0.2.7/32")))
    assert policy.trusts("fe80::1%eth0")
    assert policy.trusts("192.0.2.7")
    assert not policy.trusts("192.0.2.8")


SPOOF = [(b"X-Forwarded-For", b"1.2.3.4"), (b"X-Forwarded-Proto", b"http"),
         (b"X-Forwarded-Host", b"evil.example"), (b"X-Forwarded-Port", b"80"),
         (b"Forwarded", b"for=1.2.3.4"), (b"X-Request-ID", b"spoofed")]


def test_untrusted_client_cannot_spoof_forwarding_fields() -> None:
    head, rid = backend_request_head(req(SPOOF), UNTRUSTED, TRUSTING, RID)
    assert values(head, b"x-forwarded-for") == [b"203.0.113.9"]
    assert values(head, b"x-forwarded-proto") == [b"https"]
    assert values(head, b"x-forwarded-host") == [b"example.com"]
    assert values(head, b"x-forwarded-port") == [b"443"]
    assert values(head, b"forwarded") == []
    assert values(head, b"x-request-id") == [RID]
    assert rid == RID


def test_trusted_proxy_fields_are_kept_and_extended() -> None:
    request = req([(b"X-Forwarded-For", b"198.51.100.1"), (b"X-Forwarded-Proto", b"http"),
                   (b"X-Forwarded-For", b"198.51.100.2, 192.0.2.3"),
                   (b"X-Forwarded-Host", b"public.example"), (b"Forwarded", b"for=198.51.100.1"),
                   (b"x-request-id", b"upstream-42")])
    head, rid = backend_request_head(request, PROXY, TRUSTING, RID)
    assert values(head, b"x-forwarded-for") == [b"198.51.100.1, 198.51.100.2, 192.0.2.3, 10.1.2.3"]
    assert values(head, b"x-forwarded-proto") == [b"http"]
    assert values(head, b"x-forwarded-host") == [b"public.example"]
    assert values(head, b"x-forwarded-port") == [b"8443"]  # absent: ours
    assert values(head, b"forwarded") == [b"for=198.51.100.1"]  # passed through (forwarded off)
    assert values(head, b"x-request-id") == [b"upstream-42"]
    assert rid == b"upstream-42"


def test_trusted_proxy_without_fields_gets_ours() -> None:
    head, rid = backend_request_head(req(), PROXY, TRUSTING, RID)
    assert values(head, b"x-forwarded-for") == [b"10.1.2.3"]
    assert values(head, b"x-forwarded-proto") == [b"https"]
    assert values(head, b"x-forwarded-host") == [b"example.com"]
    assert values(head, b"x-request-id") == [RID]
    assert rid == RID


@pytest.mark.parametrize(("address", "trusted", "xff"), [
    ("2001:db8::7", True, b"192.0.2.1, 2001:db8::7"),
    ("2001:db9::7", False, b"2001:db9::7"),
    ("::ffff:10.0.0.1", True, b"192.0.2.1, 10.0.0.1"),
    ("::ffff:203.0.113.9", False, b"203.0.113.9"),
    ("fe80::1%eth0", False, b"fe80::1"),
])
def test_xff_ipv6_and_mapped(address: str, trusted: bool, xff: bytes) -> None:
    head = forward(req([(b"X-Forwarded-For", b"192.0.2.1")]), ClientFacts(address, 1, 443),
                   TRUSTING)
    assert TRUSTING.trusts(address) is trusted
    assert values(head, b"x-forwarded-for") == [xff]


@pytest.mark.parametrize(("address", "host", "element"), [
    ("203.0.113.9", b"example.com", b"for=203.0.113.9;proto=https;host=example.com"),
    ("2001:db8::1", b"example.com", b'for="[2001:db8::1]";proto=https;host=example.com'),
    ("::ffff:192.0.2.1", b"example.com", b"for=192.0.2.1;proto=https;host=example.com"),
    ("203.0.113.9", b"example.com:8443", b'for=203.0.113.9;proto=https;host="example.com:8443"'),
    ("203.0.113.9", b"[2001:db8::2]", b'for=203.0.113.9;proto=https;host="[2001:db8::2]"'),
    ("203.0.113.9", b"", b"for=203.0.113.9;proto=https"),
    ("", b"example.com", b"for=unknown;proto=https;host=example.com"),
])
def test_forwarded_formatting(address: str, host: bytes, element: bytes) -> None:
    policy = ForwardPolicy(forwarded=True)
    head = forward(req([(b"Forwarded", b"for=6.6.6.6")], host=host), ClientFacts(address, 1, 443),
                   policy)
    assert values(head, b"forwarded") == [element]


def test_forwarded_appends_to_trusted_chain() -> None:
    policy = ForwardPolicy(trusted_proxies=NETS, forwarded=True)
    request = req([(b"Forwarded", b"for=192.0.2.60;proto=http"), (b"forwarded", b"for=198.51.100.17")])
    head = forward(request, PROXY, policy)
    assert values(head, b"forwarded") == [
        b"for=192.0.2.60;proto=http, for=198.51.100.17, for=10.1.2.3;proto=https;host=example.com"]


def test_forwarded_off_drops_untrusted_and_passes_trusted_in_place() -> None:
    request = req([(b"Forwarded", b"for=192.0.2.60"), (b"X-After", b"1")])
    assert values(forward(request, UNTRUSTED, TRUSTING), b"forwarded") == []
    _, fields = split_head(forward(request, PROXY, TRUSTING))
    assert fields[1:3] == [(b"Forwarded", b"for=192.0.2.60"), (b"X-After", b"1")]


def test_request_id_header_name_is_configurable() -> None:
    policy = ForwardPolicy(trusted_proxies=NETS, request_id_header=b"X-Trace")
    request = req([(b"x-trace", b"abc"), (b"X-Request-ID", b"passes")])
    head, rid = backend_request_head(request, PROXY, policy, RID)
    assert (values(head, b"x-trace"), rid) == ([b"abc"], b"abc")
    assert values(head, b"x-request-id") == [b"passes"]
    head, rid = backend_request_head(request, UNTRUSTED, policy, RID)
    assert (values(head, b"x-trace"), rid) == ([RID], RID)


@pytest.mark.parametrize("name", [b"", b"X Bad", b"Host", b"Connection", b"x-forwarded-for",
                                  b"Forwarded", b"Content-Length"])
def test_request_id_header_must_be_a_free_token(name: bytes) -> None:
    with pytest.raises(ValueError, match="request id header"):
        ForwardPolicy(request_id_header=name)


# ------------------------------------------------------------ request: framing, upgrade, expect


@pytest.mark.parametrize(("kwargs", "framing"), [
    ({"content_length": 0}, [(b"content-length", b"0")]),
    ({"content_length": 12345}, [(b"content-length", b"12345")]),
    ({"chunked": True}, [(b"transfer-encoding", b"chunked")]),
    ({}, []),
])
def test_request_framing(kwargs: dict[str, object], framing: list[tuple[bytes, bytes]]) -> None:
    request = req([(b"Content-Length", b"99"), (b"Transfer-Encoding", b"gzip, chunked")],
                  method=b"POST", **kwargs)
    _, fields = split_head(forward(request))
    assert [(n.lower(), v) for n, v in fields
            if n.lower() in (b"content-length", b"transfer-encoding")] == framing
    if framing:
        assert fields[-1][0].lower() == framing[0][0]


def test_websocket_upgrade_is_forwarded() -> None:
    request = req([(b"Upgrade", b"websocket"), (b"Connection", b"keep-alive, Upgrade"),
                   (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
                   (b"Sec-WebSocket-Version", b"13"), (b"Sec-WebSocket-Protocol", b"chat")],
                  websocket=True)
    head = forward(request)
    assert values(head, b"connection") == [b"Upgrade"]
    assert values(head, b"upgrade") == [b"websocket"]
    assert values(head, b"sec-websocket-key") == [b"dGhlIHNhbXBsZSBub25jZQ=="]
    assert values(head, b"sec-websocket-version") == [b"13"]
    assert values(head, b"sec-websocket-protocol") == [b"chat"]


def test_upgrade_without_websocket_is_not_forwarded() -> None:
    head = forward(req([(b"Upgrade", b"h2c"), (b"Connection", b"Upgrade, HTTP2-Settings")]))
    assert not {b"connection", b"upgrade"} & set(lower_names(head))


@pytest.mark.parametrize("expect_continue", [True, False])
def test_expect(expect_continue: bool) -> None:
    request = req([(b"Expect", b"100-Continue"), (b"expect", b"100-continue")], method=b"PUT",
                  content_length=10, expect_continue=expect_continue)
    head = forward(request)
    assert values(head, b"expect") == ([b"100-continue"] if expect_continue else [])


# ---------------------------------------------------------------------------- response side


BACKEND = [(b"Date", b"Mon, 01 Jan 2024 00:00:00 GMT"), (b"Server", b"gunicorn"),
           (b"Content-Type", b"text/html"), (b"Content-Length", b"12"),
           (b"Connection", b"keep-alive"), (b"Keep-Alive", b"timeout=5"),
           (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")]


def test_response_exact_bytes() -> None:
    head = respond(resp(200, BACKEND, content_length=12))
    assert head == (b"HTTP/1.1 200 OK\r\n"
                    b"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
                    b"Server: gunicorn\r\n"
                    b"Content-Type: text/html\r\n"
                    b"Set-Cookie: a=1\r\n"
                    b"Set-Cookie: b=2\r\n"
                    b"Content-Length: 12\r\n"
                    b"\r\n")
    status, collector = parse_response(head + b"hello world!")
    assert status == 200
    assert collector.messages[0][1] == b"hello world!"


def test_response_exact_bytes_with_policy_and_close() -> None:
    policy = ResponsePolicy(hsts=b"max-age=63072000", server=b"offload")
    response = resp(404, [(b"Strict-Transport-Security", b"max-age=0"), (b"Server", b"nginx"),
                          (b"Transfer-Encoding", b"chunked")], reason=b"Not Found", chunked=True)
    head = respond(response, "chunked", keep_alive=False, policy=policy)
    assert head == (b"HTTP/1.1 404 Not Found\r\n"
                    b"Server: offload\r\n"
                    b"Strict-Transport-Security: max-age=63072000\r\n"
                    b"Transfer-Encoding: chunked\r\n"
                    b"Connection: close\r\n"
                    b"\r\n")


def test_response_hop_by_hop_and_connection_named_fields_are_removed() -> None:
    response = resp(200, [(b"X-Secret", b"1"), (b"Connection", b"close, X-Secret"),
                          (b"Proxy-Connection", b"close"), (b"TE", b"trailers"),
                          (b"Trailer", b"X-Sum"), (b"Upgrade", b"h2c"), (b"X-Keep", b"k"),
                          (b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"5")],
                    content_length=5)
    head = respond(response)
    assert lower_names(head) == [b"x-keep", b"content-length"]


@pytest.mark.parametrize(("version", "keep_alive", "connection"), [
    (b"1.1", True, []),
    (b"1.1", False, [b"close"]),
    (b"1.0", True, [b"keep-alive"]),
    (b"1.0", False, [b"close"]),
])
def test_response_connection(version: bytes, keep_alive: bool, connection: list[bytes]) -> None:
    head = respond(resp(200, [(b"Connection", b"keep-alive")], content_length=0),
                   keep_alive=keep_alive, version=version)
    assert values(head, b"connection") == connection
    assert split_head(head)[0] == b"HTTP/1.1 200 OK"


@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
def test_close_framing_always_closes(version: bytes) -> None:
    head = respond(resp(200, [(b"Content-Type", b"text/plain")], until_close=True), "close",
                   keep_alive=True, version=version)
    assert values(head, b"connection") == [b"close"]
    assert not {b"content-length", b"transfer-encoding"} & set(lower_names(head))


def test_chunked_framing() -> None:
    head = respond(resp(200, [(b"Content-Length", b"3")], chunked=True), "chunked")
    assert values(head, b"transfer-encoding") == [b"chunked"]
    assert values(head, b"content-length") == []


@pytest.mark.parametrize(("response", "length"), [
    (resp(200, [(b"Content-Length", b"1234")], content_length=1234, has_body=False), [b"1234"]),
    (resp(200, [(b"Content-Length", b"42")], has_body=False), [b"42"]),  # HEAD, from the field
    (resp(200, [(b"Transfer-Encoding", b"chunked")], has_body=False), []),
    (resp(304, [(b"Content-Length", b"99"), (b"ETag", b'"x"')], reason=b"Not Modified",
          has_body=False), [b"99"]),
    (resp(204, [(b"Content-Length", b"0")], reason=b"No Content", has_body=False), []),
    (resp(100, [(b"Content-Length", b"0")], reason=b"Continue", has_body=False), []),
])
def test_responses_without_body(response: Response, length: list[bytes]) -> None:
    assert values(respond(response, "none"), b"content-length") == length


def test_interim_responses_carry_no_connection_or_policy_fields() -> None:
    policy = ResponsePolicy(hsts=b"max-age=1", server=b"offload")
    head = respond(resp(100, reason=b"Continue", has_body=False), "none", keep_alive=False,
                   policy=policy)
    assert head == b"HTTP/1.1 100 Continue\r\n\r\n"
    head = respond(resp(103, [(b"Link", b"</s.css>; rel=preload"), (b"Server", b"x")],
                        reason=b"Early Hints"), "none", policy=policy)
    assert head == b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"


def test_switching_protocols_keeps_upgrade() -> None:
    response = resp(101, [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"),
                          (b"Sec-WebSocket-Accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")],
                    reason=b"Switching Protocols", has_body=False)
    head = respond(response, "none", keep_alive=False)
    assert head == (b"HTTP/1.1 101 Switching Protocols\r\n"
                    b"Upgrade: websocket\r\n"
                    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                    b"Connection: Upgrade\r\n"
                    b"\r\n")


def test_switching_protocols_still_drops_other_named_fields() -> None:
    response = resp(101, [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade, X-Hop"),
                          (b"X-Hop", b"1")], reason=b"Switching Protocols", has_body=False)
    assert lower_names(respond(response, "none")) == [b"upgrade", b"connection"]


@pytest.mark.parametrize(("response", "framing", "version"), [
    (resp(204, reason=b"No Content"), "length", b"1.1"),
    (resp(100, reason=b"Continue"), "chunked", b"1.1"),
    (resp(100, reason=b"Continue"), "none", b"1.0"),
    (resp(200), "length", b"1.1"),  # no content_length
    (resp(200, chunked=True), "chunked", b"1.0"),
    (resp(200), "bogus", b"1.1"),
])
def test_framing_the_caller_may_not_choose(response: Response, framing: str,
                                           version: bytes) -> None:
    with pytest.raises(ValueError):
        respond(response, framing, version=version)


def test_hsts_replaces_the_backends() -> None:
    response = resp(200, [(b"Strict-Transport-Security", b"max-age=0"),
                          (b"strict-transport-security", b"max-age=1")], content_length=0)
    policy = ResponsePolicy(hsts=b"max-age=63072000; includeSubDomains")
    assert values(respond(response, policy=policy), b"strict-transport-security") == [
        b"max-age=63072000; includeSubDomains"]
    assert values(respond(response), b"strict-transport-security") == [b"max-age=0", b"max-age=1"]


@pytest.mark.parametrize(("server_header", "expected"), [
    (None, [b"gunicorn"]),
    ("", []),
    ("offload", [b"offload"]),
])
def test_server_header(server_header: str | None, expected: list[bytes]) -> None:
    policy = ResponsePolicy.from_config(None, server_header)
    head = respond(resp(200, [(b"Server", b"gunicorn")], content_length=0), policy=policy)
    assert values(head, b"server") == expected
    added = respond(resp(200, content_length=0), policy=policy)
    assert values(added, b"server") == ([b"offload"] if server_header else [])


def test_response_policy_from_config_and_validation() -> None:
    policy = ResponsePolicy.from_config("max-age=1", "")
    assert (policy.hsts, policy.server, policy.strip_server) == (b"max-age=1", None, True)
    with pytest.raises(ValueError):
        ResponsePolicy(hsts=b"max-age=1\r\nSet-Cookie: a=b")
    with pytest.raises(ValueError):
        ResponsePolicy(server=b"")
    with pytest.raises(ValueError):
        ResponsePolicy(server=b"x", strip_server=True)


def test_response_line_break_in_a_value_is_refused() -> None:
    with pytest.raises(ProtocolError) as caught:
        respond(resp(200, [(b"X", b"a\nb")], content_length=0))
    assert caught.value.status == 502


# ------------------------------------------------------------------------- offload's own answers


STATUSES = [400, 403, 404, 405, 408, 413, 414, 417, 421, 429, 431, 501, 502, 503, 504, 505]


@pytest.mark.parametrize("status", STATUSES)
def test_error_response_parses(status: int) -> None:
    data = error_response(status, detail="Line one.\r\nX-Injected: yes\n")
    parsed_status, collector = parse_response(data)
    assert parsed_status == status
    assert collector.begun == len(collector.messages) == 1
    headers, body = collector.messages[0]
    names = [n.lower() for n, _ in headers]
    assert b"x-injected" not in names
    assert dict((n.lower(), v) for n, v in headers)[b"content-length"] == str(len(body)).encode()
    assert (b"content-type", b"text/plain; charset=utf-8") in [(n.lower(), v) for n, v in headers]
    assert (b"cache-control", b"no-store") in [(n.lower(), v) for n, v in headers]
    assert (b"connection", b"close") in [(n.lower(), v) for n, v in headers]
    text = body.decode()
    assert text.startswith(f"{status} ")
    assert text.count("\n") == 2 and "\r" not in text
    assert "X-Injected: yes" in text.splitlines()[1]


def test_error_response_exact_bytes() -> None:
    assert error_response(503) == (
        b"HTTP/1.1 503 Service Unavailable\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 78\r\n"
        b"Cache-Control: no-store\r\n"
        b"Connection: close\r\n"
        b"\r\n"
        b"503 Service Unavailable: no server is available to answer; try again shortly.\n")


def test_error_response_options() -> None:
    policy = ResponsePolicy(hsts=b"max-age=5", server=b"offload")
    data = error_response(429, keep_alive=True, extra_headers=[(b"Retry-After", b"30")],
                          policy=policy)
    _, fields = split_head(data.partition(b"\r\n\r\n")[0] + b"\r\n\r\n")
    lowered = dict((n.lower(), v) for n, v in fields)
    assert b"connection" not in lowered
    assert lowered[b"retry-after"] == b"30"
    assert lowered[b"server"] == b"offload"
    assert lowered[b"strict-transport-security"] == b"max-age=5"
    assert data.endswith(b"\r\n\r\n429 Too Many Requests: too many requests; slow down and try "
                         b"again later.\n")


def test_error_response_detail_is_capped_and_other_statuses() -> None:
    data = error_response(400, detail="x" * 5000)
    assert len(data) < 600
    assert b"410 Gone" in error_response(410)
    with pytest.raises(ValueError):
        error_response(200)
    for bad in [(b"Bad Name", b"1"), (b"X", b"a\r\nb"), (b"Content-Length", b"0")]:
        with pytest.raises(ValueError):
            error_response(503, extra_headers=[bad])


@pytest.mark.parametrize(("host", "port", "location"), [
    (b"example.com", 443, b"https://example.com/a?b=1"),
    (b"example.com:80", 443, b"https://example.com/a?b=1"),
    (b"Example.COM:8080", 8443, b"https://Example.COM:8443/a?b=1"),
    (b"[2001:db8::1]:80", 443, b"https://[2001:db8::1]/a?b=1"),
    (b"[::1]", 8443, b"https://[::1]:8443/a?b=1"),
    (b"192.0.2.1", 443, b"https://192.0.2.1/a?b=1"),
])
def test_redirect(host: bytes, port: int, location: bytes) -> None:
    data = redirect_response(host, b"/a?b=1", port)
    assert data == (b"HTTP/1.1 308 Permanent Redirect\r\nLocation: " + location
                    + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    status, collector = parse_response(data)
    assert status == 308 and len(collector.messages) == 1


@pytest.mark.parametrize(("host", "target"), [
    (b"evil.com/x", b"/"),
    (b"evil.com@good.com", b"/"),
    (b"a b", b"/"),
    (b"", b"/"),
    (b"exa\r\nmple.com", b"/"),
    (b"example.com:80x", b"/"),
    (b"[::1", b"/"),
    (b"[zz::1]", b"/"),
    (b"[fe80::1%25eth0]", b"/"),
    (b"[::1]x", b"/"),
    (b"ex\xc3\xa4mple.com", b"/"),
    (b"example.com", b"*"),
    (b"example.com", b""),
    (b"example.com", b"/a\r\nSet-Cookie: x"),
    (b"example.com", b"/a b"),
])
def test_redirect_refuses_what_it_cannot_build_safely(host: bytes, target: bytes) -> None:
    data = redirect_response(host, target, 443)
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Location" not in data


def test_redirect_port_must_be_a_port() -> None:
    with pytest.raises(ValueError):
        redirect_response(b"example.com", b"/", 0)


# ------------------------------------------------------------------------------ property test


TOKEN = st.from_regex(rb"\A[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,20}\Z")
SPECIAL = st.sampled_from([
    b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Keep-Alive", b"TE",
    b"Trailer", b"Upgrade", b"Proxy-Connection", b"HTTP2-Settings", b"Expect",
    b"X-Forwarded-For", b"X-Forwarded-Proto", b"X-Forwarded-Host", b"X-Forwarded-Port",
    b"Forwarded", b"X-Request-ID", b"Sec-WebSocket-Key",
]).flatmap(lambda name: st.sampled_from([name, name.lower(), name.upper()]))
VALUE_BYTES = [0x09, *range(0x20, 0x7F), *range(0x80, 0x100)]  # RFC 9110 §5.5
VALUE = st.lists(st.sampled_from(VALUE_BYTES), max_size=30).map(
    lambda b: bytes(b).strip(b" \t"))
CONNECTION_VALUE = st.lists(st.one_of(TOKEN, SPECIAL), min_size=1, max_size=4).map(b", ".join)
FIELD = st.one_of(
    st.tuples(TOKEN, VALUE),
    st.tuples(SPECIAL, VALUE),
    st.tuples(st.just(b"Connection"), CONNECTION_VALUE),
)
CLIENTS = st.sampled_from([UNTRUSTED, PROXY, ClientFacts("2001:db8::9", 1, 443),
                           ClientFacts("::ffff:10.0.0.1", 1, 443), ClientFacts("2001:db9::1", 1, 443)])
POLICIES = st.sampled_from([PLAIN, TRUSTING, ForwardPolicy(trusted_proxies=NETS, forwarded=True),
                            ForwardPolicy(forwarded=True)])
HOSTS = st.sampled_from([b"example.com", b"example.com:8443", b"[2001:db8::1]:443", b""])


@settings(max_examples=300, deadline=None)
@given(fields=st.lists(FIELD, max_size=12), client=CLIENTS, policy=POLICIES, host=HOSTS,
       framing=st.sampled_from(["none", "length", "chunked"]), length=st.integers(0, 40),
       websocket=st.booleans(), expect=st.booleans())
def test_backend_head_is_exactly_one_unambiguous_request(
        fields: list[tuple[bytes, bytes]], client: ClientFacts, policy: ForwardPolicy,
        host: bytes, framing: str, length: int, websocket: bool, expect: bool) -> None:
    websocket = websocket and framing == "none"
    request = req(fields, method=b"POST" if framing != "none" else b"GET", target=b"/p?q=1",
                  host=host, content_length=length if framing == "length" else None,
                  chunked=framing == "chunked", websocket=websocket,
                  expect_continue=expect and framing != "none")
    head, rid = backend_request_head(request, client, policy, RID)
    body = {"none": b"", "length": b"x" * length, "chunked": b"3\r\nabc\r\n0\r\n\r\n"}[framing]
    collector = parse_requests(head + body)

    assert collector.begun == len(collector.messages) == 1
    headers, parsed_body = collector.messages[0]
    assert parsed_body == {"none": b"", "length": b"x" * length, "chunked": b"abc"}[framing]
    names = [n.lower() for n, _ in headers]
    assert names.count(b"host") == 1
    assert names.count(b"content-length") + names.count(b"transfer-encoding") == (
        0 if framing == "none" else 1)
    allowed = {b"connection", b"upgrade"} if websocket else set()
    if framing == "chunked":  # trailers are forwarded, and so is the field announcing them
        allowed.add(b"trailer")
    assert not (HOP_BY_HOP - {b"content-length", b"transfer-encoding"} - allowed) & set(names)
    assert names.count(b"x-forwarded-for") == 1
    assert names.count(b"x-request-id") == 1
    assert (b"x-request-id", rid) in [(n.lower(), v) for n, v in headers]

    # every other field passes through in order, unless a Connection field named it
    named = {t.strip().lower() for n, v in fields if n.lower() == b"connection"
             for t in v.split(b",")}
    ours = HOP_BY_HOP | {b"host", b"expect", b"x-forwarded-for", b"x-forwarded-proto",
                         b"x-forwarded-host", b"x-forwarded-port", b"forwarded", b"x-request-id"}
    expected = [(n, v) for n, v in fields if n.lower() not in ours | named]
    assert [(n, v) for n, v in headers if n.lower() not in ours] == expected


# ------------------------------------------------------------------- offload's own fields


FINGERPRINTED = ForwardPolicy(own_fields=frozenset({b"x-ja4", b"x-ja3"}))


@pytest.mark.parametrize("policy", [FINGERPRINTED, ForwardPolicy(trusted_proxies=NETS,
                                                                 own_fields=frozenset({b"x-ja4",
                                                                                       b"x-ja3"}))],
                         ids=["untrusted", "trusted-proxy"])
def test_a_clients_fingerprint_fields_are_dropped_and_ours_sent(policy: ForwardPolicy) -> None:
    """Like the client-certificate fields: only offload may name the client's fingerprint,
    whoever the client is (a trusted proxy's fingerprint would not be the client's)."""
    client = ClientFacts(PROXY.address, PROXY.port, PROXY.local_port,
                         identity=[(b"X-JA4", b"t13d1516h2_8daaf6152771_e5627efa2ab1")])
    request = req([(b"x-ja4", b"t13d1516h2_forged"), (b"X-JA3", b"forged"),
                   (b"Connection", b"X-JA4"), (b"Accept", b"*/*")])
    head = forward(request, client, policy)
    assert values(head, b"x-ja4") == [b"t13d1516h2_8daaf6152771_e5627efa2ab1"]
    assert values(head, b"x-ja3") == []
    assert values(head, b"accept") == [b"*/*"]


def test_without_own_fields_a_clients_x_ja4_passes() -> None:
    head = forward(req([(b"X-JA4", b"anything")]))
    assert values(head, b"x-ja4") == [b"anything"]


@pytest.mark.parametrize("name", [b"x-forwarded-for", b"forwarded", b"x-request-id", b"x ja4"])
def test_own_fields_cannot_be_forwarding_fields(name: bytes) -> None:
    with pytest.raises(ValueError):
        ForwardPolicy(own_fields=frozenset({name}))
