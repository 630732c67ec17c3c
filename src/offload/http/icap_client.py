"""A client of one ICAP service: a persistent, bounded pool of connections, and scans that end
in a verdict (clean, infected with a signature name, or an error) within a deadline.

Theory of operation. :meth:`IcapClient.scan` learns the service's options once (OPTIONS, kept
for its ``Options-TTL``, one request in flight for everyone), takes a connection from the pool,
writes the REQMOD/RESPMOD built by :mod:`offload.proto.icap` (the preview first when the
service asks for one, the rest after ``100 Continue``), and classifies the final answer. The
deadline runs on the request path's :class:`~offload.timers.Clock`: when it passes, the scan
is cancelled, its connection is closed (its state is unknown) and the verdict is
``error/icap_timeout``; the caller's policy (``on_error``) decides what that means.

The pool (:class:`_Pool`) is a plain assignment step in the manner of httpcore: an idle
connection (most recently used first, dropped when older than ``idle_timeout`` or closed by the
server), else a new one while fewer than ``max_connections`` exist, else a place in a bounded
queue (``max_waiting``; beyond it the scan fails at once with ``icap_busy`` rather than pile up
memory). A connection goes back to the pool only when its answer ended exactly at a message
boundary, with keep-alive, and nothing of ours was left unsent. A reused connection that the
server had closed meanwhile (it fails before any answer byte) is retried once on a new one;
scanning is idempotent.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, cast

from offload.proto.icap import (
    IcapOptions,
    IcapProtocolError,
    IcapResponse,
    IcapResponseParser,
    IcapService,
    Method,
    Verdict,
    classify,
    options_from,
    options_request,
    scan_request,
)

if TYPE_CHECKING:
    from offload.timers import Cancellable, Clock

DEFAULT_OPTIONS_TTL = 300.0
"""How long OPTIONS answers are kept when the service names no Options-TTL."""
MAX_OPTIONS_TTL = 3600.0
OPTIONS_RETRY = 5.0
"""After OPTIONS failed, scans fail at once for this long instead of asking again each time."""


class _Stale(Exception):
    """A reused connection failed before any byte of an answer: try a new one."""


class IcapConnection(asyncio.Protocol):
    """One connection to the service: writes requests and parses one answer at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used = 0
        """Requests sent on it (a stale keep-alive connection is retried only if > 0)."""
        self.idle_since = 0.0
        self._parser: IcapResponseParser | None = None
        self._waiter: asyncio.Future[IcapResponse] | None = None

    # -------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:  # nothing asked: a server talking out of turn cannot be trusted
            self.close()
            return
        try:
            response = parser.feed(data)
        except IcapProtocolError as exc:
            self._fail(exc)
            self.close()
            return
        if response is not None:
            self._parser = None
            waiter, self._waiter = self._waiter, None
            if parser.trailing:
                self.close()  # bytes beyond the answer: the connection is out of step
            if waiter is not None and not waiter.done():
                waiter.set_result(response)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self._fail(exc)

    # -------------------------------------------------------------- use

    def _fail(self, exc: BaseException | None) -> None:
        waiter, self._waiter = self._waiter, None
        started = self._parser is not None and self._parser.started
        self._parser = None
        if waiter is not None and not waiter.done():
            if isinstance(exc, IcapProtocolError):
                waiter.set_exception(exc)
            elif not started and self.used > 1:
                waiter.set_exception(_Stale())
            else:
                waiter.set_exception(ConnectionError("the ICAP server closed the connection"))

    def send(self, data: bytes, *, new_request: bool = True) -> asyncio.Future[IcapResponse]:
        """Write ``data``; the future is the next answer."""
        transport = self.transport
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[IcapResponse] = loop.create_future()
        if transport is None or self.closed:
            waiter.set_exception(_Stale() if self.used else ConnectionError("connection closed"))
            return waiter
        if new_request:
            self.used += 1
        self._parser = IcapResponseParser()
        self._waiter = waiter
        transport.write(data)
        return waiter

    @property
    def write_pending(self) -> bool:
        transport = self.transport
        return transport is None or transport.get_write_buffer_size() > 0

    def close(self) -> None:
        self.closed = True
        transport = self.transport
        if transport is not None:
            transport.abort()


