"""The HTTP/2 server engine interface (sans-IO): bytes in, events out; calls in, bytes out.

offload does not write HTTP/2 framing or HPACK itself. An engine wraps a well-kept library —
libnghttp2 through our cffi binding (:mod:`offload.proto.h2_nghttp2`), or python-hyper ``h2``
where that binding is not built (:mod:`offload.proto.h2_hyper`) — behind this one interface,
so that the HTTP/2 connection (:mod:`offload.http.h2_connection`) and the conformance tests do
not depend on which one runs. :func:`offload.proto.h2_engines.engine_factory` picks it.

Semantics every engine implements the same way:

* The engine is a server: :meth:`H2Engine.initiate` queues the server's connection preface
  (SETTINGS from :class:`H2Settings`); the client's preface is checked by :meth:`receive`.
* :meth:`receive` returns the events of the bytes given, in order. A connection error (a
  PROTOCOL_ERROR, a COMPRESSION_ERROR, a bad preface...) is a :class:`ConnectionFailed` event,
  after which the engine has queued GOAWAY and takes no more input. Stream errors the engine
  detects itself (a malformed request per RFC 9113 §8.1.1, a flow-control violation on a
  stream) reset the stream and are reported as :class:`StreamReset` with ``by_peer`` False:
  the caller counts those as well (MadeYouReset, CVE-2025-8671). Such a reset may name a stream
  the caller never saw (one refused before its request was complete). Where RFC 9113 lets an
  endpoint choose between a stream and a connection error, the engines may differ
  (tests/unit/test_h2_engines.py names where).
* Flow control of what the client sends: DATA is reported with its flow-controlled length;
  the window is opened again only when the caller says it has passed the bytes on
  (:meth:`acknowledge`), so a slow backend holds the client back instead of a buffer growing.
  Acknowledge what was received even on a stream that then ended abnormally: the connection's
  window counts it too.
* Flow control of what we send: :meth:`send_data` always takes the bytes; what the client's
  windows do not allow yet is queued per stream and sent as WINDOW_UPDATEs arrive.
  :meth:`queued` says how much waits, so the caller can stop reading the backend
  (backpressure) and time out a client that never opens its window.
* :meth:`data_to_send` returns every byte queued for the client since the last call.
* Calls about a stream that is gone (reset by either side) or after the connection failed do
  nothing: the caller learns of those from the events, possibly later than it acts.
* Header names given to :meth:`send_headers` are lower-case; pseudo-headers come first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Header = tuple[bytes, bytes]
EnginePreference = Literal["auto", "nghttp2", "h2"]

# RFC 9113 §7 error codes
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
SETTINGS_TIMEOUT = 0x4
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
CONNECT_ERROR = 0xA
ENHANCE_YOUR_CALM = 0xB
INADEQUATE_SECURITY = 0xC
HTTP_1_1_REQUIRED = 0xD


@dataclass(frozen=True, slots=True)
class H2Settings:
    """What the server announces and enforces (RFC 9113 §6.5.2)."""

    max_concurrent_streams: int = 100
    initial_window_size: int = 65_535
    """Per-stream receive window: how much of one request body may be in flight."""
    connection_window_size: int = 1_048_576
    """The connection's receive window (raised by a WINDOW_UPDATE after the preface)."""
    max_frame_size: int = 16_384
    max_header_list_size: int = 65_536
    header_table_size: int = 4_096


# The events made for every request and frame spell out their __init__ (``init=False``): a
# dataclass's generated __init__ is a Python function even in the compiled build (as for the
# HTTP/1 events in http_types).


@dataclass(slots=True, init=False)
class RequestReceived:
    """A complete request header block (HEADERS and its CONTINUATIONs), decoded.

    ``headers`` are as the client sent them, pseudo-headers included, in order; the engine has
    already refused what RFC 9113 §8.1.1/§8.2 calls malformed where its library does so (the
    caller checks the rest)."""

    stream_id: int
    headers: list[Header]
    end_stream: bool

    def __init__(self, stream_id: int, headers: list[Header], end_stream: bool) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self.end_stream = end_stream


@dataclass(slots=True, init=False)
class DataReceived:
    stream_id: int
    data: bytes
    flow_length: int
    """What to acknowledge for this frame: the data, plus the padding where the engine does not
    return padding to the windows itself (``h2`` does not; nghttp2 does)."""
    end_stream: bool

    def __init__(self, stream_id: int, data: bytes, flow_length: int, end_stream: bool) -> None:
        self.stream_id = stream_id
        self.data = data
        self.flow_length = flow_length
        self.end_stream = end_stream


