"""The HTTP message events every part of the request path speaks (sans-IO).

A parser turns bytes into these; the request path routes, rewrites and forwards them; a writer
turns them back into bytes. One request or response is: a head (:class:`Request` or
:class:`Response`), zero or more :class:`Data`, then :class:`EndOfMessage` (with trailers, if
any). Header lists keep the order and the name spelling they arrived with; values have their
surrounding whitespace removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The four event classes spell out their __init__ (``init=False``): a dataclass's generated
# __init__ is a Python function even in the compiled build, and about five events are made per
# request (callgrind: 2,000 instructions each, against about 100 compiled).

Headers = list[tuple[bytes, bytes]]
"""(name as received, value without surrounding whitespace), in order."""

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


@dataclass(slots=True, eq=False, init=False)
class Request:
    """A checked request head, already normalised (absolute-form turned into origin-form)."""

    method: bytes
    target: bytes
    """Origin-form (``/path?query``), or ``*`` for ``OPTIONS *``."""
    version: bytes
    """``1.1`` or ``1.0``."""
    headers: Headers
    host: bytes
    """The authority: from an absolute-form target, else the Host header (``b""`` only for an
    HTTP/1.0 request without Host)."""
    content_length: int | None = None
    """Set when the body is framed by Content-Length."""
    chunked: bool = False
    keep_alive: bool = True
    """Whether the client allows another request on this connection."""
    websocket: bool = False
    """A WebSocket upgrade was asked for (``Upgrade: websocket`` with ``Connection: upgrade``)."""
    expect_continue: bool = False
    added: tuple[tuple[bytes, bytes], ...] = ()
    """Fields offload adds (rule tags): written after the client's fields are filtered, so no
    hop-by-hop rule (a client's ``Connection: X-Offload-Tag``) can remove them."""

    def __init__(  # noqa: PLR0917 - the dataclass's signature, positional fields included
            self, method: bytes, target: bytes, version: bytes, headers: Headers,
            host: bytes, content_length: int | None = None, chunked: bool = False,
            keep_alive: bool = True, websocket: bool = False, expect_continue: bool = False,
            added: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.host = host
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.websocket = websocket
        self.expect_continue = expect_continue
        self.added = added

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    @property
    def idempotent(self) -> bool:
        return self.method in IDEMPOTENT_METHODS


@dataclass(slots=True, eq=False, init=False)
class Response:
    """A checked response head."""

    status: int
    reason: bytes
    version: bytes
    headers: Headers
    content_length: int | None = None
    chunked: bool = False
    keep_alive: bool = True
    """Whether the server allows another request on this connection."""
    has_body: bool = True
    """False for HEAD requests, 1xx, 204 and 304 responses."""
    until_close: bool = False
    """The body has neither length nor chunking: it ends when the server closes."""

    def __init__(  # noqa: PLR0917 - the dataclass's signature, positional fields included
            self, status: int, reason: bytes, version: bytes, headers: Headers,
            content_length: int | None = None, chunked: bool = False, keep_alive: bool = True,
            has_body: bool = True, until_close: bool = False) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.has_body = has_body
        self.until_close = until_close


@dataclass(slots=True, eq=False, init=False)
class Data:
    """A piece of a message body (chunk framing already removed)."""

    data: bytes

    def __init__(self, data: bytes) -> None:
        self.data = data


@dataclass(slots=True, eq=False, init=False)
class EndOfMessage:
    """The message is complete; trailers come from a chunked body's trailer section."""

    trailers: Headers = field(default_factory=list)

    def __init__(self, trailers: Headers | None = None) -> None:
        self.trailers = [] if trailers is None else trailers


Event = Request | Response | Data | EndOfMessage


def header_value(headers: Headers, name: bytes) -> bytes | None:
    """The first value of ``name`` (lower-case), or None."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def header_tokens(headers: Headers, name: bytes) -> list[bytes]:
    """Every comma-separated token of every ``name`` field, lower-cased and stripped."""
    tokens: list[bytes] = []
    for key, value in headers:
        if key.lower() == name:
            tokens.extend(part.strip().lower() for part in value.split(b",") if part.strip())
    return tokens
