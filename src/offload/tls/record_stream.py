"""The half that both TLS streams on memory BIOs share: records in and out, and the TCP
transport under them.

:class:`~offload.tls.stream.TLSServerStream` (a client's connection) and
:class:`~offload.tls.client_stream.TLSClientStream` (a connection to a backend server) work
alike below their handshakes: the TCP transport hands them ciphertext, which goes to OpenSSL
through a ``MemoryBIO`` and an ``SSLObject``; what their application writes is encrypted and
written to the TCP transport at once, so the only write buffer is the TCP transport's. Writing
and reading records, closing the TCP connection and answering the application as a transport
(write, buffer sizes, pausing reading, closing state) are the same on both ends, so they are
written once, here. Each stream keeps what is its own: the handshake, what it does with the
plaintext and an end of stream, and how it closes.

Both streams are compiled (mypyc, one group): the methods here are native methods of each
stream, and what they call that a stream overrides (``_send``, ``_read``) goes through the
class's vtable, a few instructions more than the direct calls of the two copies this replaced
(benchmarks/callgrind_costs.py: no change per keep-alive request beyond its run-to-run spread).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import Any

from offload.tls.sslobject import record_calls
from offload.writes import WriteBatcher

READ_CHUNK = 16 * 1024
"""Bytes asked of one ``SSLObject.read``: one TLS record's worth of plaintext."""

HANDSHAKE, OPEN, CLOSING, CLOSED = range(4)
"""A stream's states, in order: ``>= CLOSING`` is closing or closed."""


class TLSRecordStream(asyncio.Transport):
    """TLS records on memory BIOs over a TCP transport: a Transport for the application.

    A subclass creates the ``SSLObject`` (server or client side), is the TCP transport's
    Protocol, and defines :meth:`_read` (decrypt and deliver), :meth:`_unread` and
    :meth:`_resume_read` (what reading again after a pause finds and does)."""

    __slots__ = ("_batcher", "_incoming", "_loop", "_outgoing", "_peer_eof", "_reading_paused",
                 "_records", "_ssl", "_state", "_tcp", "_write_eof")
    _extra: Mapping[str, Any]
    """Set by ``BaseTransport.__init__`` (its ``__slots__``), never read: ``get_extra_info``
    is ours. Declared so that the compiled class has a place of its own for it. Without it,
    the slot ``BaseTransport`` declares sits where mypyc keeps the vtable of a native class
    (CPython would refuse this layout conflict; mypyc builds the type without the check), and
    ``super().__init__()`` overwrote that pointer: harmless while each stream had no subclass
    (mypyc then calls its methods directly), a crash at the first call through the vtable."""

    def __init__(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
                 ssl_object: ssl.SSLObject, batcher: WriteBatcher | None) -> None:
        # what BaseTransport.__init__ does, without its (interpreted) call per connection
        self._extra = {}
        self._incoming = incoming
        self._outgoing = outgoing
        self._ssl = ssl_object
        self._records: Any = record_calls(ssl_object)
        """read, write and pending without the SSLObject's Python frame around each."""
        self._batcher = batcher
        self._state = HANDSHAKE
        self._tcp: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._reading_paused = False
        self._peer_eof = False
        self._write_eof = False

    # ----------------------------------------------------------------- records and TCP

    def _flush(self) -> None:
        if self._outgoing.pending and self._tcp is not None:
            self._send(self._outgoing.read())

    def _send(self, data: bytes) -> None:
        tcp = self._tcp
        if tcp is None:
            return
        if self._batcher is not None:
            self._batcher.write(tcp, data)
        else:
            tcp.write(data)

    def _tcp_close(self, *, abort: bool = False) -> None:
        """Close the TCP connection after every queued write is out (abort: at once)."""
        tcp = self._tcp
        if tcp is None:
            return
        if self._batcher is not None:
            self._batcher.flush()
        if abort:
            tcp.abort()
        else:
            tcp.close()

    def _decrypt(self) -> tuple[bytes, bool]:
        """Decrypt what the incoming BIO holds; returns (plaintext, close_notify seen).

        Raises ``SSLError`` for a broken record, and ``SSLEOFError`` for a TCP EOF without
        close_notify once the incoming BIO was told of it (``write_eof``)."""
        read = self._records.read
        incoming = self._incoming
        chunks: list[bytes] = []
        eof = False
        try:
            while True:
                chunk = read(READ_CHUNK)
                if not chunk:
                    eof = True
                    break
                chunks.append(chunk)
                if not incoming.pending and not self._records.pending():
                    break
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            # close_notify after we sent ours: Python raises instead of returning b"".
            eof = True
        if self._outgoing.pending:
            self._flush()  # post-handshake messages: key update replies, alerts
        if len(chunks) == 1:
            return chunks[0], eof
        return b"".join(chunks), eof

    def _read(self) -> None:
        """Decrypt what has come and hand it to the application (each stream's own)."""
        raise NotImplementedError

    def _send_close_notify(self) -> None:
        try:
            self._records.shutdown()  # SSLObject.unwrap() without its Python frame
        except ssl.SSLError:
            pass  # WantRead: our close_notify is written, the peer's has not come yet
        self._flush()

    # ----------------------------------------------------------------- app side (Transport)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._state != OPEN or self._write_eof:
            return
        sent = self._records.write(data)
        if sent < len(data):  # never with memory BIOs, but the API allows it
            view = memoryview(data)[sent:]
            while view:
                view = view[self._records.write(view):]
        self._send(self._outgoing.read())

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return True

    def abort(self) -> None:
        self._state = max(self._state, CLOSING)
        self._tcp_close(abort=True)

    def is_closing(self) -> bool:
        return self._state >= CLOSING

    def pause_reading(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            if self._tcp is not None and self._state <= OPEN:
                self._tcp.pause_reading()

    def resume_reading(self) -> None:
        if not self._reading_paused:
            return
        self._reading_paused = False
        if self._state != OPEN or self._tcp is None:
            return
        if self._unread():
            self._loop.call_soon(self._resume_read)
        self._tcp.resume_reading()

    def _unread(self) -> bool:
        """Whether something waits to be read that no new socket read would bring."""
        return bool(self._incoming.pending or self._records.pending())

    def _resume_read(self) -> None:
        if self._state == OPEN and not self._reading_paused:
            self._read()

    def is_reading(self) -> bool:
        return not self._reading_paused

    def get_write_buffer_size(self) -> int:
        return self._tcp.get_write_buffer_size() if self._tcp is not None else 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._tcp is not None:
            self._tcp.set_write_buffer_limits(high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._ssl
        if self._tcp is None:
            return default
        return self._tcp.get_extra_info(name, default)