@dataclass(slots=True, init=False)
class TrailersReceived:
    """A header block after the body; it ends the stream."""

    stream_id: int
    headers: list[Header]

    def __init__(self, stream_id: int, headers: list[Header]) -> None:
        self.stream_id = stream_id
        self.headers = headers


@dataclass(slots=True, init=False)
class StreamReset:
    """A stream ended abnormally: by the client's RST_STREAM (``by_peer``) or by the engine
    (a stream error it detected, and answered with RST_STREAM)."""

    stream_id: int
    error_code: int
    by_peer: bool

    def __init__(self, stream_id: int, error_code: int, by_peer: bool) -> None:
        self.stream_id = stream_id
        self.error_code = error_code
        self.by_peer = by_peer


@dataclass(slots=True, init=False)
class WindowOpened:
    """The client opened a send window (``stream_id`` 0: the connection's), or changed
    SETTINGS_INITIAL_WINDOW_SIZE: queued data may have gone out; check :meth:`queued`."""

    stream_id: int

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    """The client will open no more streams (RFC 9113 §6.8)."""

    error_code: int
    last_stream_id: int


@dataclass(frozen=True, slots=True)
class ConnectionFailed:
    """A connection error: GOAWAY with ``error_code`` is queued; close after sending it."""

    error_code: int
    reason: str


H2Event = (RequestReceived | DataReceived | TrailersReceived | StreamReset | WindowOpened
           | GoAwayReceived | ConnectionFailed)


class H2Engine(Protocol):
    """One HTTP/2 server connection's protocol state (module docstring)."""

    name: str
    """``nghttp2`` or ``h2``: which library runs (for logs and metrics)."""

    def initiate(self) -> None:
        """Queue the server's connection preface (SETTINGS, and the connection window)."""

    def receive(self, data: bytes) -> list[H2Event]:
        """Feed bytes from the client; the events they complete."""

    def data_to_send(self) -> bytes:
        """Everything queued for the client since the last call (``b""`` if nothing)."""

    def send_headers(self, stream_id: int, headers: list[Header], end_stream: bool) -> None:
        """A response head (or an interim 1xx: ``end_stream`` False, more HEADERS follow)."""

    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """Body bytes for the client; queued as far as its windows do not allow them yet."""

    def send_trailers(self, stream_id: int, headers: list[Header]) -> None:
        """A trailer block; ends the stream once the queued data has gone."""

    def queued(self, stream_id: int) -> int:
        """Body bytes of ``stream_id`` accepted by :meth:`send_data` and not sent yet."""

    def acknowledge(self, stream_id: int, flow_length: int) -> None:
        """The caller has passed on ``flow_length`` bytes of received DATA: open the stream's
        and the connection's receive windows by as much."""

    def reset(self, stream_id: int, error_code: int) -> None:
        """Reset a stream (RST_STREAM); its queued data is dropped."""

    def release(self) -> None:
        """The connection is gone: free the response bodies still waiting for the client now
        (the engine itself may live on until the collector finds it). Later calls about
        streams do nothing."""

    def goaway(self, error_code: int, last_stream_id: int | None = None) -> None:
        """Queue GOAWAY. With NO_ERROR and ``last_stream_id`` None: a graceful shutdown — no
        new streams are accepted, open ones finish (the engine may announce 2^31-1 first and
        the real last stream id after a round trip, as RFC 9113 §6.8 suggests)."""

    @property
    def open_streams(self) -> int:
        """Streams neither closed nor reset."""

    @property
    def last_stream_id(self) -> int:
        """The highest stream the client opened that this engine took, answered or not: what a
        final GOAWAY names (one naming less would tell the client that a request it got an
        answer to was never processed, and may be retried)."""

    @property
    def final_stream_id(self) -> int:
        """The last stream id a final GOAWAY (one that is not the shutdown notice) named, or
        2^31-1 before one: a stream above it was told the client as not processed, and may
        be sent again (RFC 9113 §6.8), so it must never reach a backend, even when it arrived
        in the same read as the frame that made the GOAWAY go out."""

    @property
    def shutdown_pending(self) -> bool:
        """A graceful GOAWAY was announced and its round trip has not come back: streams the
        client sent before it saw the notice may still arrive, so the connection must stay."""


class EngineFactory(Protocol):
    def __call__(self, settings: H2Settings) -> H2Engine: ...
