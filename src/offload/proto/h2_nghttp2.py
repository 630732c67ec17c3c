"""The HTTP/2 server engine on libnghttp2 (sans-IO), through offload's cffi binding.

Importing this module fails with ImportError when the binding was not built (setup.py records
why; :func:`offload.proto.h2_engines.make_engine` then falls back to python-hyper ``h2``).

How the library is driven (the contract is :mod:`offload.proto.h2_engine`'s docstring):

* ``nghttp2_session_mem_recv`` parses what the client sent; callbacks collect the events. Every
  call that may have queued frames is followed by draining ``nghttp2_session_mem_send`` into
  one buffer, so what nghttp2 decides on its own — a RST_STREAM for a malformed request, a
  GOAWAY for a connection error — is seen during :meth:`NgHttp2Engine.receive` (by the frame-sent
  callback) and reported there: as ``StreamReset(by_peer=False)`` or :class:`ConnectionFailed`.
  (What the caller queued is drained before the input is parsed, so a RST_STREAM sent after
  it is nghttp2's.)
* Automatic WINDOW_UPDATEs are off: :meth:`NgHttp2Engine.acknowledge` calls
  ``nghttp2_session_consume``, which sends one when half a window has been consumed. nghttp2
  consumes padding itself, so ``flow_length`` is the data length.
* Response bodies wait in a per-stream buffer on the C side (the stream's user data in
  nghttp2), which nghttp2's data provider reads as the windows allow, without a call into
  Python; an empty buffer defers the stream (``NGHTTP2_ERR_DEFERRED``) until
  :meth:`NgHttp2Engine.send_data` adds to it and resumes it. Trailers wait there too and are
  submitted once the body has gone. Buffers are freed when their stream closes.
* Header fields are collected on the C side and read once per block. nghttp2 does not enforce
  the header list size it announces; the C side does (a connection error ENHANCE_YOUR_CALM, as
  python-hyper ``h2`` answers).
"""

from __future__ import annotations

import logging
import sys
from types import TracebackType
from typing import Any

