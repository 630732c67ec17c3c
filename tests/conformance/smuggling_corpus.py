"""Request-smuggling corpus: raw bytes a client sends on one TLS connection, and what offload
must do with them (data only; tests/conformance/test_smuggling.py runs it).

Each case is either ``rejected`` (offload answers that status and the backend receives nothing
at all) or ``forwarded`` (the backend receives exactly these requests, one after another, and
nothing else). ``bug`` is set on cases that fail today: they run as strict xfails, and the
text says what is wrong. Remove it when the bug is fixed.

The proxy under test runs with ``max_body_size = "1KiB"``, ``max_header_size = "8KiB"`` and
``max_header_count = 50`` (see the test module).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Forwarded:
    """One request as the backend must receive it."""

    method: str
    target: str
    body: bytes = b""
    host: str = "localhost"
    headers: tuple[tuple[str, str], ...] = ()
    """Fields that must be present exactly once, with exactly this value."""
    absent: tuple[str, ...] = ()
    """Fields that must not be there at all."""
    allow: tuple[str, ...] = ()
    """Hop-by-hop fields that are legitimate in this request (WebSocket upgrades)."""


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes
    rejected: int | None = None
    forwarded: tuple[Forwarded, ...] = ()
    bug: str = ""
    answer: bytes = b""
    """For a rejected case not answered in HTTP/1.1: how offload's answer starts."""


H = b"Host: localhost\r\n"
TE = b"Transfer-Encoding: chunked\r\n"
HIDDEN = b"GET /admin HTTP/1.1\r\nHost: localhost\r\n\r\n"
"""A second request an attacker hopes the backend will see on its own."""
HIDDEN_CHUNKED = b"0\r\n\r\n" + HIDDEN
HELLO_CHUNKED = b"5\r\nhello\r\n0\r\n\r\n"
GET = Forwarded("GET", "/")
HELLO = Forwarded("POST", "/", b"hello")


def _post(headers: bytes, body: bytes = b"", version: bytes = b"1.1") -> bytes:
    return b"POST / HTTP/" + version + b"\r\n" + H + headers + b"\r\n" + body


def _get(headers: bytes = H, target: bytes = b"/", version: bytes = b"1.1",
         method: bytes = b"GET") -> bytes:
    return method + b" " + target + b" HTTP/" + version + b"\r\n" + headers + b"\r\n"


def _chunked(body: bytes) -> bytes:
    return _post(TE, body)


def rejected(name: str, raw: bytes, status: int = 400, bug: str = "") -> Case:
    return Case(name, raw, rejected=status, bug=bug)


def forwarded(name: str, raw: bytes, *requests: Forwarded, bug: str = "") -> Case:
    return Case(name, raw, forwarded=requests, bug=bug)


_TE_CODINGS_BUG = (
    "BUG: transfer codings before chunked are accepted and silently dropped: the backend gets "
    "'Transfer-Encoding: chunked' only (RFC 9112 §6.1: 501 for a coding we do not implement)")
