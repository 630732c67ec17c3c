"""The admin listener inside the supervisor's selector loop: bytes in, one response out, close.

The supervisor runs no event loop and no thread (it forks), so this is a small non-blocking
server on the supervisor's own selector. Admin traffic is a scrape every few seconds and the odd
click, so each connection carries one request (``Connection: close``), is bounded in size
(:data:`LIMITS`) and in time (the request within :data:`HEAD_TIMEOUT`, the answer too within
:data:`CONNECTION_TIMEOUT`). Parsing is the data path's own strict HTTP/1.1 parser; whether a
request may come from where it says is :mod:`offload.observe.admin_guard`'s decision.

Idle connections must not shut the load balancer's health checks out: at most
:data:`MAX_PER_CLIENT` connections per client address and :data:`MAX_CONNECTIONS` in all, and
when either is reached a new connection takes the place of the oldest one that has not sent its
whole request yet (:func:`admission`). Only connections whose request is being answered are safe,
and they finish within :data:`CONNECTION_TIMEOUT`.
"""

from __future__ import annotations

import logging
import selectors
import socket
import time
from collections.abc import Callable, Sequence
from http import HTTPStatus

from offload.config.units import HostPort
from offload.errors import ProtocolError
from offload.observe.admin_api import AdminApi, AdminRequest, AdminResponse
from offload.observe.history import SAMPLE_INTERVAL
from offload.observe.log import fields
from offload.proto.http1 import HttpLimits, RequestParser
from offload.proto.http_types import EndOfMessage, Request
from offload.server.sockets import bind_listener

_log = logging.getLogger("offload.admin")

LIMITS = HttpLimits(max_request_line=4096, max_header_size=16 * 1024, max_header_count=50,
                    max_body_size=64 * 1024)
HEAD_TIMEOUT = 3.0
"""Seconds from accept to a complete request (a health check sends it at once; the API's
requests have no body to speak of)."""
CONNECTION_TIMEOUT = 10.0
"""Seconds from accept to the end of the answer (a scrape may wait a second for workers)."""
MAX_CONNECTIONS = 64
MAX_PER_CLIENT = 8
ACCEPT_BATCH = 4
"""Connections accepted per readiness event, so that reads go on between accepts: a flood of
new connections cannot push out one that is about to send its request."""
READ_SIZE = 65536

Collect = Callable[[Callable[[], None]], None]
"""Ask the workers for fresh statistics and call back once they are in (or overdue)."""


def admission(open_connections: Sequence[tuple[str, bool]], client: str, *,
              per_client: int = MAX_PER_CLIENT,
              total: int = MAX_CONNECTIONS) -> tuple[bool, int | None]:
    """Whether a new connection from ``client`` may stay, and which open one to close for it.

    ``open_connections`` lists (client, its request still incomplete) per open connection, oldest
    first. Over either cap, the oldest connection whose request is still incomplete (of the same
    client, for the per-client cap) makes room; if there is none, the new one is refused.
    """
    mine = [i for i, (who, _) in enumerate(open_connections) if who == client]
    if len(mine) >= per_client:
        victims = [i for i in mine if open_connections[i][1]]
    elif len(open_connections) >= total:
        victims = [i for i, (_, idle) in enumerate(open_connections) if idle]
    else:
        return True, None
    return (True, victims[0]) if victims else (False, None)


class _Connection:
    __slots__ = ("client", "closed", "deadline", "dispatched", "local", "opened", "out", "parser",
                 "request", "sock", "watched")

    def __init__(self, sock: socket.socket, client: str, local: str, opened: float) -> None:
        self.sock = sock
        self.client = client
        self.local = local
        self.opened = opened
        self.deadline = opened + HEAD_TIMEOUT
        self.parser = RequestParser(LIMITS)
        self.request: Request | None = None
        self.dispatched = False
        """The whole request is in: it is being answered and may not be closed for another."""
        self.out = b""
        self.closed = False
        self.watched = False


