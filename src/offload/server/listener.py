"""One frontend inside one worker: accept on its sockets, run TLS, hand streams to the mode.

Also the worker's connection registry: it counts open connections across frontends, pauses
accepting at ``global.max_connections`` (the kernel queue holds new clients meanwhile, instead
of the worker running out of memory or file descriptors) and tells the drain when it is empty.

The frontend's flood limits (:class:`~offload.security.limits.Limits`, one per frontend per
worker) are applied here: a connection over a limit is closed as soon as it is accepted, a full
handshake over a limit before OpenSSL starts it; every refusal and every slow client cut off is
a :class:`~offload.security.events.SecurityEvents` decision.

Behind an L4 balancer (``accept_proxy``), a connection from a peer outside ``proxy_sources``
is closed as soon as it is accepted; from a balancer, the limits and bans wait for its PROXY
header, since they key on the client it names (:meth:`Listener.stream_identified`). Offences
are never counted against a balancer's own address (a header that never came, a LOCAL health
check): banning it would refuse every client behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable

from offload.acme.alpn import ChallengeLookup
from offload.config.model import FrontendConfig
from offload.observe.log import fields
from offload.observe.stats import Counters
from offload.proto.client_hello import ServedProtocols
from offload.proto.proxy_protocol import TrustedSources
from offload.security.ban_list import BannedClients
from offload.security.bans import BanEvent
from offload.security.events import SecurityEvents
from offload.security.limits import LimitDecision, Limits
from offload.server.prepare import PreparedFrontend
from offload.tls.crl_gate import RevocationGate
from offload.tls.stream import CLIENT_CERT_PREFIX, TLSServerStream, read_buffer
from offload.writes import WriteBatcher

_log = logging.getLogger("offload.listener")

NOT_OFFENCES = frozenset({"client_closed", "unknown_sni", "no_application_protocol"})
"""Handshake failures a ban does not count: a client hanging up (port checks, health checks,
browsers racing connections), a name we have no certificate for and a protocol we do not
serve are not attacks."""

RESUME_ACCEPT_RATIO = 0.9
"""Accepting resumes once open connections fall below this share of the maximum."""
PRUNE_INTERVAL = 60.0
"""Seconds between two sweeps that forget the rate buckets of clients gone quiet."""


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
        if not self.streams:  # Event.clear is a Python call: only when it changes anything
            self._empty.clear()
        self.streams.add(stream)
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
                 challenges: ChallengeLookup | None = None, limits: Limits | None = None,
                 events: SecurityEvents | None = None,
                 revocation: RevocationGate | None = None,
                 banned: BannedClients | None = None) -> None:
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
        self._revocation = revocation
        """Checks client certificates against fetched CRLs before the application starts."""
        self._banned = banned if banned is not None else BannedClients()
        """Clients the ban jail refused: closed before the handshake."""
        self._limits = limits
        self._events = events if events is not None else SecurityEvents(counters)
        config = limits.config if limits is not None else None
        self._count_handshakes = config is not None and (
            config.global_handshake_rate is not None or config.per_ip_handshake_rate is not None
            or config.per_fingerprint_handshake_rate is not None)
        self._send_timeout = frontend.config.send_timeout
        settings = frontend.config
        self._proxy_sources = (TrustedSources(settings.proxy_sources) if settings.accept_proxy
                               else None)
        """The balancers that may send a PROXY header; None: the frontend reads none."""
        self._fingerprints = settings.fingerprints
        """Keep each ClientHello for its JA4 (the streams compute it when asked) ..."""
        self._ja3 = settings.fingerprints and _reads_ja3(settings)
        """... and its JA3 when a rule or the backend's header reads it."""
        self._served = ServedProtocols.of(frontend.alpn)
        """Clients offering ALPN without any of these are refused (RFC 7301 §3.2)."""
        self._read_buffer = read_buffer()
        """Where every stream of this listener reads into (one read at a time)."""
        self._prune: asyncio.TimerHandle | None = None
        self._servers: list[asyncio.Server] = []
        self._accepting = False
        self._draining = False
        self._resuming: asyncio.Task[None] | None = None
        self.open = 0
        """Connections of this frontend open in this worker (handshaking or established)."""
        registry.listeners.append(self)

    def _new_stream(self) -> TLSServerStream:
        return TLSServerStream(self, self._context, self._handshake_timeout, self._batcher,
                               self._challenges, send_timeout=self._send_timeout,
                               count_handshakes=self._count_handshakes, served=self._served,
                               buffer=self._read_buffer,
                               expect_proxy=self._proxy_sources is not None,
                               fingerprints=self._fingerprints, ja3=self._ja3)

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
        if self._limits is not None and self._prune is None:
            self._prune = loop.call_later(PRUNE_INTERVAL, self._prune_limits)

    def _prune_limits(self) -> None:
        """Hand back the memory of per-client buckets that are full again (idle clients)."""
        assert self._limits is not None
        self._limits.prune(time.monotonic())
        self._prune = asyncio.get_running_loop().call_later(PRUNE_INTERVAL, self._prune_limits)

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
        if self._prune is not None:
            self._prune.cancel()
            self._prune = None
        for sock in self._sockets:
            sock.close()

    # ------------------------------------------------------------ StreamOwner

    def stream_accepted(self, stream: TLSServerStream) -> None:
        self._counters.inc("accepted", self.name)
        self.open += 1
        self._registry.add(stream)
        sources = self._proxy_sources
        if sources is not None:
            peer = _address(stream)
            if not sources.admits(peer):
                stream.refuse()  # it could claim any client address: closed before any byte
                self._events.decision("connection_refused", "untrusted_proxy_source", self.name,
                                      peer)
            return  # admitted by stream_identified, once the header names the client
        self._admit(stream)

    def stream_identified(self, stream: TLSServerStream) -> None:
        """The balancer's PROXY header arrived: limits and bans apply to the client it named."""
        self._admit(stream)

    def _admit(self, stream: TLSServerStream) -> None:
        """Refuse a banned client or one over a connection limit (closed before TLS)."""
        limits = self._limits
        if not self._banned and limits is None:
            return
        address = _address(stream)
        if self._banned and self._banned.banned(address, time.monotonic()):
            stream.refuse()
            self._events.decision("connection_refused", "banned", self.name, address)
            return
        if limits is not None:
            try:
                key = limits.client_key(address)
            except ValueError:  # not an IP address: counted under what the socket said
                key = address or "unknown"
            decision = limits.on_connect(key, time.monotonic())
            if decision.limit is None:
                stream.client_key = key
            else:
                stream.refuse()
                self._refused(stream, decision)

    def stream_full_handshake(self, stream: TLSServerStream) -> bool:
        """Whether a full handshake may go ahead (see :meth:`Limits.on_full_handshake`)."""
        limits = self._limits
        if limits is None or not stream.client_key:
            return True
        decision = limits.on_full_handshake(stream.client_key, time.monotonic(),
                                            stream.fingerprints)
        if decision.limit is None:
            return True
        self._refused(stream, decision)
        return False  # the stream closes itself

    def _refused(self, stream: TLSServerStream, decision: LimitDecision) -> None:
        assert decision.limit is not None
        self._events.decision("connection_refused", decision.limit, self.name, _address(stream),
                              offence="limit_hit" if decision.per_client and self._blamable(stream)
                              else None)

    def _blamable(self, stream: TLSServerStream) -> bool:
        """Whether an offence on ``stream`` may count against its address: not when that is
        a balancer's (no PROXY header named a client), which would ban everyone behind it."""
        return self._proxy_sources is None or stream.proxied

    def stream_too_slow(self, stream: TLSServerStream, cause: str) -> None:
        """A slow client is cut off (``send_timeout``: it stopped reading our answer)."""
        self._counters.inc("timeout", cause.removesuffix("_timeout"))
        self._events.decision("slow_client", cause, self.name, _address(stream))

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
        events = self._events
        offence: BanEvent | None = "handshake_failure" if self._blamable(stream) else None
        if reason.startswith(CLIENT_CERT_PREFIX):
            events.decision("client_certificate_refused", reason[len(CLIENT_CERT_PREFIX):],
                            self.name, _address(stream), offence=offence)
            return
        if reason == "timeout":
            self._counters.inc("timeout", "handshake")
            events.decision("slow_client", "handshake_timeout", self.name, _address(stream),
                            offence=offence)
        elif reason == "bad_proxy_header":
            events.decision("connection_refused", reason, self.name, _address(stream))
        elif events.offence is not None and offence is not None and reason not in NOT_OFFENCES:
            events.offence(_address(stream), offence)
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
        if stream.client_key and self._limits is not None:
            self._limits.on_disconnect(stream.client_key)
        self._registry.discard(stream)


def _reads_ja3(frontend: FrontendConfig) -> bool:
    """Whether anything on ``frontend`` reads JA3 (it costs as much again as JA4)."""
    return frontend.mode == "http" and (bool(frontend.ja3_header) or any(
        rule.ja3 is not None or rule.not_ja3 is not None for rule in frontend.inspect.rules))


def _address(stream: TLSServerStream) -> str:
    """The client's IP address, as the limits, the bans and the security log name it."""
    peer = stream.get_extra_info("peername")
    return str(peer[0]) if peer else ""

