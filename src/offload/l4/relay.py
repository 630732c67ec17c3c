"""TCP mode: pipe the decrypted bytes of a TLS connection to a backend server and back.

Backpressure: when one side's write buffer passes its high-water mark, reading from the other
side pauses until it drains, so a slow reader never makes offload buffer more than a few
watermarks' worth per connection.

Half-close: a client that closes its sending side (close_notify or FIN) gives the backend a
FIN, and the backend's answer still flows back; a backend that closes its sending side gives
the client a close_notify while the client may still send. The connection ends once both
directions are closed, after the idle timeout, or when either side fails; a backend that fails
mid-stream closes the client connection without close_notify, so the client sees a truncated
stream rather than a clean end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from offload.errors import BackendTlsError, UpstreamError
from offload.observe.log import fields
from offload.observe.stats import Counters
from offload.proto import proxy_protocol
from offload.timers import IdleTimer
from offload.tls.stream import TLSServerStream
from offload.upstream.backend import Backend
from offload.upstream.servers import Server

_log = logging.getLogger("offload.l4")


class TcpRelay(asyncio.Protocol):
    """The application protocol of one client TLS stream in TCP mode."""

    def __init__(self, stream: TLSServerStream, backend: Backend | None, idle_timeout: float,
                 counters: Counters, backend_name: str = "") -> None:
        self._stream = stream
        self._backend = backend
        self._backend_name = backend.name if backend is not None else backend_name
        self._counters = counters
        self._idle_timeout = idle_timeout
        self._upstream: asyncio.Transport | None = None
        self._server: Server | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._idle: IdleTimer | None = None
        self._client_eof = False
        self._server_eof = False
        self._closed = False
        self._early: list[bytes] = []
        self._server_index = -1
        self._on_end: Callable[[TcpRelay], None] | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.reason = ""

    # ------------------------------------------------------------ client side (TLS stream)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        loop = asyncio.get_running_loop()
        self._stream.pause_reading()  # until the backend answers
        self._idle = IdleTimer(loop, self._idle_timeout, self._on_idle)
        self._connect_task = loop.create_task(self._connect())

    def adopt(self, upstream: asyncio.Transport, server: Server, *, to_backend: bytes,
              to_client: bytes, on_end: Callable[[TcpRelay], None] | None = None) -> None:
        """Take over an established backend connection (a WebSocket after 101): from now on
        both sides are relayed as bytes. ``to_backend``/``to_client`` are bytes that arrived
        after the HTTP heads on either side; ``on_end`` is called once when the relay ends
        (the owner of the connection gives back the server's slot and logs the tunnel)."""
        self._idle = IdleTimer(asyncio.get_running_loop(), self._idle_timeout, self._on_idle)
        self._upstream, self._server = upstream, server
        self._on_end = on_end
        upstream.set_protocol(_BackendSide(self))
        if to_client:
            self.backend_data(to_client)
        if to_backend:
            self.data_received(to_backend)

    async def _connect(self) -> None:
        try:
            await self._open_upstream()
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug must cost one connection, not leave it hanging.
            _log.exception("internal error while connecting to the backend")
            self._counters.inc("internal_error", "relay")
            if self._upstream is not None:
                self._upstream.abort()
            self._finish("internal_error", notify=False)
        finally:
            self._connect_task = None

    async def _open_upstream(self) -> None:
        assert self._backend is not None
        stream = self._stream
        try:
            key = str((stream.get_extra_info("peername") or ("",))[0]).encode()
            upstream, index = await self._backend.connect(
                lambda: _BackendSide(self), key, preamble=self._proxy_header(),
                server_name=stream.server_name)
        except BackendTlsError:
            self._finish("backend_tls")  # counted and logged by the backend
            return
        except UpstreamError:
            self._counters.inc("backend_unavailable", self._backend.name)
            self._finish("backend_unavailable")
            return
        server = self._backend.servers[index]
        if self._closed:
            upstream.close()
            self._backend.released(index)
            return
        self._upstream, self._server = upstream, server
        self._server_index = index
        if self._early:
            upstream.write(b"".join(self._early))
            self._early.clear()
        if self._client_eof:
            upstream.write_eof()
        self._stream.resume_reading()

    def _proxy_header(self) -> bytes:
        assert self._backend is not None
        return proxy_header(self._stream, self._backend.config.proxy_protocol)

    def data_received(self, data: bytes) -> None:
        if self._idle is not None:
            self._idle.touch()
        self.bytes_in += len(data)
        if self._upstream is not None:
            self._upstream.write(data)
        else:
            self._early.append(data)  # only what arrived with the handshake's last flight

    def eof_received(self) -> bool:
        self._client_eof = True
        if self._upstream is not None and not self._upstream.is_closing():
            if self._server_eof:
                self._finish("closed")
            else:
                self._upstream.write_eof()
        return True

    def pause_writing(self) -> None:
        if self._upstream is not None:
            self._upstream.pause_reading()

    def resume_writing(self) -> None:
        if self._upstream is not None:
            self._upstream.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed:
            self._finish("client_closed" if exc is None
                         else str(exc) if isinstance(exc, TimeoutError)  # the send_timeout
                         else "client_error")

    # ------------------------------------------------------------ backend side

    def backend_data(self, data: bytes) -> None:
        if self._idle is not None:
            self._idle.touch()
        self.bytes_out += len(data)
        self._stream.write(data)

    def backend_eof(self) -> None:
        self._server_eof = True
        if self._client_eof:
            self._finish("closed")
        else:
            self._stream.write_eof()

    def backend_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        if isinstance(exc, BackendTlsError) and self._backend is not None \
                and self._server_index >= 0:
            self._backend.tls_failed(self._server_index, exc)
            self._finish("backend_tls", notify=False)
        elif exc is not None:
            self._counters.inc("backend_reset", self._backend_name)
            self._finish("backend_error", notify=False)
        else:
            self._finish("closed")

    def backend_pause_writing(self) -> None:
        self._stream.pause_reading()

    def backend_resume_writing(self) -> None:
        self._stream.resume_reading()

    # ------------------------------------------------------------ ending

    def _on_idle(self) -> None:
        self._idle = None
        self._counters.inc("timeout", "idle")
        self._finish("idle_timeout")

    def _finish(self, reason: str, *, notify: bool = True) -> None:
        """Close both sides once; flushes what each side still has to send."""
        if self._closed:
            return
        self._closed = True
        self.reason = reason
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._connect_task is not None and self._connect_task is not asyncio.current_task():
            self._connect_task.cancel()
        if self._upstream is not None:
            self._upstream.close()
        if self._backend is not None and self._server_index >= 0:
            self._backend.released(self._server_index)
            self._server_index = -1
        self._stream.close(notify=notify)
        if self._on_end is not None:
            on_end, self._on_end = self._on_end, None
            on_end(self)
        if _log.isEnabledFor(logging.DEBUG):
            self._log_close(reason)

    def _log_close(self, reason: str) -> None:
        stream = self._stream
        peer = stream.get_extra_info("peername") or ("", 0)
        _log.debug("connection closed", extra=fields(
            client=f"{peer[0]}:{peer[1]}", sni=stream.server_name, tls_version=stream.tls_version,
            cipher=stream.cipher, alpn=stream.alpn, resumed=stream.resumed,
            handshake_ms=round(stream.handshake_seconds * 1000, 2), ja4=stream.ja4,
            backend=self._backend_name, server=self._server.label if self._server else None,
            bytes_in=self.bytes_in, bytes_out=self.bytes_out,
            duration_ms=round((time.monotonic() - stream.accepted_at) * 1000, 2), reason=reason))


def proxy_header(stream: TLSServerStream, version: str) -> bytes:
    """The PROXY protocol header for a backend connection made for ``stream``'s client."""
    if version == "none":
        return b""
    client = stream.get_extra_info("peername")
    local = stream.get_extra_info("sockname")
    source, destination = (client[0], client[1]), (local[0], local[1])
    if version == "v1":
        return proxy_protocol.encode_v1(source, destination)
    facts = proxy_protocol.TlsFacts(stream.tls_version, stream.cipher, stream.server_name,
                                    stream.alpn)
    return proxy_protocol.encode_v2(source, destination, facts)


class _BackendSide(asyncio.Protocol):
    """The backend connection's protocol: hands every event to the relay."""

    __slots__ = ("_relay",)

    def __init__(self, relay: TcpRelay) -> None:
        self._relay = relay

    def data_received(self, data: bytes) -> None:
        self._relay.backend_data(data)

    def eof_received(self) -> bool:
        self._relay.backend_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._relay.backend_lost(exc)

    def pause_writing(self) -> None:
        self._relay.backend_pause_writing()

    def resume_writing(self) -> None:
        self._relay.backend_resume_writing()