class _Pool:
    """Which connection a scan uses (module docstring); the opening itself is the client's."""

    def __init__(self, max_connections: int, max_waiting: int, idle_timeout: float) -> None:
        self.max_connections = max_connections
        self.max_waiting = max_waiting
        self.idle_timeout = idle_timeout
        self.idle: list[IcapConnection] = []
        self.owned = 0
        """Connections that exist or are being opened."""
        self.waiting: deque[asyncio.Future[IcapConnection | None]] = deque()

    def take(self, now: float) -> IcapConnection | bool | None:
        """An idle connection; ``True``: open a new one; ``False``: wait; ``None``: refuse."""
        while self.idle:
            connection = self.idle.pop()
            if connection.closed or now - connection.idle_since > self.idle_timeout:
                self.owned -= 1
                connection.close()
                continue
            return connection
        if self.owned < self.max_connections:
            self.owned += 1
            return True
        if len(self.waiting) >= self.max_waiting:
            return None
        return False

    def give_back(self, connection: IcapConnection | None, now: float) -> None:
        """A scan is done with ``connection`` (None or closed: it is gone)."""
        if connection is not None and not connection.closed:
            while self.waiting:
                waiter = self.waiting.popleft()
                if not waiter.done():
                    waiter.set_result(connection)
                    return
            connection.idle_since = now
            self.idle.append(connection)
            return
        if connection is not None:
            connection.close()
        self.owned -= 1
        while self.waiting:  # a place is free: let the next waiter open its own
            waiter = self.waiting.popleft()
            if not waiter.done():
                self.owned += 1
                waiter.set_result(None)
                return

    def close(self) -> None:
        for connection in self.idle:
            connection.close()
        self.idle = []
        for waiter in self.waiting:
            if not waiter.done():
                waiter.cancel()
        self.waiting.clear()


