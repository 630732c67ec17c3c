"""The HTTP/2 server engine on python-hyper ``h2`` (pure Python, sans-IO).

The fallback where the libnghttp2 binding is not built (:mod:`offload.proto.h2_engines`), and
the reference the conformance tests hold the other engine to. The contract is
:mod:`offload.proto.h2_engine`'s docstring; how ``h2`` is made to keep it:

* Settings are installed as ``local_settings`` before the preface, so the limits hold from the
  first frame (as nghttp2 does), and the HPACK decoder's header-list limit is the announced one.
  Request heads are passed on as sent, without ``h2``'s own header validation: ``h2`` turns
  every protocol error it finds into a connection error, where RFC 9113 §8.1.1 wants a stream
  error for a malformed request; offload's request translation (:mod:`offload.proto.h2_request`)
  makes every §8 check and resets just that stream, as nghttp2 does. Frame-level errors stay
  connection errors (:class:`ConnectionFailed`).
* Once a GOAWAY is sent or received, ``h2`` refuses to send anything more, which would cut every
  open stream. So a graceful GOAWAY (NO_ERROR) is written here with ``hyperframe`` and spliced
  into the output, ``h2`` never learns of it, and streams opened after the final one are
  refused here (RST_STREAM REFUSED_STREAM). A GOAWAY *from the client* still stops ``h2``
  sending: responses in flight then end (a known ``h2`` limitation; nghttp2 finishes them).
* Response bodies wait in a per-stream queue and leave in frames as the windows allow.
"""

from __future__ import annotations

import logging
from collections import deque

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    PingAckReceived,
    RemoteSettingsChanged,
    WindowUpdated,
)
from h2.events import DataReceived as H2DataReceived
from h2.events import RequestReceived as H2RequestReceived
from h2.events import StreamReset as H2StreamReset
from h2.events import TrailersReceived as H2TrailersReceived
from h2.exceptions import H2Error, ProtocolError
from h2.settings import SettingCodes, Settings
from hpack import HPACKError, OversizedHeaderListError
from hyperframe.frame import GoAwayFrame

from offload.proto.h2_engine import (
    COMPRESSION_ERROR,
    INTERNAL_ERROR,
    NO_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    ConnectionFailed,
    DataReceived,
    GoAwayReceived,
    H2Event,
    H2Settings,
    Header,
    RequestReceived,
    StreamReset,
    TrailersReceived,
    WindowOpened,
)

_log = logging.getLogger("offload.h2")

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_SHUTDOWN_PING = b"offload!"
_LAST_STREAM_ID = 2**31 - 1
_NO_LIMIT = _LAST_STREAM_ID


class _Outgoing:
    """A response body waiting for the client's windows."""

    __slots__ = ("chunks", "ended", "offset", "size", "trailers")

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.offset = 0
        self.size = 0
        self.ended = False
        self.trailers: list[Header] | None = None