class AdminServer:
    """Accepts admin connections on ``address`` and answers them through ``api``."""

    def __init__(self, selector: selectors.BaseSelector, address: HostPort, api: AdminApi,
                 collect: Collect, *, sample: Callable[[], None] | None = None,
                 sample_interval: float = SAMPLE_INTERVAL) -> None:
        self._selector = selector
        self.api = api
        self._collect = collect
        self._sample = sample
        """Called every ``sample_interval`` seconds, from the first loop turn on: the status
        page's history is kept while the listener is there, whether anyone looks or not."""
        self._sample_interval = sample_interval
        self._next_sample = time.monotonic()
        self._connections: dict[int, _Connection] = {}
        sock = bind_listener(address, 2 * MAX_CONNECTIONS, reuseport=False)
        self._listener = sock
        self.address = address
        selector.register(sock, selectors.EVENT_READ, self._accept)

    def fds(self) -> list[int]:
        """Every descriptor this server holds (a forked child closes them)."""
        return [self._listener.fileno(), *self._connections]

    def close(self) -> None:
        for connection in list(self._connections.values()):
            self._drop(connection)
        self._selector.unregister(self._listener)
        self._listener.close()

    @property
    def open(self) -> int:
        """Connections open now."""
        return len(self._connections)

    def deadline(self) -> float | None:
        deadlines = [c.deadline for c in self._connections.values()]
        if self._sample is not None:
            deadlines.append(self._next_sample)
        return min(deadlines, default=None)

    def on_time(self, now: float) -> None:
        for connection in [c for c in self._connections.values() if c.deadline <= now]:
            self._drop(connection)
        if self._sample is not None and self._next_sample <= now:
            self._next_sample = now + self._sample_interval
            self._sample()

    # ------------------------------------------------------------ events

    def _watch(self, connection: _Connection, events: int, callback: Callable[[], None]) -> None:
        self._selector.register(connection.sock, events, callback)
        connection.watched = True

    def _unwatch(self, connection: _Connection) -> None:
        if connection.watched:
            self._selector.unregister(connection.sock)
            connection.watched = False

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                _log.warning("admin accept failed: %s", error.strerror)
                return
            client = str(peer[0])
            connections = list(self._connections.values())  # oldest first
            admit, victim = admission([(c.client, not c.dispatched and not c.out)
                                       for c in connections], client)
            if victim is not None:
                self._drop(connections[victim])
            if not admit:
                sock.close()
                continue
            sock.setblocking(False)
            try:
                local = str(sock.getsockname()[0])
            except OSError:
                sock.close()
                continue
            connection = _Connection(sock, client, local, time.monotonic())
            self._connections[sock.fileno()] = connection
            self._watch(connection, selectors.EVENT_READ,
                        lambda c=connection: self._readable(c))  # type: ignore[misc]

    def _readable(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(connection)
            return
        try:
            events = connection.parser.feed(data)
        except ProtocolError as error:
            self._respond(connection, AdminResponse(
                error.status, f'{{"error": "{error.reason}"}}\n'.encode()))
            return
        for event in events:
            if isinstance(event, Request):
                connection.request = event
            elif isinstance(event, EndOfMessage) and connection.request is not None:
                self._dispatch(connection, connection.request)
                return

    def _dispatch(self, connection: _Connection, parsed: Request) -> None:
        self._unwatch(connection)
        connection.dispatched = True
        connection.deadline = connection.opened + CONNECTION_TIMEOUT
        target = parsed.target.decode("latin-1")
        headers = {name.decode("latin-1").lower(): value.decode("latin-1")
                   for name, value in parsed.headers}
        headers["host"] = parsed.host.decode("latin-1")  # an absolute-form target's authority
        request = AdminRequest(
            method=parsed.method.decode("latin-1"), path=target.partition("?")[0],
            headers=headers,
            client=connection.client, local=connection.local)
        refusal = self.api.authorized(request)
        if refusal is not None:
            self._respond(connection, refusal)
        elif self.api.needs_stats(request):
            self._collect(lambda: self._answer(connection, request))
        else:
            self._answer(connection, request)

    def _answer(self, connection: _Connection, request: AdminRequest) -> None:
        if connection.closed:
            return
        try:
            response = self.api.handle(request)
        except Exception:  # a bug here must not take the supervisor down
            _log.exception("admin request failed", extra=fields(path=request.path))
            response = AdminResponse(500, b'{"error": "internal error, see the log"}\n')
        self._respond(connection, response)

    def _respond(self, connection: _Connection, response: AdminResponse) -> None:
        self._unwatch(connection)
        reason = HTTPStatus(response.status).phrase
        head = [f"HTTP/1.1 {response.status} {reason}", f"Content-Type: {response.content_type}",
                f"Content-Length: {len(response.body)}", "Connection: close",
                "X-Content-Type-Options: nosniff",
                *(f"{name}: {value}" for name, value in response.headers)]
        connection.out = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body
        self._writable(connection)

    def _writable(self, connection: _Connection) -> None:
        try:
            sent = connection.sock.send(connection.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._drop(connection)
            return
        connection.out = connection.out[sent:]
        if not connection.out:
            self._drop(connection)
        elif not connection.watched:
            self._watch(connection, selectors.EVENT_WRITE, lambda: self._writable(connection))

    def _drop(self, connection: _Connection) -> None:
        if connection.closed:
            return
        connection.closed = True
        self._connections.pop(connection.sock.fileno(), None)
        self._unwatch(connection)
        connection.sock.close()