class IcapClient:
    """Scans with one ICAP service (one per service per worker, shared by its frontends)."""

    def __init__(self, service: IcapService, clock: Clock, *, max_connections: int = 16,
                 max_waiting: int = 256, idle_timeout: float = 30.0) -> None:
        self.service = service
        self.clock = clock
        self._pool = _Pool(max_connections, max_waiting, idle_timeout)
        self._options: IcapOptions | None = None
        self._options_until = 0.0
        self._options_failed_until = 0.0
        self._options_pending: asyncio.Future[IcapOptions] | None = None
        self._closed = False

    @property
    def options(self) -> IcapOptions | None:
        return self._options

    @property
    def connections(self) -> int:
        """Connections open or being opened (for tests and the status page)."""
        return self._pool.owned

    @property
    def idle_connections(self) -> int:
        return len(self._pool.idle)

    def close(self) -> None:
        self._closed = True
        self._pool.close()

    # -------------------------------------------------------------- scanning

    async def scan(self, method: Method, http_request: bytes, *,
                   http_response: bytes | None = None, body: bytes, time_limit: float,
                   extra: tuple[tuple[bytes, bytes], ...] = ()) -> Verdict:
        """The verdict on ``body`` (REQMOD: an upload; RESPMOD: a download, with its
        ``http_response`` head) within ``time_limit`` seconds on the client's clock. Never
        raises for the service's faults: they are ``error`` verdicts."""
        task = asyncio.current_task()
        assert task is not None
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            task.cancel()

        timer: Cancellable = self.clock.call_at(self.clock.time() + time_limit, expire)
        try:
            return await self._scan(method, http_request, http_response, body, extra, time_limit)
        except asyncio.CancelledError:
            if not expired:
                raise
            task.uncancel()
            return Verdict("error", reason="icap_timeout")
        finally:
            timer.cancel()

    async def _scan(self, method: Method, http_request: bytes,  # noqa: PLR0917 - private
                    http_response: bytes | None, body: bytes,
                    extra: tuple[tuple[bytes, bytes], ...], time_limit: float) -> Verdict:
        try:
            options = await self._learn_options(time_limit)
        except (OSError, IcapProtocolError) as exc:
            return Verdict("error", reason=_reason(exc))
        if method not in options.methods:
            return Verdict("error", reason="icap_method_unsupported")
        try:
            request = scan_request(self.service, method, http_request,
                                   http_response=http_response, body=body,
                                   preview=options.preview, extra=extra)
        except ValueError:
            return Verdict("error", reason="icap_unsendable")
        for attempt in (1, 2):
            try:
                response = await self._round_trip(request.first, request.rest if
                                                   request.preview else None)
            except _Stale:
                if attempt == 1:
                    continue
                return Verdict("error", reason="icap_closed")
            except (OSError, IcapProtocolError) as exc:
                return Verdict("error", reason=_reason(exc))
            return classify(method, response)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _round_trip(self, first: bytes, rest: bytes | None) -> IcapResponse:
        """Send one request (``rest`` after a 100 Continue) and return its final answer."""
        connection = await self._acquire()
        done = False
        try:
            response = await connection.send(first)
            if response.status == 100:
                if rest is None:
                    raise IcapProtocolError("100 Continue without a preview")
                response = await connection.send(rest, new_request=False)
                if response.status == 100:
                    raise IcapProtocolError("a second 100 Continue")
            if response.keep_alive and not connection.write_pending and not self._closed:
                done = True
            return response
        finally:
            if not done:
                connection.close()
            self._pool.give_back(connection, self.clock.time())

    async def _acquire(self) -> IcapConnection:
        pool = self._pool
        if self._closed:
            raise ConnectionError("the ICAP client is closed")
        taken = pool.take(self.clock.time())
        if taken is None:
            raise _Busy()
        if taken is False:
            waiter: asyncio.Future[IcapConnection | None] = (
                asyncio.get_running_loop().create_future())
            pool.waiting.append(waiter)
            try:
                handed = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    pool.give_back(waiter.result(), self.clock.time())
                raise
            if handed is not None:
                return handed
            taken = True
        if taken is True:
            try:
                return await self._open()
            except BaseException:
                pool.give_back(None, self.clock.time())
                raise
        assert isinstance(taken, IcapConnection)
        return taken

    async def _open(self) -> IcapConnection:
        loop = asyncio.get_running_loop()
        host = self.service.host.strip("[]")
        _, protocol = await loop.create_connection(IcapConnection, host, self.service.port)
        return protocol

    # -------------------------------------------------------------- OPTIONS

    async def _learn_options(self, time_limit: float) -> IcapOptions:
        now = self.clock.time()
        if self._options is not None and now < self._options_until:
            return self._options
        if now < self._options_failed_until:
            raise ConnectionError("OPTIONS failed a moment ago")
        pending = self._options_pending
        if pending is None:
            pending = self._options_pending = asyncio.ensure_future(self._fetch_options())
            # its own deadline: the scan that started it may be cancelled, others wait on it
            timer = self.clock.call_at(now + time_limit, pending.cancel)
            pending.add_done_callback(lambda _: timer.cancel())
            pending.add_done_callback(self._options_fetched)
        try:
            return await asyncio.shield(pending)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if pending.cancelled() and task is not None and not task.cancelling():
                raise TimeoutError("OPTIONS got no answer in time") from None
            raise

    def _options_fetched(self, future: asyncio.Future[IcapOptions]) -> None:
        self._options_pending = None
        now = self.clock.time()
        if future.cancelled() or future.exception() is not None:
            self._options_failed_until = now + OPTIONS_RETRY
            return
        options = future.result()
        self._options = options
        ttl = options.ttl if options.ttl is not None else DEFAULT_OPTIONS_TTL
        self._options_until = now + min(max(ttl, 1.0), MAX_OPTIONS_TTL)

    async def _fetch_options(self) -> IcapOptions:
        for attempt in (1, 2):
            try:
                return options_from(await self._round_trip(options_request(self.service), None))
            except _Stale:
                if attempt == 2:
                    raise ConnectionError("the ICAP server closed the connection") from None
        raise AssertionError("unreachable")  # pragma: no cover


class _Busy(OSError):
    """Every connection is in use and the queue is full."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, IcapProtocolError):
        return exc.reason
    if isinstance(exc, _Busy):
        return "icap_busy"
    if isinstance(exc, TimeoutError):
        return "icap_timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "icap_refused"
    if isinstance(exc, ConnectionError):
        return "icap_closed"
    return "icap_connect_failed"


__all__ = ["IcapClient", "IcapConnection"]
