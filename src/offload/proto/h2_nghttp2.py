"""The HTTP/2 server engine on libnghttp2 (sans-IO), through offload's cffi binding.

Importing this module fails with ImportError when the binding was not built (setup.py records
why; :func:`offload.proto.h2_engines.make_engine` then falls back to python-hyper ``h2``).

How the library is driven (the contract is :mod:`offload.proto.h2_engine`'s docstring):

* ``nghttp2_session_mem_recv`` parses what the client sent; callbacks collect the events. Every
  call that may have queued frames is followed by draining ``nghttp2_session_mem_send`` into
  one buffer, so what nghttp2 decides on its own — a RST_STREAM for a malformed request, a
  GOAWAY for a connection error — is seen during :meth:`NgHttp2Engine.receive` (by the frame-sent
  callback) and reported there: as ``StreamReset(by_peer=False)`` or :class:`ConnectionFailed`.
* Automatic WINDOW_UPDATEs are off: :meth:`NgHttp2Engine.acknowledge` calls
  ``nghttp2_session_consume``, which sends one when half a window has been consumed. nghttp2
  consumes padding itself, so ``flow_length`` is the data length.
* Response bodies are pulled by nghttp2 from a per-stream queue through the data provider:
  what the windows allow is copied into frames, an empty queue defers the stream
  (``NGHTTP2_ERR_DEFERRED``) until :meth:`NgHttp2Engine.send_data` resumes it. Trailers are
  submitted from the provider once the queue is empty.
* nghttp2 does not enforce the header list size it announces; :meth:`NgHttp2Engine._header`
  does (a connection error ENHANCE_YOUR_CALM, as python-hyper ``h2`` answers).
"""

from __future__ import annotations

import logging
import sys
from collections import deque
from types import TracebackType
from typing import Any

