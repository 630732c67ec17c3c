"""Backend connections for HTTP mode, and the keep-alive pool they return to.

A pooled connection is in exactly one of four states: *busy* (an exchange owns it), *idle* (in
its server's pool), *expired* (idle too long: closed by the sweep) or *closed*. An idle
connection that receives anything (data, EOF) is closed at once: a server may only speak when
asked. A connection goes back to the pool only when its last response was read completely, it
ended exactly where the bytes read ended, and the server allowed keep-alive (the exchange
decides, :meth:`HttpBackend.release`); it is checked once more, for bytes waiting in the
socket that the loop has not delivered yet, when it is taken from the pool.

A backend that breaks HTTP (a second response, a body after a response that has none, bytes
on an idle connection, a malformed head) never gets its extra bytes read as somebody else's
answer: the connection is marked spoiled, whatever complete answer came before the error is
still delivered to its own request, and the connection is closed, counted
(``backend_protocol_error`` by reason) and logged once, by :meth:`HttpBackend.protocol_error`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import socket
from collections.abc import Callable
from typing import Protocol, cast

from offload.config.model import BackendConfig
from offload.errors import BackendTlsError, ProtocolError
from offload.observe.log import CappedLog, fields
from offload.observe.stats import Counters
from offload.proto.http1 import HttpLimits, ResponseParser
from offload.proto.http_types import Event
from offload.tls.backend_tls import ServerTls
from offload.tls.client_stream import TLSClientStream, open_tls
from offload.upstream.balancer import AdminState
from offload.upstream.group import ServerGroup
from offload.upstream.servers import Server
from offload.writes import WriteBatcher

SWEEP_INTERVAL = 1.0

_log = logging.getLogger("offload.upstream")


class UpstreamUser(Protocol):
    """What a busy backend connection reports to (an exchange, or a tunnel)."""

    def backend_events(self, events: list[Event]) -> None: ...
    def backend_failed(self, error: ProtocolError) -> None: ...
    def backend_eof(self) -> None: ...
    def backend_lost(self, exc: Exception | None) -> None: ...
    def backend_pause_writing(self) -> None: ...
    def backend_resume_writing(self) -> None: ...
    def backend_raw(self, data: bytes) -> None: ...


OpenCallback = Callable[[int, "BackendConnection | None", "BaseException | None"], None]
"""Told the result of :meth:`HttpBackend.open`: (server index, the connection, the error)."""


class ConnectionOwner(Protocol):
    """Where a backend connection reports a server that broke HTTP."""

    def protocol_error(self, connection: BackendConnection, reason: str, detail: str) -> None:
        ...

    def tls_failed(self, index: int, error: BackendTlsError) -> None: ...


class BackendConnection(asyncio.Protocol):
    """One HTTP/1.1 connection to a backend server."""

    __slots__ = ("batcher", "closed", "fd", "idle_since", "index", "key", "owner", "parser",
                 "private", "raw", "requests", "spoiled", "transport", "user")

    def __init__(self, index: int, limits: HttpLimits, owner: ConnectionOwner | None = None,
                 batcher: WriteBatcher | None = None) -> None:
        self.index = index
        self.owner = owner
        self.batcher = batcher
        self.parser = ResponseParser(limits)
        self.transport: asyncio.Transport | None = None
        self.fd = -1
        self.user: UpstreamUser | None = None
        self.idle_since = 0.0
        self.closed = False
        self.requests = 0
        self.raw = False
        """Tunnel mode (after 101): bytes are passed on unparsed."""
        self.private = False
        """Bound to one client connection (PROXY protocol): never shared through the pool."""
        self.spoiled = False
        """The server broke HTTP on this connection: it is closed, never pooled."""
        self.key: object = None
        """What a request must need to reuse it from the pool: (SNI, client certificate
        generation) over TLS, None over plain TCP."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1

    def data_received(self, data: bytes) -> None:
        user = self.user
        if user is None:  # idle connections must stay silent
            self._broken("unsolicited", "the server sent data on an idle connection")
            return
        if self.raw:
            user.backend_raw(data)
            return
        try:
            events = self.parser.feed(data)
        except ProtocolError as error:
            self._parse_error(user, error)
            return
        if events:
            user.backend_events(events)

    def _parse_error(self, user: UpstreamUser, error: ProtocolError) -> None:
        """Deliver the complete answer that came before the error, if any, then drop the
        connection: the exchange still waiting is told (502 or a cut response); an exchange
        already answered keeps its answer."""
        self.spoiled = True
        if error.before:
            user.backend_events(cast(list[Event], error.before))
        if self.user is user and not self.closed:
            user.backend_failed(error)  # the exchange reports it and drops the connection
        else:
            self._broken(error.reason, str(error))

    def _broken(self, reason: str, detail: str) -> None:
        self.spoiled = True
        if self.owner is not None:
            self.owner.protocol_error(self, reason, detail)
        self.abort()

    def data_waiting(self) -> None:
        """Found readable while idle: closed; if it holds bytes rather than an EOF, that is a
        server speaking unasked. Over TLS the bytes are read and decrypted first: a session
        ticket keeps the connection usable, close_notify closes it, data is unsolicited."""
        transport = self.transport
        if isinstance(transport, TLSClientStream):
            transport.read_waiting()
            return
        if _peek(self.fd):
            self._broken("unsolicited", "the server sent data on an idle connection")
        else:
            self.abort()

    def has_input(self) -> bool:
        """Bytes (or an EOF) wait in the socket that the loop has not delivered yet."""
        if self.fd < 0:
            return False
        try:
            readable, _, _ = select.select((self.fd,), (), (), 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def eof_received(self) -> bool:
        user = self.user
        if user is None:
            return False
        user.backend_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if isinstance(exc, BackendTlsError) and self.owner is not None:
            self.owner.tls_failed(self.index, exc)  # refused after our Finished (TLS 1.3)
        user, self.user = self.user, None
        if user is not None:
            user.backend_lost(exc)

    def pause_writing(self) -> None:
        if self.user is not None:
            self.user.backend_pause_writing()

    def resume_writing(self) -> None:
        if self.user is not None:
            self.user.backend_resume_writing()

    def expect(self, method: bytes) -> None:
        """A request with ``method`` was (or is about to be) written: its response comes next."""
        self.parser.expect(method)

    @property
    def ends_with_close(self) -> bool:
        """The response being read ends when the server closes."""
        return self.parser.until_close

    def eof_events(self) -> list[Event]:
        """The server closed: the end of a response delimited by the close (else raises)."""
        return self.parser.feed_eof()

    def upgrade_tail(self) -> bytes:
        """After a 101: the bytes that followed it, already the new protocol's."""
        return self.parser.upgrade_tail or b""

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not self.closed:
            if self.batcher is not None:
                self.batcher.write(transport, data)
            else:
                transport.write(data)

    def flush(self) -> None:
        """Send what is queued for this turn (before a close, or before handing over)."""
        if self.batcher is not None:
            self.batcher.flush()

    def close(self) -> None:
        self.closed = True
        self.user = None
        if self.transport is not None:
            self.flush()
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        self.user = None
        if self.transport is not None:
            self.transport.abort()


def _peek(fd: int) -> bytes:
    """The first byte waiting on socket ``fd`` without taking it (b"" at EOF or on error)."""
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:
        return b""


class ConnectionPool:
    """Idle connections to one server, most recently used first (LIFO keeps few connections
    warm and lets the rest expire)."""

    __slots__ = ("idle", "max_idle")

    def __init__(self, max_idle: int) -> None:
        self.max_idle = max_idle
        self.idle: list[BackendConnection] = []

    def take(self, key: object = None) -> BackendConnection | None:
        """The newest idle connection made for ``key`` (over TLS: the same SNI and client
        certificate) that is still open and silent, or None. One with bytes waiting that the
        loop has not delivered yet (a late body, an unsolicited answer, a close) is dropped
        here, before any request can be written to it."""
        idle = self.idle
        position = len(idle) - 1
        while position >= 0:
            connection = idle[position]
            if connection.closed:
                del idle[position]
            elif connection.key == key:
                del idle[position]
                if connection.has_input():
                    connection.data_waiting()
                    transport = connection.transport
                    if (connection.closed or connection.spoiled or transport is None
                            or transport.is_closing()):  # closing: close_notify was read
                        position -= 1
                        continue
                return connection
            position -= 1
        return None

    def give(self, connection: BackendConnection, now: float) -> bool:
        """Keep an idle connection; False (and the caller closes it) when the pool is full."""
        if len(self.idle) >= self.max_idle:
            return False
        connection.idle_since = now
        self.idle.append(connection)
        return True

    def expire(self, older_than: float) -> int:
        """Close connections idle since before ``older_than``; returns how many."""
        keep, expired = [], 0
        for connection in self.idle:
            if connection.closed:
                continue
            if connection.idle_since < older_than:
                connection.close()
                expired += 1
            else:
                keep.append(connection)
        self.idle = keep
        return expired


class HttpBackend(ServerGroup):
    """A backend in HTTP mode, in one worker: its servers plus a keep-alive pool per server."""

    def __init__(self, config: BackendConfig, servers: tuple[Server, ...], counters: Counters,
                 limits: HttpLimits, batcher: WriteBatcher | None = None, *,
                 tls: tuple[ServerTls | None, ...] | None = None) -> None:
        super().__init__(config, servers, counters, tls)
        self.limits = limits
        self.batcher = batcher
        self.pools = [ConnectionPool(config.pool_max_idle) for _ in servers]
        self._sweeper: asyncio.TimerHandle | None = None
        self._error_log = CappedLog()

    def protocol_error(self, connection: BackendConnection, reason: str, detail: str) -> None:
        """A server broke HTTP on ``connection`` (which is then closed): count it by reason and
        log it (capped, so a hostile server cannot flood the log)."""
        self.counters.inc("backend_protocol_error", self.name, reason)
        suppressed = self._error_log.admit(reason)
        if suppressed >= 0:
            server = self.servers[connection.index]
            extra = fields(event="backend_protocol_error", backend=self.name,
                           server=server.label, address=str(server), reason=reason,
                           detail=detail, **({"suppressed": suppressed} if suppressed else {}))
            _log.warning("backend protocol error: %s", reason, extra=extra)

    def start(self) -> None:
        """Start the idle sweep and the active health checks (in the running loop)."""
        super().start()
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await super().stop()
        for pool in self.pools:
            for connection in pool.idle:
                connection.close()
            pool.idle.clear()

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        cutoff = loop.time() - self.config.pool_idle_timeout
        for pool in self.pools:
            pool.expire(cutoff)
        self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep)

    def admin_changed(self, index: int, state: AdminState) -> None:
        if state != "enabled":  # no new requests go there: let its idle connections go
            pool = self.pools[index]
            for connection in pool.idle:
                connection.close()
            pool.idle.clear()

    def idle_connections(self, index: int) -> int:
        return len(self.pools[index].idle)

    def take_idle(self, index: int, host: bytes = b"") -> BackendConnection | None:
        """An idle connection to server ``index`` fit for a request to ``host`` (its
        authority: over TLS it chooses the SNI, and only a connection made for the same SNI
        and client certificate is reused)."""
        tls = self.tls[index] if self.tls is not None else None
        if tls is None:
            return self.pools[index].take()
        return self.pools[index].take(tls.pool_key(host))

    def open(self, index: int, done: OpenCallback, host: bytes = b"",
             preamble: bytes = b"") -> Callable[[], object]:
        """Open a connection to server ``index`` for a request to ``host`` and call
        ``done(index, connection, None)``, or ``done(index, None, error)`` if it fails;
        returns what cancels it (then ``done`` is not called). ``preamble`` (a PROXY protocol
        header) is the first thing sent, before TLS starts; such a connection is private to
        its client."""
        task = asyncio.get_running_loop().create_task(self._open(index, done, host, preamble))
        return task.cancel

    async def _open(self, index: int, done: OpenCallback, host: bytes, preamble: bytes
                    ) -> None:
        try:
            connection = await self.connect(index, host, preamble)
        except BackendTlsError as error:
            self.tls_failed(index, error)
            done(index, None, error)
            return
        except (OSError, TimeoutError) as error:
            done(index, None, error)
            return
        done(index, connection, None)

    async def connect(self, index: int, host: bytes = b"", preamble: bytes = b""
                      ) -> BackendConnection:
        """A new connection to server ``index``; raises OSError, TimeoutError or
        :class:`BackendTlsError`."""
        loop = asyncio.get_running_loop()
        server = self.servers[index]
        tls = self.tls[index] if self.tls is not None else None
        # Over TLS the stream batches the ciphertext itself: batching the plaintext too would
        # cost every request a second turn of the loop (the stream's write, queued by the
        # batcher's own flush, waits for the next one)
        connection = BackendConnection(index, self.limits, self,
                                       self.batcher if tls is None else None)
        connection.private = bool(preamble)
        async with asyncio.timeout(self.config.connect_timeout):
            if tls is not None:
                sni = tls.sni(host)
                plan = tls.handshake(sni)
                connection.key = plan.key
                try:
                    await open_tls(connection, tls, plan, (server.host, server.port),
                                   preamble=preamble, batcher=self.batcher)
                except BackendTlsError as error:
                    error.client_named = sni is not None and tls.client.settings.sni == "auto"
                    raise
            elif server.unix_path:
                await loop.create_unix_connection(lambda: connection, server.unix_path)
            else:
                await loop.create_connection(lambda: connection, server.host, server.port)
        if preamble and tls is None:
            connection.write(preamble)
        return connection

    def release(self, connection: BackendConnection, reusable: bool, now: float) -> None:
        """An exchange is done with ``connection``: pool it or close it."""
        connection.user = None
        connection.resume_reading()  # paused for a slow client: an idle connection must listen
        if (reusable and not connection.closed and not connection.private
                and not connection.spoiled and connection.parser.answered
                and self.pools[connection.index].give(connection, now)):
            return
        connection.close()