from offload.proto._nghttp2 import ffi, lib
from offload.proto.h2_engine import (
    COMPRESSION_ERROR,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    INTERNAL_ERROR,
    NO_ERROR,
    PROTOCOL_ERROR,
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

_SHUTDOWN_PING = b"offload!"
_SHUTDOWN_PING_VALUE = int.from_bytes(_SHUTDOWN_PING, sys.byteorder, signed=True)
"""The PING after a shutdown notice: its ACK says the client has seen the notice, and the
final GOAWAY can name the last stream (RFC 9113 §6.8)."""

_FATAL = {
    lib.NGHTTP2_ERR_BAD_CLIENT_MAGIC: (PROTOCOL_ERROR, "the client's connection preface is not "
                                       "HTTP/2's"),
    lib.NGHTTP2_ERR_FLOODED: (ENHANCE_YOUR_CALM, "the client made the server queue too many "
                              "control frames without reading them"),
}

_REASONS = {COMPRESSION_ERROR: "a header block that HPACK cannot decode",
            FLOW_CONTROL_ERROR: "a flow-control window overrun or overflowed",
            FRAME_SIZE_ERROR: "a frame of a size its type does not allow"}
"""Reasons for a connection error nghttp2 found without telling why."""

_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY, _WINDOW_UPDATE = (
    lib.NGHTTP2_DATA, lib.NGHTTP2_HEADERS, lib.NGHTTP2_RST_STREAM, lib.NGHTTP2_SETTINGS,
    lib.NGHTTP2_PING, lib.NGHTTP2_GOAWAY, lib.NGHTTP2_WINDOW_UPDATE)
_END_STREAM = lib.NGHTTP2_FLAG_END_STREAM
_REQUEST = lib.NGHTTP2_HCAT_REQUEST


def _error_text(code: int) -> str:
    return str(ffi.string(lib.nghttp2_strerror(code)).decode("ascii", "replace"))


class NgHttp2Engine:
    """One HTTP/2 server connection on libnghttp2 (module docstring)."""

    name = "nghttp2"

    def __init__(self, settings: H2Settings) -> None:
        self._settings = settings
        self._handle = ffi.new_handle(self)
        self._out = bytearray()
        self._events: list[H2Event] = []
        self._chunks: list[bytes] = []
        self._draining_receive = False
        self._submitted = False
        """Something was queued since the last drain (else receive need not drain first)."""
        """Frames sent now were queued by nghttp2 while it parsed input: its own decisions."""
        self._own_goaways = 0
        self._final_stream_id = 2**31 - 1
        self._shutdown_pinged = False
        self._awaiting_ping_ack = False
        self._done = False
        """A connection error happened, or the caller sent GOAWAY with an error: no more input."""
        self._reason = ""
        self._context = self._new_context()
        self._session = self._context.session

    def _new_context(self) -> Any:
        """The session, and the C side's state beside it; freed together with the engine."""
        option = ffi.new("nghttp2_option **")
        if lib.nghttp2_option_new(option) != 0:
            raise MemoryError("nghttp2_option_new")
        try:
            lib.nghttp2_option_set_no_auto_window_update(option[0], 1)
            lib.nghttp2_option_set_max_send_header_block_length(
                option[0], max(self._settings.max_header_list_size, 16_384))
            context = lib.offload_new(option[0], self._handle,
                                      self._settings.max_header_list_size)
            if context == ffi.NULL:
                raise MemoryError("nghttp2_session_server_new2")
        finally:
            lib.nghttp2_option_del(option[0])
        return ffi.gc(context, lib.offload_del)

    # -- the H2Engine interface ------------------------------------------------------------

    def initiate(self) -> None:
        settings = self._settings
        entries = [(lib.NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, settings.max_concurrent_streams),
                   (lib.NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, settings.initial_window_size),
                   (lib.NGHTTP2_SETTINGS_MAX_FRAME_SIZE, settings.max_frame_size),
                   (lib.NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, settings.max_header_list_size)]
        if settings.header_table_size != 4_096:
            entries.insert(0, (lib.NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, settings.header_table_size))
        iv = ffi.new("nghttp2_settings_entry[]", entries)
        self._check(lib.nghttp2_submit_settings(self._session, 0, iv, len(entries)))
        if settings.connection_window_size > 65_535:
            self._check(lib.nghttp2_session_set_local_window_size(
                self._session, 0, 0, settings.connection_window_size))

    def receive(self, data: bytes) -> list[H2Event]:
        if self._done:  # no more input; a failure found while sending is still told
            events, self._events = self._events, []
            return events
        if self._submitted:  # what the caller queued goes first, and is not nghttp2's doing
            self._drain()
        result = lib.nghttp2_session_mem_recv(self._session, data, len(data))
        self._draining_receive = True
        try:
            if result < 0:
                code, self._reason = _FATAL.get(
                    result, (INTERNAL_ERROR, f"nghttp2: {_error_text(result)}"))
                lib.nghttp2_session_terminate_session(self._session, code)
                self._drain()
                if not self._done:  # nghttp2 could not queue the GOAWAY: say so all the same
                    self._fail(code)
            else:
                self._drain()
        finally:
            self._draining_receive = False
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> bytes:
        self._drain()
        if not self._out:
            return b""
        out = bytes(self._out)
        self._out.clear()
        return out

    def send_headers(self, stream_id: int, headers: list[Header], end_stream: bool) -> None:
        if end_stream:
            kind = lib.OFFLOAD_RESPONSE_END
        elif headers and headers[0][0] == b":status" and headers[0][1][:1] == b"1":
            kind = lib.OFFLOAD_INTERIM
        else:
            kind = lib.OFFLOAD_RESPONSE  # the C side keeps the body that follows
        self._submit(kind, stream_id, headers)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        # copied into the stream's body on the C side; a stream that is gone takes nothing
        self._check(lib.offload_push(self._context, stream_id, data, len(data), end_stream))

    def send_trailers(self, stream_id: int, headers: list[Header]) -> None:
        self._submit(lib.OFFLOAD_TRAILERS, stream_id, headers)

    def queued(self, stream_id: int) -> int:
        return int(lib.offload_queued(self._context, stream_id))

    def acknowledge(self, stream_id: int, flow_length: int) -> None:
        if flow_length > 0:
            self._check(lib.nghttp2_session_consume(self._session, stream_id, flow_length))

    def reset(self, stream_id: int, error_code: int) -> None:
        lib.offload_drop(self._context, stream_id)
        self._check(lib.nghttp2_submit_rst_stream(self._session, 0, stream_id, error_code))

    def release(self) -> None:
        self._done = True
        lib.offload_drop_all(self._context)

    def goaway(self, error_code: int, last_stream_id: int | None = None) -> None:
        session = self._session
        if error_code == NO_ERROR and last_stream_id is None:
            if not self._shutdown_pinged:  # the notice, then the real GOAWAY on the PING's ACK
                self._shutdown_pinged = self._awaiting_ping_ack = True
                self._own_goaways += 1
                self._check(lib.nghttp2_submit_shutdown_notice(session))
                self._check(lib.nghttp2_submit_ping(session, 0, _SHUTDOWN_PING))
            return
        last = self.last_stream_id if last_stream_id is None else last_stream_id
        self._own_goaways += 1
        self._final_stream_id = min(self._final_stream_id, last)
        if error_code == NO_ERROR:
            self._check(lib.nghttp2_submit_goaway(session, 0, last, NO_ERROR, ffi.NULL, 0))
        else:
            self._done = True
            self._check(lib.nghttp2_session_terminate_session2(session, last, error_code))

    @property
    def open_streams(self) -> int:
        return int(self._context.open_streams)

    @property
    def last_stream_id(self) -> int:
        return int(lib.nghttp2_session_get_last_proc_stream_id(self._session))

    @property
    def final_stream_id(self) -> int:
        return self._final_stream_id

    @property
    def shutdown_pending(self) -> bool:
        return self._awaiting_ping_ack

    # -- helpers ---------------------------------------------------------------------------

    def _check(self, result: int) -> None:
        """nghttp2 refuses what no longer applies (a reset of a closed stream, a GOAWAY after
        the connection failed): nothing to do then. Only running out of memory is raised."""
        self._submitted = True
        if result == lib.NGHTTP2_ERR_NOMEM:
            raise MemoryError("nghttp2")

    def _submit(self, kind: int, stream_id: int, headers: list[Header]) -> None:
        block = b"".join([part for field in headers for part in field])
        lengths = [len(part) for field in headers for part in field]
        # an error means the stream is gone or was never ours to answer: as with the data of
        # a reset stream, there is nothing to send
        self._check(lib.offload_submit(self._context, kind, stream_id, block, lengths,
                                       len(headers)))

    def _drain(self) -> None:
        """Take every frame nghttp2 has queued (module docstring)."""
        self._submitted = False
        length = lib.offload_send_all(self._context)
        if length > 0:
            self._out += ffi.buffer(self._context.out, length)
        elif length < 0 and not self._done:
            self._reason = f"nghttp2: {_error_text(length)}"
            self._fail(INTERNAL_ERROR)

    def _fail(self, error_code: int) -> None:
        self._done = True
        reason = self._reason or _REASONS.get(error_code, "protocol error")
        self._events.append(ConnectionFailed(error_code, reason))

    # -- callbacks (from C, through the functions at the end of this module) ----------------

    def _header_block(self) -> list[Header]:
        """The fields the C side collected for the block just received."""
        context = self._context
        if not context.count:
            return []
        parts = iter(ffi.buffer(context.block, context.used - 1)[:].split(b"\0"))
        return list(zip(parts, parts, strict=True))

    def _frame_recv(self, kind: int, flags: int, stream_id: int, length: int, code: int,
                    argument: int) -> None:
        if kind == _DATA:
            chunks, self._chunks = self._chunks, []
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._events.append(DataReceived(stream_id, data, length, bool(flags & _END_STREAM)))
        elif kind == _HEADERS:
            if self._context.overflow:
                return
            if code == _REQUEST:
                self._events.append(RequestReceived(stream_id, self._header_block(),
                                                    bool(flags & _END_STREAM)))
            else:
                self._events.append(TrailersReceived(stream_id, self._header_block()))
        elif kind == _RST_STREAM:
            self._events.append(StreamReset(stream_id, code, by_peer=True))
        elif kind == _WINDOW_UPDATE:
            self._events.append(WindowOpened(stream_id))
        elif kind == _SETTINGS:  # the C side passes only those changing INITIAL_WINDOW_SIZE
            self._events.append(WindowOpened(0))
        elif kind == _GOAWAY:
            self._events.append(GoAwayReceived(code, argument))
        elif kind == _PING and argument == _SHUTDOWN_PING_VALUE and self._awaiting_ping_ack:
            self._awaiting_ping_ack = False
            self.goaway(NO_ERROR, self.last_stream_id)

    def _frame_sent(self, kind: int, stream_id: int, code: int) -> None:
        if kind == _RST_STREAM:
            if self._draining_receive:
                self._events.append(StreamReset(stream_id, code, by_peer=False))
        elif self._own_goaways > 0:
            self._own_goaways -= 1
        elif not self._done:
            if self._context.reason != ffi.NULL:  # the C side's own checks
                self._reason = ffi.string(self._context.reason).decode("ascii")
            self._fail(code)

    def _invalid_frame(self, lib_error_code: int) -> None:
        self._reason = f"nghttp2: {_error_text(lib_error_code)}"


def _callback_failed(exception: type[BaseException] | None, value: BaseException | None,
                     traceback: TracebackType | None) -> None:
    """A bug in a callback: nghttp2 gets NGHTTP2_ERR_CALLBACK_FAILURE (a connection error,
    INTERNAL_ERROR) and the log says what happened."""
    _log.error("HTTP/2 engine (nghttp2) callback failed", exc_info=value)


_FAILED = int(lib.NGHTTP2_ERR_CALLBACK_FAILURE)


@ffi.def_extern(error=_FAILED, onerror=_callback_failed)  # type: ignore[untyped-decorator]
def offload_frame_recv(handle: Any, kind: int, flags: int, stream_id: int, length: int,
                       code: int, argument: int) -> int:
    ffi.from_handle(handle)._frame_recv(kind, flags, stream_id, length, code, argument)
    return 0


@ffi.def_extern(error=_FAILED, onerror=_callback_failed)  # type: ignore[untyped-decorator]
def offload_data_chunk(handle: Any, stream_id: int, data: Any, length: int) -> int:
    ffi.from_handle(handle)._chunks.append(ffi.buffer(data, length)[:])
    return 0


@ffi.def_extern(error=_FAILED, onerror=_callback_failed)  # type: ignore[untyped-decorator]
def offload_frame_sent(handle: Any, kind: int, stream_id: int, code: int) -> int:
    ffi.from_handle(handle)._frame_sent(kind, stream_id, code)
    return 0


@ffi.def_extern(error=_FAILED, onerror=_callback_failed)  # type: ignore[untyped-decorator]
def offload_invalid_frame(handle: Any, lib_error_code: int) -> int:
    ffi.from_handle(handle)._invalid_frame(lib_error_code)
    return 0


def make(settings: H2Settings) -> NgHttp2Engine:
    """The engine factory (:class:`offload.proto.h2_engine.EngineFactory`)."""
    return NgHttp2Engine(settings)