from offload.proto._nghttp2 import ffi, lib
from offload.proto.h2_engine import (
    ENHANCE_YOUR_CALM,
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

_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY, _WINDOW_UPDATE = (
    lib.NGHTTP2_DATA, lib.NGHTTP2_HEADERS, lib.NGHTTP2_RST_STREAM, lib.NGHTTP2_SETTINGS,
    lib.NGHTTP2_PING, lib.NGHTTP2_GOAWAY, lib.NGHTTP2_WINDOW_UPDATE)
_END_STREAM = lib.NGHTTP2_FLAG_END_STREAM
_REQUEST = lib.NGHTTP2_HCAT_REQUEST
_DEFERRED = lib.NGHTTP2_ERR_DEFERRED
_EOF = lib.NGHTTP2_DATA_FLAG_EOF
_EOF_TRAILERS = lib.NGHTTP2_DATA_FLAG_EOF | lib.NGHTTP2_DATA_FLAG_NO_END_STREAM


def _error_text(code: int) -> str:
    return str(ffi.string(lib.nghttp2_strerror(code)).decode("ascii", "replace"))


class _Outgoing:
    """A response body waiting for the client's windows."""

    __slots__ = ("chunks", "deferred", "ended", "offset", "size", "trailers")

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.offset = 0
        """How much of ``chunks[0]`` has gone."""
        self.size = 0
        self.ended = False
        self.trailers: list[Header] | None = None
        self.deferred = False
        """nghttp2 was told there is nothing yet: it must be resumed when there is."""


class NgHttp2Engine:
    """One HTTP/2 server connection on libnghttp2 (module docstring)."""

    name = "nghttp2"

    def __init__(self, settings: H2Settings) -> None:
        self._settings = settings
        self._handle = ffi.new_handle(self)
        self._out = bytearray()
        self._sent = ffi.new("const uint8_t **")
        self._events: list[H2Event] = []
        self._headers: list[Header] = []
        self._header_size = 0
        self._header_overflow = False
        self._chunks: list[bytes] = []
        self._outgoing: dict[int, _Outgoing] = {}
        self._open: set[int] = set()
        self._own_resets: set[int] = set()
        self._own_goaways = 0
        self._shutdown_pinged = False
        self._awaiting_ping_ack = False
        self._done = False
        """A connection error happened, or the caller sent GOAWAY with an error: no more input."""
        self._reason = ""
        self._session = self._new_session()

    def _new_session(self) -> Any:
        option = ffi.new("nghttp2_option **")
        if lib.nghttp2_option_new(option) != 0:
            raise MemoryError("nghttp2_option_new")
        try:
            lib.nghttp2_option_set_no_auto_window_update(option[0], 1)
            lib.nghttp2_option_set_max_send_header_block_length(
                option[0], max(self._settings.max_header_list_size, 16_384))
            session = ffi.new("nghttp2_session **")
            if lib.offload_session_new(session, option[0], self._handle) != 0:
                raise MemoryError("nghttp2_session_server_new2")
        finally:
            lib.nghttp2_option_del(option[0])
        return ffi.gc(session[0], lib.nghttp2_session_del)

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
        if self._done:
            return []
        result = lib.nghttp2_session_mem_recv(self._session, data, len(data))
        if result < 0:
            code, self._reason = _FATAL.get(
                result, (INTERNAL_ERROR, f"nghttp2: {_error_text(result)}"))
            lib.nghttp2_session_terminate_session(self._session, code)
            self._drain()
            if not self._done:  # nghttp2 could not queue the GOAWAY: say so all the same
                self._fail(code)
        else:
            self._drain()
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
            kind = lib.OFFLOAD_RESPONSE
            self._outgoing[stream_id] = _Outgoing()
        self._submit(kind, stream_id, headers)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        out = self._outgoing.get(stream_id)
        if out is None or out.ended:
            return  # the stream is gone (reset by either side): nothing to send it on
        if data:
            out.chunks.append(data)
            out.size += len(data)
        if end_stream:
            out.ended = True
        self._resume(stream_id, out)

    def send_trailers(self, stream_id: int, headers: list[Header]) -> None:
        out = self._outgoing.get(stream_id)
        if out is None or out.ended:
            return
        out.ended = True
        out.trailers = headers
        self._resume(stream_id, out)

    def queued(self, stream_id: int) -> int:
        out = self._outgoing.get(stream_id)
        return 0 if out is None else out.size

    def acknowledge(self, stream_id: int, flow_length: int) -> None:
        if flow_length > 0:
            self._check(lib.nghttp2_session_consume(self._session, stream_id, flow_length))

    def reset(self, stream_id: int, error_code: int) -> None:
        self._outgoing.pop(stream_id, None)
        self._own_resets.add(stream_id)
        self._check(lib.nghttp2_submit_rst_stream(self._session, 0, stream_id, error_code))

    def goaway(self, error_code: int, last_stream_id: int | None = None) -> None:
        session = self._session
        if error_code == NO_ERROR and last_stream_id is None:
            if not self._shutdown_pinged:  # the notice, then the real GOAWAY on the PING's ACK
                self._shutdown_pinged = self._awaiting_ping_ack = True
                self._own_goaways += 1
                self._check(lib.nghttp2_submit_shutdown_notice(session))
                self._check(lib.nghttp2_submit_ping(session, 0, _SHUTDOWN_PING))
            return
        last = (lib.nghttp2_session_get_last_proc_stream_id(session) if last_stream_id is None
                else last_stream_id)
        self._own_goaways += 1
        if error_code == NO_ERROR:
            self._check(lib.nghttp2_submit_goaway(session, 0, last, NO_ERROR, ffi.NULL, 0))
        else:
            self._done = True
            self._check(lib.nghttp2_session_terminate_session2(session, last, error_code))

    @property
    def open_streams(self) -> int:
        return len(self._open)

    # -- helpers ---------------------------------------------------------------------------

    def _check(self, result: int) -> None:
        if result < 0 and result != lib.NGHTTP2_ERR_INVALID_ARGUMENT:
            raise RuntimeError(f"nghttp2: {_error_text(result)}")

    def _submit(self, kind: int, stream_id: int, headers: list[Header]) -> None:
        block = b"".join([part for field in headers for part in field])
        lengths = [len(part) for field in headers for part in field]
        result = lib.offload_submit(self._session, kind, stream_id, block, lengths, len(headers))
        if result < 0 and stream_id in self._open:
            raise ValueError(f"nghttp2 refused the header block: {_error_text(result)}")

    def _resume(self, stream_id: int, out: _Outgoing) -> None:
        if out.deferred:
            out.deferred = False
            lib.nghttp2_session_resume_data(self._session, stream_id)

    def _drain(self) -> None:
        """Take every frame nghttp2 has queued (module docstring)."""
        session, sent, out = self._session, self._sent, self._out
        while True:
            length = lib.nghttp2_session_mem_send(session, sent)
            if length <= 0:
                if length < 0 and not self._done:
                    self._reason = f"nghttp2: {_error_text(length)}"
                    self._fail(INTERNAL_ERROR)
                return
            out += ffi.buffer(sent[0], length)

    def _fail(self, error_code: int) -> None:
        self._done = True
        self._events.append(ConnectionFailed(error_code, self._reason or "protocol error"))

    # -- callbacks (from C, through the functions at the end of this module) ----------------

    def _begin_headers(self, stream_id: int) -> None:
        self._headers = []
        self._header_size = 0

    def _header(self, name: bytes, value: bytes) -> int:
        if self._header_overflow:
            return 0
        self._header_size += len(name) + len(value) + 32
        if self._header_size > self._settings.max_header_list_size:
            self._header_overflow = True
            self._reason = (f"a header list larger than the {self._settings.max_header_list_size} "
                            "bytes announced")
            lib.nghttp2_session_terminate_session(self._session, ENHANCE_YOUR_CALM)
            return 0
        self._headers.append((name, value))
        return 0

    def _frame_recv(self, kind: int, flags: int, stream_id: int, length: int, code: int,
                    argument: int) -> None:
        if kind == _DATA:
            chunks, self._chunks = self._chunks, []
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._events.append(DataReceived(stream_id, data, length, bool(flags & _END_STREAM)))
        elif kind == _HEADERS:
            if self._header_overflow:
                return
            if code == _REQUEST:
                self._open.add(stream_id)
                self._events.append(RequestReceived(stream_id, self._headers,
                                                    bool(flags & _END_STREAM)))
            else:
                self._events.append(TrailersReceived(stream_id, self._headers))
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
            self.goaway(NO_ERROR, lib.nghttp2_session_get_last_proc_stream_id(self._session))

    def _frame_sent(self, kind: int, stream_id: int, code: int) -> None:
        if kind == _RST_STREAM:
            if stream_id in self._own_resets:
                self._own_resets.discard(stream_id)
            else:
                self._events.append(StreamReset(stream_id, code, by_peer=False))
        elif self._own_goaways > 0:
            self._own_goaways -= 1
        elif not self._done:
            self._fail(code)

    def _invalid_frame(self, lib_error_code: int) -> None:
        self._reason = f"nghttp2: {_error_text(lib_error_code)}"

    def _stream_closed(self, stream_id: int) -> None:
        self._open.discard(stream_id)
        self._outgoing.pop(stream_id, None)
        self._own_resets.discard(stream_id)

    def _read(self, stream_id: int, buf: Any, length: int, data_flags: Any) -> int:
        out = self._outgoing.get(stream_id)
        if out is None:  # reset meanwhile: end the body (nghttp2 drops it with the stream)
            data_flags[0] = _EOF
            return 0
        chunks = out.chunks
        written = 0
        while chunks and written < length:
            chunk = chunks[0]
            size = len(chunk) - out.offset
            room = length - written
            if size <= room:
                ffi.memmove(buf + written, chunk if out.offset == 0 else
                            memoryview(chunk)[out.offset:], size)
                chunks.popleft()
                out.offset = 0
                written += size
            else:
                ffi.memmove(buf + written, memoryview(chunk)[out.offset:out.offset + room], room)
                out.offset += room
                written += room
        out.size -= written
        if not chunks:
            if out.ended:
                del self._outgoing[stream_id]
                if out.trailers is None:
                    data_flags[0] = _EOF
                else:
                    data_flags[0] = _EOF_TRAILERS
                    self._submit(lib.OFFLOAD_TRAILERS, stream_id, out.trailers)
            elif written == 0:
                out.deferred = True
                return int(_DEFERRED)
        return written


def _callback_failed(exception: type[BaseException] | None, value: BaseException | None,
                     traceback: TracebackType | None) -> None:
    """A bug in a callback: nghttp2 gets NGHTTP2_ERR_CALLBACK_FAILURE (a connection error,
    INTERNAL_ERROR) and the log says what happened."""
    _log.error("HTTP/2 engine (nghttp2) callback failed", exc_info=value)


_FAILED = int(lib.NGHTTP2_ERR_CALLBACK_FAILURE)


@ffi.def_extern(error=_FAILED, onerror=_callback_failed)  # type: ignore[untyped-decorator]
def offload_begin_headers(handle: Any, stream_id: int, category: int) -> int:
    ffi.from_handle(handle)._begin_headers(stream_id)
    return 0


@ffi.def_extern(error=_FAILED, onerror=_callback_failed)  # type: ignore[untyped-decorator]
def offload_header(session: Any, frame: Any, name: Any, namelen: int, value: Any,
                   valuelen: int, flags: int, handle: Any) -> int:
    engine: NgHttp2Engine = ffi.from_handle(handle)
    return engine._header(ffi.buffer(name, namelen)[:], ffi.buffer(value, valuelen)[:])


@ffi.def_extern(error=_FAILED, onerror=_callback_failed)  # type: ignore[untyped-decorator]
def offload_frame_recv(handle: Any, kind: int, flags: int, stream_id: int, length: int,
                       code: int, argument: int) -> int:
    ffi.from_handle(handle)._frame_recv(kind, flags, stream_id, length, code, argument)
    return 0


@ffi.def_extern(error=_FAILED, onerror=_callback_failed)  # type: ignore[untyped-decorator]
def offload_data_chunk(session: Any, flags: int, stream_id: int, data: Any, length: int,
                       handle: Any) -> int:
    ffi.from_handle(handle)._chunks.append(ffi.buffer(data, length)[:])
    return 0


@ffi.def_extern(error=_FAILED, onerror=_callback_failed)  # type: ignore[untyped-decorator]
def offload_frame_sent(handle: Any, kind: int, stream_id: int, code: int,
                       last_stream_id: int) -> int:
    ffi.from_handle(handle)._frame_sent(kind, stream_id, code)
    return 0


@ffi.def_extern(error=_FAILED, onerror=_callback_failed)  # type: ignore[untyped-decorator]
def offload_stream_closed(session: Any, stream_id: int, error_code: int, handle: Any) -> int:
    ffi.from_handle(handle)._stream_closed(stream_id)
    return 0


@ffi.def_extern(error=_FAILED, onerror=_callback_failed)  # type: ignore[untyped-decorator]
def offload_invalid_frame(handle: Any, kind: int, stream_id: int, lib_error_code: int) -> int:
    ffi.from_handle(handle)._invalid_frame(lib_error_code)
    return 0


@ffi.def_extern(error=_FAILED, onerror=_callback_failed)  # type: ignore[untyped-decorator]
def offload_read(session: Any, stream_id: int, buf: Any, length: int, data_flags: Any,
                 source: Any, handle: Any) -> int:
    engine: NgHttp2Engine = ffi.from_handle(handle)
    return engine._read(stream_id, buf, length, data_flags)


def make(settings: H2Settings) -> NgHttp2Engine:
    """The engine factory (:class:`offload.proto.h2_engine.EngineFactory`)."""
    return NgHttp2Engine(settings)
