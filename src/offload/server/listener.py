"""One frontend inside one worker: accept on its sockets, run TLS, hand streams to the mode.

Also the worker's connection registry: it counts open connections across frontends, pauses
accepting at ``global.max_connections`` (the kernel queue holds new clients meanwhile, instead
of the worker running out of memory or file descriptors) and tells the drain when it is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable

from offload.acme.alpn import ChallengeLookup
from offload.observe.log import fields
from offload.observe.stats import Counters
from offload.security.events import SecurityEvents
from offload.server.prepare import PreparedFrontend
from offload.tls.crl_gate import RevocationGate
from offload.tls.stream import CLIENT_CERT_PREFIX, TLSServerStream
from offload.writes import WriteBatcher

_log = logging.getLogger("offload.listener")

NOT_OFFENCES = frozenset({"client_closed", "unknown_sni"})
"""Handshake failures a ban does not count: a client hanging up (port checks, health checks,
browsers racing connections) and a name we have no certificate for are not attacks."""

RESUME_ACCEPT_RATIO = 0.9
"""Accepting resumes once open connections fall below this share of the maximum."""


AppFactory = Callable[[TLSServerStream], asyncio.Protocol]
"""Makes the application protocol (TCP relay, HTTP connection) of a stream whose handshake is
done."""


class ConnectionRegistry:
    """The open connections of a worker, with the accept-pausing limit."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.streams: set[TLSServerStream] = set()
        self.listeners: list[Listener] = []
        self._paused = False
        self._empty = asyncio.Event()
        self._empty.set()

    def add(self, stream: TLSServerStream) -> None:
        self.streams.add(stream)
        self._empty.clear()
        if len(self.streams) >= self.max_connections and not self._paused:
            self._paused = True
            _log.warning("connection limit reached, pausing accepts",
                         extra=fields(max_connections=self.max_connections))
            for listener in self.listeners:
                listener.pause_accepting()

    def discard(self, stream: TLSServerStream) -> None:
        self.streams.discard(stream)
        if not self.streams:
            self._empty.set()
        if self._paused and len(self.streams) < self.max_connections * RESUME_ACCEPT_RATIO:
            self._paused = False
            _log.info("accepting again", extra=fields(open_connections=len(self.streams)))
            for listener in self.listeners:
                listener.resume_accepting()

    async def wait_empty(self) -> None:
        await self._empty.wait()

    def close_all(self) -> None:
        for stream in list(self.streams):
            stream.close()

    def drain(self) -> None:
        """Ask every application that can finish its current work early to do so (HTTP closes
        idle keep-alive connections at once, busy ones after their response)."""
        for stream in list(self.streams):
            app = stream.app
            drain = getattr(app, "drain", None)
            if callable(drain):
                drain()


class Listener:
    """A frontend in a worker: its listening sockets and what each accepted stream becomes."""

    def __init__(self, frontend: PreparedFrontend, app_factory: AppFactory,
                 sockets: list[socket.socket], registry: ConnectionRegistry,
                 counters: Counters, *, batcher: WriteBatcher | None = None,
                 challenges: ChallengeLookup | None = None,
                 events: SecurityEvents | None = None,
                 revocation: RevocationGate | None = None) -> None:
        self.frontend = frontend
        self.name = frontend.config.name
        self._app_factory = app_factory
        self._batcher = batcher
        self._sockets = sockets
        self._registry = registry
        self._counters = counters
        self._context = frontend.store.base
        self._handshake_timeout = frontend.config.handshake_timeout
        self._challenges = challenges
        self._events = events
        self._revocation = revocation
        """Checks client certificates against fetched CRLs before the application starts."""
        self._servers: list[asyncio.Server] = []
        self._accepting = False
        self._draining = False
        self._resuming: asyncio.Task[None] | None = None
        self.open = 0
        """Connections of this frontend open in this worker (handshaking or established)."""
        registry.listeners.append(self)

    def _new_stream(self) -> TLSServerStream:
        return TLSServerStream(self, self._context, self._handshake_timeout, self._batcher,
                               self._challenges)

    async def start(self) -> None:
        """Start accepting on every socket of this frontend."""
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            # Give the loop a duplicate: closing a server closes its socket, and we keep ours
            # to resume accepting after a pause.
            server = await loop.create_server(self._new_stream, sock=sock.dup(),
                                              backlog=self.frontend.config.backlog)
            self._servers.append(server)
        self._accepting = True

    def pause_accepting(self) -> None:
        if self._accepting:
            self._accepting = False
            for server in self._servers:
                server.close()
            self._servers.clear()

    def resume_accepting(self) -> None:
        if not self._accepting and not self._draining and self._resuming is None:
            self._resuming = asyncio.get_running_loop().create_task(self.start())
            self._resuming.add_done_callback(self._resumed)

    def _resumed(self, task: asyncio.Task[None]) -> None:
        self._resuming = None
        with contextlib.suppress(asyncio.CancelledError):
            error = task.exception()
            if error is not None:
                _log.error("cannot resume accepting: %s", error)

    def stop_accepting(self) -> None:
        """For the drain: stop for good and let go of the sockets."""
        self._draining = True
        self.pause_accepting()
        for sock in self._sockets:
            sock.close()

    # ------------------------------------------------------------ StreamOwner

    def stream_accepted(self, stream: TLSServerStream) -> None:
        self._counters.inc("accepted", self.name)
        self.open += 1
        self._registry.add(stream)

    def stream_opened(self, stream: TLSServerStream) -> asyncio.Protocol:
        counters = self._counters
        counters.inc("handshake", self.name, stream.tls_version or "", stream.cipher or "",
                     "true" if stream.resumed else "false")
        counters.observe(stream.handshake_seconds, "handshake_seconds", self.name)
        if self._revocation is not None:
            return self._revocation.open(stream, self._app_factory)
        return self._app_factory(stream)

    def stream_failed(self, stream: TLSServerStream, reason: str, detail: str) -> None:
        self._counters.inc("handshake_failed", self.name, reason)
        if reason.startswith(CLIENT_CERT_PREFIX) and self._events is not None:
            peer = stream.get_extra_info("peername") or ("", 0)
            self._events.decision("client_certificate_refused", reason[len(CLIENT_CERT_PREFIX):],
                                  self.name, str(peer[0]), offence="handshake_failure")
            return
        events = self._events
        if events is not None and events.offence is not None and reason not in NOT_OFFENCES:
            peer = stream.get_extra_info("peername") or ("", 0)
            events.offence(str(peer[0]), "handshake_failure")
        if _log.isEnabledFor(logging.DEBUG):
            peer = stream.get_extra_info("peername") or ("", 0)
            _log.debug("handshake failed", extra=fields(
                frontend=self.name, client=f"{peer[0]}:{peer[1]}", reason=reason, detail=detail))

    def stream_answered_challenge(self, stream: TLSServerStream) -> None:
        self._counters.inc("acme_challenge", self.name, "tls-alpn-01")
        _log.info("ACME challenge answered", extra=fields(
            frontend=self.name, challenge="tls-alpn-01", name=stream.server_name))

    def stream_closed(self, stream: TLSServerStream) -> None:
        self.open -= 1
        self._counters.inc("bytes_in", self.name, amount=stream.bytes_in)
        self._counters.inc("bytes_out", self.name, amount=stream.bytes_out)
        self._registry.discard(stream)