class HyperH2Engine:
    """One HTTP/2 server connection on python-hyper ``h2`` (module docstring)."""

    name = "h2"

    def __init__(self, settings: H2Settings) -> None:
        self._settings = settings
        config = H2Configuration(client_side=False, header_encoding=None,
                                 validate_inbound_headers=False, normalize_inbound_headers=False,
                                 validate_outbound_headers=False,
                                 normalize_outbound_headers=False)
        conn = H2Connection(config=config)
        conn.local_settings = Settings(client=False, initial_values={
            SettingCodes.HEADER_TABLE_SIZE: settings.header_table_size,
            SettingCodes.ENABLE_PUSH: 0,
            SettingCodes.MAX_CONCURRENT_STREAMS: settings.max_concurrent_streams,
            SettingCodes.INITIAL_WINDOW_SIZE: settings.initial_window_size,
            SettingCodes.MAX_FRAME_SIZE: settings.max_frame_size,
            SettingCodes.MAX_HEADER_LIST_SIZE: settings.max_header_list_size,
        })
        conn.max_inbound_frame_size = settings.max_frame_size
        conn.decoder.max_header_list_size = settings.max_header_list_size
        conn.decoder.max_allowed_table_size = settings.header_table_size
        self._conn = conn
        self._out = bytearray()
        self._outgoing: dict[int, _Outgoing] = {}
        self._done = False
        self._last_stream_id = _NO_LIMIT
        """The last stream a graceful GOAWAY let in: later ones are refused."""
        self._awaiting_ping_ack = False
        self._shutting_down = False
        self._preface_left = _PREFACE

    # -- the H2Engine interface ------------------------------------------------------------

    def initiate(self) -> None:
        self._conn.initiate_connection()
        extra = self._settings.connection_window_size - 65_535
        if extra > 0:
            self._conn.increment_flow_control_window(extra)

    def receive(self, data: bytes) -> list[H2Event]:
        if self._done:
            return []
        if self._preface_left:  # h2 refuses a bad preface without queueing a GOAWAY
            seen = data[:len(self._preface_left)]
            if not self._preface_left.startswith(seen):
                self._done = True
                self._write_goaway(PROTOCOL_ERROR, 0)
                return [ConnectionFailed(PROTOCOL_ERROR, "the client's connection preface is "
                                                         "not HTTP/2's")]
            self._preface_left = self._preface_left[len(seen):]
        try:
            found = self._conn.receive_data(data)
        except ProtocolError as error:  # h2 has queued GOAWAY with the error's code
            self._done = True
            code = int(error.error_code)
            cause = error.__cause__
            if (isinstance(cause, HPACKError) and not isinstance(cause, OversizedHeaderListError)
                    and self._recode_goaway(COMPRESSION_ERROR)):
                code = COMPRESSION_ERROR
            return [ConnectionFailed(code, str(error) or type(error).__name__)]
        except Exception as error:  # an h2 bug must not take the worker down
            _log.exception("HTTP/2 engine (h2) failed on input")
            self._done = True
            self._write_goaway(INTERNAL_ERROR, self.last_stream_id)
            return [ConnectionFailed(INTERNAL_ERROR, f"h2: {type(error).__name__}: {error}")]
        events: list[H2Event] = []
        for event in found:
            self._translate(event, events)
        return events

    def data_to_send(self) -> bytes:
        self._out += self._conn.data_to_send()
        if not self._out:
            return b""
        out = bytes(self._out)
        self._out.clear()
        return out

    def send_headers(self, stream_id: int, headers: list[Header], end_stream: bool) -> None:
        try:
            self._conn.send_headers(stream_id, headers, end_stream=end_stream)
        except H2Error:
            return  # the stream is gone (reset by either side), or the client said GOAWAY
        final = not (headers and headers[0][0] == b":status" and headers[0][1][:1] == b"1")
        if final and not end_stream:
            self._outgoing[stream_id] = _Outgoing()

    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        out = self._outgoing.get(stream_id)
        if out is None or out.ended:
            return
        if data:
            out.chunks.append(data)
            out.size += len(data)
        out.ended = end_stream
        self._flush(stream_id, out)

    def send_trailers(self, stream_id: int, headers: list[Header]) -> None:
        out = self._outgoing.get(stream_id)
        if out is None or out.ended:
            return
        out.ended = True
        out.trailers = headers
        self._flush(stream_id, out)

    def queued(self, stream_id: int) -> int:
        out = self._outgoing.get(stream_id)
        return 0 if out is None else out.size

    def acknowledge(self, stream_id: int, flow_length: int) -> None:
        if flow_length > 0 and not self._done:
            try:
                self._conn.acknowledge_received_data(flow_length, stream_id)
            except H2Error:
                pass  # the connection is closing: no window to open

    def reset(self, stream_id: int, error_code: int) -> None:
        self._outgoing.pop(stream_id, None)
        try:
            self._conn.reset_stream(stream_id, error_code)
        except H2Error:
            pass  # already closed: nothing to reset

    def release(self) -> None:
        self._done = True
        self._outgoing.clear()

    def goaway(self, error_code: int, last_stream_id: int | None = None) -> None:
        conn = self._conn
        if self._done:
            return  # the connection has failed: its GOAWAY is queued already
        if error_code == NO_ERROR and last_stream_id is None:
            if not self._shutting_down:  # the notice, then the real GOAWAY on the PING's ACK
                self._shutting_down = self._awaiting_ping_ack = True
                self._write_goaway(NO_ERROR, _LAST_STREAM_ID)
                try:
                    conn.ping(_SHUTDOWN_PING)
                except H2Error:  # the client sent GOAWAY: h2 sends nothing more
                    self._awaiting_ping_ack = False
            return
        last = self.last_stream_id if last_stream_id is None else last_stream_id
        self._last_stream_id = min(self._last_stream_id, last)
        if error_code == NO_ERROR:
            self._write_goaway(NO_ERROR, last)
        else:
            self._done = True
            conn.close_connection(error_code, last_stream_id=last)

    @property
    def open_streams(self) -> int:
        return self._conn.open_inbound_streams

    @property
    def last_stream_id(self) -> int:
        return int(self._conn.highest_inbound_stream_id)

    @property
    def final_stream_id(self) -> int:
        return self._last_stream_id

    @property
    def shutdown_pending(self) -> bool:
        return self._awaiting_ping_ack

    # -- helpers ---------------------------------------------------------------------------

    def _translate(self, event: object, events: list[H2Event]) -> None:
        """One h2 event as ours (or none: SETTINGS ACKs, PINGs, StreamEnded...)."""
        if isinstance(event, H2DataReceived):
            events.append(DataReceived(event.stream_id, event.data, event.flow_controlled_length,
                                       event.stream_ended is not None))
        elif isinstance(event, H2RequestReceived):
            stream_id = event.stream_id
            if stream_id > self._last_stream_id:  # after our final GOAWAY: refused
                self.reset(stream_id, REFUSED_STREAM)
                events.append(StreamReset(stream_id, REFUSED_STREAM, by_peer=False))
                return
            events.append(RequestReceived(stream_id, list(event.headers),
                                          event.stream_ended is not None))
        elif isinstance(event, H2TrailersReceived):
            events.append(TrailersReceived(event.stream_id, list(event.headers)))
        elif isinstance(event, WindowUpdated):
            if event.stream_id:
                out = self._outgoing.get(event.stream_id)
                if out is not None:
                    self._flush(event.stream_id, out)
            else:
                self._flush_all()
            events.append(WindowOpened(event.stream_id))
        elif isinstance(event, H2StreamReset):
            self._outgoing.pop(event.stream_id, None)
            events.append(StreamReset(event.stream_id, int(event.error_code),
                                      by_peer=event.remote_reset))
        elif isinstance(event, RemoteSettingsChanged):
            if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                self._flush_all()
                events.append(WindowOpened(0))
        elif isinstance(event, ConnectionTerminated):
            code = event.error_code
            events.append(GoAwayReceived(int(code) if code is not None else NO_ERROR,
                                         event.last_stream_id or 0))
        elif (isinstance(event, PingAckReceived) and self._awaiting_ping_ack
              and event.ping_data == _SHUTDOWN_PING):
            self._awaiting_ping_ack = False
            self.goaway(NO_ERROR, self.last_stream_id)

    def _flush(self, stream_id: int, out: _Outgoing) -> None:
        """Send what the windows allow; the trailers or END_STREAM once all has gone."""
        conn = self._conn
        chunks = out.chunks
        try:
            while chunks:
                room = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
                if room <= 0:
                    return
                chunk = chunks[0]
                left = len(chunk) - out.offset
                if left <= room:
                    piece = chunk if out.offset == 0 else chunk[out.offset:]
                    chunks.popleft()
                    out.offset = 0
                else:
                    piece = chunk[out.offset:out.offset + room]
                    out.offset += room
                out.size -= len(piece)
                last = not chunks and out.ended and out.trailers is None
                conn.send_data(stream_id, piece, end_stream=last)
                if last:
                    del self._outgoing[stream_id]
                    return
            if out.ended:
                del self._outgoing[stream_id]
                if out.trailers is not None:
                    conn.send_headers(stream_id, out.trailers, end_stream=True)
                else:
                    conn.end_stream(stream_id)
        except H2Error:  # the stream is gone, or the client said GOAWAY: drop the body
            self._outgoing.pop(stream_id, None)

    def _flush_all(self) -> None:
        for stream_id, out in list(self._outgoing.items()):
            self._flush(stream_id, out)

    def _recode_goaway(self, error_code: int) -> bool:
        """RFC 9113 §4.3: an HPACK decoding error is a COMPRESSION_ERROR; h2 says PROTOCOL_ERROR.
        Replace the GOAWAY h2 has just queued (the last 17 bytes: no debug data)."""
        pending = self._conn.data_to_send()
        tail = pending[-17:]
        if len(tail) != 17 or tail[:9] != b"\x00\x00\x08\x07\x00\x00\x00\x00\x00":
            self._out += pending  # not the frame expected: leave h2's choice alone
            return False
        self._out += pending[:-17]
        self._out += tail[:13] + error_code.to_bytes(4, "big")
        return True

    def _write_goaway(self, error_code: int, last_stream_id: int) -> None:
        """A GOAWAY ``h2`` does not know of (module docstring), after what it has queued."""
        self._out += self._conn.data_to_send()
        frame = GoAwayFrame(0, last_stream_id=last_stream_id,
                            error_code=ErrorCodes(error_code) if error_code in _CODES
                            else error_code)
        self._out += frame.serialize()


_CODES = frozenset(int(code) for code in ErrorCodes)


def make(settings: H2Settings) -> HyperH2Engine:
    """The engine factory (:class:`offload.proto.h2_engine.EngineFactory`)."""
    return HyperH2Engine(settings)