CORPUS: list[Case] = [
    # ---------------------------------------------------------------- CL.TE and TE.CL
    rejected("cl-te", _post(b"Content-Length: 6\r\n" + TE, b"0\r\n\r\nG")),
    rejected("cl-te-hidden-request",
             _post(b"Content-Length: %d\r\n" % len(HIDDEN_CHUNKED) + TE, HIDDEN_CHUNKED)),
    rejected("te-cl", _post(TE + b"Content-Length: 4\r\n",
                            b"%x\r\n" % len(HIDDEN) + HIDDEN + b"\r\n0\r\n\r\n")),
    rejected("te-cl-hidden-request", _post(TE + b"Content-Length: 3\r\n", b"1\r\nx\r\n" + HIDDEN)),
    rejected("cl-te-http10", _post(b"Content-Length: 5\r\n" + TE, b"0\r\n\r\n", b"1.0")),
    # ---------------------------------------------------------------- TE.TE obfuscation
    rejected("te-space-before-colon",
             _post(b"Transfer-Encoding : chunked\r\nContent-Length: 5\r\n", HIDDEN_CHUNKED)),
    rejected("te-tab-value-with-cl",
             _post(b"Transfer-Encoding:\tchunked\r\nContent-Length: 5\r\n", HIDDEN_CHUNKED)),
    rejected("te-upper-case-with-cl",
             _post(b"Transfer-Encoding: CHUNKED\r\nContent-Length: 5\r\n", HIDDEN_CHUNKED)),
    rejected("te-name-mixed-case-with-cl",
             _post(b"tRANSFER-eNCODING: chunked\r\nContent-Length: 5\r\n", HIDDEN_CHUNKED)),
    rejected("te-trailing-space-with-cl",
             _post(b"Transfer-Encoding: chunked \r\nContent-Length: 5\r\n", HIDDEN_CHUNKED)),
    rejected("te-duplicated", _post(TE + TE, HIDDEN_CHUNKED)),
    rejected("te-duplicated-with-cl", _post(TE + b"Content-Length: 5\r\n" + TE, HIDDEN_CHUNKED)),
    rejected("te-chunked-then-identity-fields",
             _post(TE + b"Transfer-Encoding: identity\r\n", HIDDEN_CHUNKED)),
    rejected("te-list-chunked-identity",
             _post(b"Transfer-Encoding: chunked, identity\r\n", HIDDEN_CHUNKED)),
    rejected("te-list-chunked-chunked",
             _post(b"Transfer-Encoding: chunked, chunked\r\n", HIDDEN_CHUNKED)),
    rejected("te-identity-with-cl",
             _post(b"Transfer-Encoding: identity\r\nContent-Length: 5\r\n", b"hello")),
    rejected("te-xchunked", _post(b"Transfer-Encoding: xchunked\r\n", HIDDEN_CHUNKED)),
    rejected("te-xchunked-with-cl",
             _post(b"Transfer-Encoding: xchunked\r\nContent-Length: 5\r\n", b"hello")),
    rejected("te-quoted", _post(b'Transfer-Encoding: "chunked"\r\n', HIDDEN_CHUNKED)),
    rejected("te-empty-with-cl",
             _post(b"Transfer-Encoding: \r\nContent-Length: 5\r\n", b"hello")),
    rejected("te-obs-fold", _post(b"Transfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n",
                                  HIDDEN_CHUNKED)),
    rejected("te-obs-fold-into-previous-field",
             _post(b"X-Padding: y\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                   b"hello")),
    rejected("te-vertical-tab", _post(b"Transfer-Encoding:\x0bchunked\r\n", HIDDEN_CHUNKED)),
    rejected("te-nul", _post(b"Transfer-Encoding: chunked\x00\r\n", HIDDEN_CHUNKED)),
    rejected("te-http10", _post(TE, HIDDEN_CHUNKED, b"1.0")),
    rejected("te-gzip-chunked", _post(b"Transfer-Encoding: gzip, chunked\r\n", HELLO_CHUNKED),
             501),
    rejected("te-unknown-field-then-chunked",
             _post(b"Transfer-Encoding: x-custom\r\n" + TE, HELLO_CHUNKED), 501),
    forwarded("te-upper-case", _post(b"Transfer-Encoding: CHUNKED\r\n", HELLO_CHUNKED), HELLO),
    forwarded("te-tab-value", _post(b"Transfer-Encoding:\tchunked\r\n", HELLO_CHUNKED), HELLO),
    forwarded("te-trailing-space", _post(b"Transfer-Encoding: chunked \r\n", HELLO_CHUNKED),
              HELLO),
    forwarded("te-underscore-name-is-not-te",
              _post(b"Transfer_Encoding: chunked\r\nContent-Length: 5\r\n", b"hello"), HELLO),
    # ---------------------------------------------------------------- Content-Length
    rejected("cl-duplicate-same", _post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello")),
    rejected("cl-duplicate-conflicting-hidden-request",
             _post(b"Content-Length: 0\r\nContent-Length: %d\r\n" % len(HIDDEN), HIDDEN)),
    rejected("cl-list", _post(b"Content-Length: 5, 5\r\n", b"hello")),
    rejected("cl-plus-sign", _post(b"Content-Length: +5\r\n", b"hello")),
    rejected("cl-minus-sign", _post(b"Content-Length: -1\r\n", HIDDEN)),
    rejected("cl-inner-space", _post(b"Content-Length: 1 5\r\n", b"hello")),
    rejected("cl-hex", _post(b"Content-Length: 0x5\r\n", b"hello")),
    rejected("cl-decimal-point", _post(b"Content-Length: 5.0\r\n", b"hello")),
    rejected("cl-trailing-garbage", _post(b"Content-Length: 5abc\r\n", b"hello")),
    rejected("cl-empty", _post(b"Content-Length: \r\n", b"hello")),
    rejected("cl-nul", _post(b"Content-Length: 5\x00\r\n", b"hello")),
    rejected("cl-overflow", _post(b"Content-Length: 184467440737095516160\r\n", b"hello")),
    rejected("cl-huge", _post(b"Content-Length: 9999999999\r\n", b"hello"), 413),
    forwarded("cl-leading-zeros", _post(b"Content-Length: 0005\r\n", b"hello"), HELLO),
    forwarded("cl-body-hides-a-request",
              _get(H + b"Content-Length: %d\r\n" % len(HIDDEN)) + HIDDEN,
              Forwarded("GET", "/", HIDDEN)),
    forwarded("cl-zero-then-pipelined",
              _post(b"Content-Length: 0\r\n") + HIDDEN,
              Forwarded("POST", "/"), Forwarded("GET", "/admin")),
    # ---------------------------------------------------------------- chunks
    rejected("chunk-size-negative", _chunked(b"-5\r\nhello\r\n0\r\n\r\n")),
    rejected("chunk-size-hex-prefix", _chunked(b"0x5\r\nhello\r\n0\r\n\r\n")),
    rejected("chunk-size-leading-space", _chunked(b" 5\r\nhello\r\n0\r\n\r\n")),
    rejected("chunk-size-trailing-space", _chunked(b"5 \r\nhello\r\n0\r\n\r\n")),
    rejected("chunk-size-trailing-tab", _chunked(b"5\t\r\nhello\r\n0\r\n\r\n")),
    rejected("chunk-size-overflow", _chunked(b"10000000000000005\r\nhello\r\n0\r\n\r\n")),
    rejected("chunk-size-bare-lf", _chunked(b"5\nhello\r\n0\r\n\r\n")),
    rejected("chunk-size-too-small", _chunked(b"3\r\nhello\r\n0\r\n\r\n")),
    rejected("chunk-size-too-big", _chunked(b"8\r\nhello\r\n0\r\n\r\n")),
    rejected("chunk-data-missing-crlf", _chunked(b"5\r\nhello0\r\n\r\n" + HIDDEN)),
    rejected("chunk-data-bare-lf", _chunked(b"5\r\nhello\n0\r\n\r\n")),
    rejected("chunk-extension-empty", _chunked(b"5;\r\nhello\r\n0\r\n\r\n")),
    rejected("chunk-extension-control", _chunked(b"5;a=\x01\r\nhello\r\n0\r\n\r\n")),
    rejected("chunk-extension-bare-lf", _chunked(b"5;a\nhello\r\n0\r\n\r\n")),
    rejected("chunk-extension-bare-cr", _chunked(b"5;a\rb\r\nhello\r\n0\r\n\r\n")),
    rejected("chunk-last-chunk-bare-lf", _chunked(b"5\r\nhello\r\n0\n\n" + HIDDEN)),
    rejected("trailer-without-colon", _chunked(b"5\r\nhello\r\n0\r\nbad trailer\r\n\r\n")),
    rejected("trailer-content-length", _chunked(b"0\r\nContent-Length: %d\r\n\r\n" % len(HIDDEN)
                                                + HIDDEN)),
    rejected("trailer-obs-fold", _chunked(b"0\r\nX-T: a\r\n b\r\n\r\n")),
    rejected("chunked-total-over-limit",
             _chunked(b"".join(b"200\r\n" + b"c" * 0x200 + b"\r\n" for _ in range(3))
                      + b"0\r\n\r\n"), 413),
    forwarded("chunked-post", _chunked(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
              Forwarded("POST", "/", b"hello world")),
    forwarded("chunk-extensions", _chunked(b'5;name=value\r\nhello\r\n1;a;b="q s"\r\n!\r\n0\r\n\r\n'),
              Forwarded("POST", "/", b"hello!")),
    forwarded("chunked-with-trailers", _chunked(b"5\r\nhello\r\n0\r\nX-Sum: 5\r\n\r\n"), HELLO),
    forwarded("chunk-data-hides-a-request",
              _chunked(b"%x\r\n" % len(HIDDEN_CHUNKED) + HIDDEN_CHUNKED + b"\r\n0\r\n\r\n"),
              Forwarded("POST", "/", HIDDEN_CHUNKED)),
    forwarded("chunked-then-pipelined", _chunked(HELLO_CHUNKED) + HIDDEN,
              HELLO, Forwarded("GET", "/admin")),
    # ---------------------------------------------------------------- header syntax
    rejected("nul-in-value", _get(H + b"X-A: a\x00b\r\n")),
    rejected("cr-in-value", _get(H + b"X-A: a\rb\r\n")),
    rejected("lf-in-value", _get(H + b"X-A: a\nTransfer-Encoding: chunked\r\n")),
    rejected("control-in-value", _get(H + b"X-A: a\x1bb\r\n")),
    rejected("del-in-value", _get(H + b"X-A: a\x7fb\r\n")),
    rejected("nul-in-name", _get(H + b"X-\x00A: b\r\n")),
    rejected("cr-in-name", _get(H + b"X-\rA: b\r\n")),
    rejected("space-before-colon", _get(b"Host : localhost\r\n")),
    rejected("tab-before-colon", _get(H + b"X-A\t: b\r\n")),
    rejected("obs-fold", _get(H + b"X-A: a\r\n b\r\n")),
    rejected("obs-fold-tab", _get(H + b"X-A: a\r\n\tb\r\n")),
    rejected("header-without-colon", _get(H + b"X-A b\r\n")),
    rejected("empty-header-name", _get(H + b": b\r\n")),
    rejected("header-name-not-a-token", _get(H + b"X/A: b\r\n")),
    rejected("whitespace-before-first-header", b"GET / HTTP/1.1\r\n Host: localhost\r\n\r\n"),
    rejected("bare-lf-line-endings", b"GET / HTTP/1.1\nHost: localhost\n\n"),
    rejected("bare-lf-end-of-head", b"GET / HTTP/1.1\r\nHost: localhost\r\n\n" + HIDDEN),
    rejected("bare-cr-line-ending", b"GET / HTTP/1.1\r\nHost: localhost\rX-A: b\r\n\r\n"),
    # ---------------------------------------------------------------- request line
    rejected("method-lower-case", _get(method=b"get")),
    rejected("method-not-a-token", _get(method=b"G(T")),
    rejected("method-nul", _get(method=b"GE\x00T")),
    rejected("method-control", _get(method=b"GE\x01T")),
    rejected("target-nul", _get(target=b"/a\x00b")),
    rejected("target-cr", _get(target=b"/a\rb")),
    rejected("target-lf", _get(target=b"/a\nb")),
    rejected("target-control", _get(target=b"/a\x01b")),
    rejected("target-tab", _get(target=b"/a\tb")),
    rejected("target-space", _get(target=b"/a b")),
    rejected("target-non-ascii", _get(target=b"/caf\xc3\xa9")),
    rejected("target-fragment", _get(target=b"/a#b")),
    rejected("asterisk-form-with-get", _get(target=b"*")),
    rejected("http09", b"GET /\r\n\r\n"),
    rejected("http12", _get(version=b"1.2")),
    rejected("http20", _get(version=b"2.0"), 505),
    # HTTP/2 without ALPN h2 (prior knowledge): refused in HTTP/2, which such a client reads
    Case("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", rejected=505,
         answer=b"\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x08\x07"),
    rejected("connect", _get(b"Host: localhost:443\r\n", b"localhost:443", method=b"CONNECT"), 405),
    rejected("request-line-too-long", _get(target=b"/" + b"a" * 9000), 414),
    rejected("header-section-too-large", _get(H + b"X-Big: " + b"b" * 9000 + b"\r\n"), 431),
    rejected("too-many-headers", _get(H + b"".join(b"X-%d: 1\r\n" % i for i in range(60))), 431),
    # ---------------------------------------------------------------- Host and authority
    rejected("host-missing", _get(b"")),
    rejected("host-duplicate", _get(H + b"Host: evil.example\r\n")),
    rejected("host-duplicate-same", _get(H + H)),
    rejected("host-empty", _get(b"Host: \r\n")),
    rejected("host-space", _get(b"Host: localhost evil.example\r\n")),
    rejected("host-userinfo", _get(b"Host: user@evil.example\r\n")),
    rejected("host-bad-port", _get(b"Host: localhost:99999\r\n")),
    rejected("host-slash", _get(b"Host: evil.example/x\r\n")),
    rejected("absolute-form-userinfo", _get(target=b"http://user@evil.example/")),
    rejected("absolute-form-without-host", _get(b"", b"http://evil.example/")),
    rejected("absolute-form-other-scheme", _get(target=b"ftp://evil.example/")),
    forwarded("absolute-form-wins-over-host",
              _get(target=b"http://other.example:8080/p?q=1"),
              Forwarded("GET", "/p?q=1", host="other.example:8080")),
    forwarded("absolute-form-http10", _get(b"", b"http://other.example/x", b"1.0"),
              Forwarded("GET", "/x", host="other.example")),
    forwarded("http10-without-host", _get(b"", b"/old", b"1.0"), Forwarded("GET", "/old", host="")),
    forwarded("options-asterisk", _get(target=b"*", method=b"OPTIONS"), Forwarded("OPTIONS", "*")),
    forwarded("percent-encoded-crlf-stays-encoded", _get(target=b"/a%0d%0aX-Injected:%20x"),
              Forwarded("GET", "/a%0d%0aX-Injected:%20x", absent=("X-Injected",))),
    # ---------------------------------------------------------------- Expect
    rejected("expect-garbage", _get(H + b"Expect: teapot\r\n"), 417),
    rejected("expect-continue-and-more",
             _post(b"Expect: 100-continue, x\r\nContent-Length: 5\r\n", b"hello"), 417),
    forwarded("expect-100-continue", _post(b"Expect: 100-continue\r\nContent-Length: 5\r\n",
                                           b"hello"), HELLO),
    # ---------------------------------------------------------------- upgrades
    forwarded("h2c-upgrade-is-not-forwarded",
              _get(H + b"Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                   b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"),
              Forwarded("GET", "/", absent=("Upgrade", "Connection", "HTTP2-Settings"))),
    forwarded("h2c-upgrade-then-pipelined",
              _get(H + b"Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                   b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n") + HIDDEN,
              Forwarded("GET", "/", absent=("Upgrade", "Connection", "HTTP2-Settings")),
              Forwarded("GET", "/admin")),
    # An upgrade offload does not tunnel is a plain request: its body is framed as any other
    # (llhttp stops at such a head; the body must never be read as the next request).
    *(forwarded(f"upgrade-{name}-{kind}-body-is-framed",
                _post(field + b": Upgrade\r\nUpgrade: " + proto + b"\r\n" + framing, body)
                + b"GET /after HTTP/1.1\r\n" + H + b"\r\n",
                Forwarded("POST", "/", HIDDEN, absent=("Upgrade", "Connection",
                                                       "Proxy-Connection")),
                Forwarded("GET", "/after"))
      for name, field, proto in (("h2c", b"Connection", b"h2c"),
                                 ("h2c-proxy-connection", b"Proxy-Connection", b"h2c"),
                                 ("websocket-proxy-connection", b"Proxy-Connection",
                                  b"websocket"),
                                 ("tls-proxy-connection", b"Proxy-Connection", b"TLS/1.2"))
      for kind, framing, body in (
          ("length", b"Content-Length: %d\r\n" % len(HIDDEN), HIDDEN),
          ("chunked", TE, b"%x\r\n%b\r\n0\r\n\r\n" % (len(HIDDEN), HIDDEN)))),
    forwarded("upgrade-without-connection-then-pipelined",
              _get(H + b"Upgrade: websocket\r\n") + HIDDEN,
              Forwarded("GET", "/", absent=("Upgrade",)), Forwarded("GET", "/admin")),
    forwarded("websocket-in-http10-is-not-an-upgrade",
              _get(b"Upgrade: websocket\r\nConnection: Upgrade\r\n", version=b"1.0"),
              Forwarded("GET", "/", host="", absent=("Upgrade", "Connection"))),
    rejected("websocket-upgrade-with-body-hides-a-request",
             _get(H + b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                  b"Content-Length: %d\r\n" % len(HIDDEN)) + HIDDEN),
    forwarded("websocket-refused-then-pipelined",
              _get(H + b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                   b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")
              + HIDDEN,
              Forwarded("GET", "/", headers=(("Upgrade", "websocket"),),
                        allow=("Connection", "Upgrade")),
              Forwarded("GET", "/admin")),
    # ---------------------------------------------------------------- pipelining and closing
    forwarded("pipelined-three",
              _get(target=b"/1") + _post(b"Content-Length: 5\r\n", b"hello") + _get(target=b"/3"),
              Forwarded("GET", "/1"), HELLO, Forwarded("GET", "/3")),
    forwarded("http10-keep-alive-then-pipelined",
              _get(b"Connection: keep-alive\r\n", b"/a", b"1.0") + _get(b"", b"/b", b"1.0"),
              Forwarded("GET", "/a", host=""), Forwarded("GET", "/b", host="")),
    forwarded("leading-empty-line", b"\r\n" + _get(), GET),
    forwarded("connection-close-then-pipelined", _get(H + b"Connection: close\r\n") + HIDDEN,
              GET),
    forwarded("http10-then-pipelined", _get(b"", b"/old", b"1.0") + HIDDEN,
              Forwarded("GET", "/old", host="")),
    forwarded("valid-then-smuggling-attempt",
              _get() + _post(b"Content-Length: 6\r\n" + TE, b"0\r\n\r\nG"), GET),
    # ---------------------------------------------------------------- forwarding fields
    forwarded("x-forwarded-for-spoofing",
              _get(H + b"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: http\r\n"
                   b"X-Forwarded-Host: evil.example\r\nForwarded: for=6.6.6.6\r\n"),
              Forwarded("GET", "/", headers=(("X-Forwarded-For", "127.0.0.1"),
                                             ("X-Forwarded-Proto", "https"),
                                             ("X-Forwarded-Host", "localhost")),
                        absent=("Forwarded",))),
    forwarded("connection-names-x-forwarded-for",
              _get(H + b"Connection: X-Forwarded-For\r\nX-Forwarded-For: 6.6.6.6\r\n"),
              Forwarded("GET", "/", headers=(("X-Forwarded-For", "127.0.0.1"),))),
    forwarded("connection-names-a-custom-field",
              _get(H + b"X-Secret: 1\r\nConnection: keep-alive, X-Secret\r\n"),
              Forwarded("GET", "/", absent=("X-Secret",))),
    forwarded("hop-by-hop-fields-are-dropped",
              _get(H + b"TE: trailers\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive"
                   b"\r\nTrailer: X-Sum\r\n"),
              Forwarded("GET", "/")),
]
