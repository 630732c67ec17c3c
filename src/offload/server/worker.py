"""A worker process: one uvloop event loop serving every frontend on its slot's sockets.

A worker is forked by the supervisor with the configuration already prepared (certificates
loaded, TLS contexts built). SIGTERM, or the supervisor's death (the lifeline pipe reaches EOF),
starts the drain: stop accepting, let open connections finish up to ``global.drain_timeout``,
then close what is left and exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import grp
import logging
import os
import pwd
import signal
import socket
import ssl
from dataclasses import dataclass
from typing import TypeVar

import uvloop
from redis.asyncio import Redis

from offload.acme.alpn import ChallengeContexts
from offload.acme.storage import AcmeStorage
from offload.config.model import AcmeChallenge, FrontendConfig
from offload.config.units import HostPort
from offload.errors import OffloadError
from offload.fleet.limit_sync import FleetLimitSync, fleet_tally
from offload.fleet.link import FleetLink, redis_client
from offload.fleet.messages import TicketKeys
from offload.fleet.worker_tickets import WorkerTickets
from offload.http.gate import Inspector
from offload.http.icap_client import IcapClient
from offload.http.icap_inspector import IcapInspector
from offload.http.redirect import RedirectProtocol
from offload.http.site import HttpSite
from offload.http.upstream import HttpBackend
from offload.http.versions import HttpConnections
from offload.http.waf import WafInspector, WafPool
from offload.l4.relay import TcpRelay
from offload.observe.access_log import AccessLog
from offload.observe.log import LogSetup, fields
from offload.observe.snapshot import ServerReport, WorkerStats, snapshot
from offload.observe.stats import Counters
from offload.proto.http1 import HttpLimits
from offload.security.ban_list import BannedClients, OffenceBatch
from offload.security.bans import BanEvent
from offload.security.events import SecurityEvents
from offload.security.limits import Limits, worker_limits
from offload.security.waf_engine import Engine
from offload.server.control import (
    BackendCertificateChanged,
    BanList,
    CertificatesChanged,
    Inbox,
    Offences,
    Outbox,
    Ready,
    ServerAdmin,
    StatsReply,
    StatsRequest,
    StoppedAccepting,
)
from offload.server.listener import AppFactory, ConnectionRegistry, Listener
from offload.server.prepare import Prepared, PreparedFrontend
from offload.timers import LoopClock
from offload.tls.crl_gate import CrlFetcher, RevocationGate
from offload.upstream.backend import Backend
from offload.upstream.group import ServerGroup
from offload.writes import WriteBatcher

_log = logging.getLogger("offload.worker")
_T = TypeVar("_T")

FINAL_CLOSE_GRACE = 2.0
"""Seconds given to connections closed at the drain deadline to flush their last bytes."""

OFFENCE_REPORT_INTERVAL = 0.1
"""Seconds offences wait, batched, before they go to the supervisor's ban jail."""

RESPONSE_LIMITS = HttpLimits(max_header_count=200)
"""Backend responses: generous header limits, no body limit."""

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker is told when it is forked."""

    prepared: Prepared
    slot: int
    generation: int
    sockets: dict[HostPort, socket.socket]
    status_fd: int
    lifeline_fd: int
    control_fd: int


def tune_malloc() -> None:
    """Keep glibc from mmap-ing and unmapping every large read buffer (a measured 2x on bulk
    transfers: both thresholds must move together, or small requests get slower)."""
    name = ctypes.util.find_library("c")
    if not name:
        return
    libc = ctypes.CDLL(name)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return
    mallopt(_M_MMAP_THRESHOLD, 4 * 1024 * 1024)
    mallopt(_M_TRIM_THRESHOLD, 32 * 1024 * 1024)


def account_ids(user: str | None, group: str | None) -> tuple[int | None, int | None]:
    """The uid and gid the children run as: ``group``, else the user's own group."""
    entry = pwd.getpwnam(user) if user is not None else None
    gid = grp.getgrnam(group).gr_gid if group is not None else (entry.pw_gid if entry else None)
    return (entry.pw_uid if entry else None), gid


def drop_privileges(user: str | None, group: str | None) -> None:
    """Switch to ``user``/``group`` (the supervisor keeps root to bind ports and read keys)."""
    if user is None and group is None:
        return
    if os.geteuid() != 0:
        raise OffloadError("global.user and global.group need offload to be started as root")
    uid, gid = account_ids(user, group)
    os.setgroups([])
    if gid is not None:
        os.setgid(gid)
    if uid is not None:
        os.setuid(uid)


def run_worker(spec: WorkerSpec, logs: LogSetup) -> int:
    """The body of a worker process; returns its exit status."""
    # Everything inherited from the supervisor (modules, configuration, certificates) lives
    # as long as the worker: out of the collector's sight, a collection never writes to those
    # objects' pages, which then stay shared with the supervisor instead of being copied.
    gc.freeze()
    settings = spec.prepared.config.global_
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logs.after_fork(settings.log_level, settings.log_format)
    try:
        if settings.tune_malloc:
            tune_malloc()
        fleet = _fleet_client(spec)  # reads the Redis password while the files are readable
        drop_privileges(settings.user, settings.group)
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            return loop.run_until_complete(_serve(spec, fleet))
        finally:
            loop.close()
    except OffloadError as error:
        _log.error("worker cannot start: %s", error)
        return 78
    finally:
        logs.stop()


def _fleet_client(spec: WorkerSpec) -> Redis | None:
    """This worker's Redis client when a frontend has fleet-wide limits (it connects lazily,
    in the worker's loop), else None."""
    fleet = spec.prepared.config.fleet
    if fleet is None or not any(f.limits.scope == "fleet" for f in spec.prepared.config.frontends):
        return None
    try:
        return redis_client(fleet, spec.prepared.base_dir)
    except OSError as error:
        raise OffloadError(f"fleet.password_file: cannot read it: {error}") from None


class _Apps:
    """The per-worker runtime of every frontend: backends, sites, access logs, listeners."""

    def __init__(self, spec: WorkerSpec, registry: ConnectionRegistry, counters: Counters,
                 status: _StatusPipe, fleet_client: Redis | None = None) -> None:
        self.spec = spec
        self.counters = counters
        self.status = status
        bans = spec.prepared.config.bans
        self.security = SecurityEvents(counters, self._offence if bans is not None else None)
        """Every security decision of this worker (its offence sink feeds the ban jail)."""
        self.banned = BannedClients()
        """Clients the supervisor's jail banned: refused before the TLS handshake."""
        self._offences = OffenceBatch()
        self.tickets = WorkerTickets([f.store.base for f in spec.prepared.frontends],
                                     lambda result, age: counters.inc("ticket", result, age))
        """The fleet's session-ticket keys, once the supervisor sends them ([fleet])."""
        self.registry = registry
        self.batcher = WriteBatcher(asyncio.get_running_loop())
        self.clock = LoopClock(asyncio.get_running_loop())
        self.crls = CrlFetcher(counters)
        self.tcp_backends: dict[str, Backend] = {}
        self.http_backends: dict[str, HttpBackend] = {}
        self.access_logs: dict[tuple[str, str], AccessLog] = {}
        self.sites: list[HttpSite] = []
        self.icap_clients: dict[tuple[str, int], IcapClient] = {}
        """One client (one connection pool) per ICAP service and pool size, for every frontend."""
        self.waf_pools: list[WafPool] = []
        self.waf_engines: dict[tuple[tuple[str, str], ...], Engine] = {}
        """Loaded rule sets, shared by the frontends that load the same (about 19 MB each)."""
        self.listeners: list[Listener] = []
        self.redirects: list[asyncio.Server] = []
        storage = spec.prepared.acme_storage
        tls_alpn = ChallengeContexts(storage).lookup if storage is not None else None
        workers = spec.prepared.config.global_.workers
        self.fleet_link: FleetLink | None = None
        """This process's one Redis link, when something in it talks to the fleet."""
        self.fleet_limits: FleetLimitSync | None = None
        tally = fleet_tally(spec.prepared.config)
        fleet = spec.prepared.config.fleet
        if tally is not None and fleet is not None and fleet_client is not None:
            self.fleet_link = FleetLink(fleet_client, fleet)
            self.fleet_limits = FleetLimitSync(tally, self.fleet_link, counters)
        self.fleet_tally = tally
        for frontend in spec.prepared.frontends:
            gate = RevocationGate.of(frontend.config, frontend.client_auth, self.crls,
                                     self.security)
            shares = worker_limits(frontend.config.limits, workers)
            limits = (Limits(shares, tally, frontend.config.name) if shares is not None
                      else None)
            self.listeners.append(Listener(
                frontend, self._factory(frontend, limits),
                [spec.sockets[address] for address in frontend.config.bind], registry, counters,
                batcher=self.batcher, challenges=self._acme(frontend.config, "tls-alpn-01",
                                                            tls_alpn),
                limits=limits, events=self.security, revocation=gate, banned=self.banned))

    def _acme(self, frontend: FrontendConfig, challenge: AcmeChallenge, answer: _T) -> _T | None:
        """``answer`` if this frontend answers ACME ``challenge`` validations, else None."""
        acme = self.spec.prepared.config.acme
        if acme is None or not acme.serves(frontend.name) or challenge not in acme.challenges:
            return None
        return answer

    def _factory(self, prepared_frontend: PreparedFrontend, limits: Limits | None) -> AppFactory:
        prepared, counters = self.spec.prepared, self.counters
        frontend, client_auth = prepared_frontend.config, prepared_frontend.client_auth
        config = prepared.config.backend(frontend.backend)
        servers = prepared.servers[frontend.backend]
        tls = (prepared.backend_tls.for_backend(config.name, frontend.mode)
               if prepared.backend_tls is not None else None)
        if frontend.mode == "tcp":
            backend = self.tcp_backends.get(config.name)
            if backend is None:
                backend = self.tcp_backends[config.name] = Backend(config, servers, counters,
                                                                   tls)
            idle = min(frontend.idle_timeout, config.server_timeout)
            return lambda stream: TcpRelay(stream, backend, idle, counters)
        http_backend = self.http_backends.get(config.name)
        if http_backend is None:
            http_backend = self.http_backends[config.name] = HttpBackend(
                config, servers, counters, RESPONSE_LIMITS, self.batcher, tls=tls)
        log = None
        if frontend.access_log != "off":
            key = (frontend.access_log, frontend.access_log_format)
            log = self.access_logs.get(key)
            if log is None:
                log = self.access_logs[key] = AccessLog(*key)
        site = HttpSite(frontend, http_backend, counters, log, self.security, self.clock,
                        rate_limits=limits,
                        extra_inspectors=self._waf(prepared_frontend) + self._icap(frontend),
                        client_cas=client_auth.authorities if client_auth is not None else None,
                        banned=self.banned)
        self.sites.append(site)
        return HttpConnections(site)

    def _icap(self, frontend: FrontendConfig) -> tuple[Inspector, ...]:
        """The frontend's ICAP scanning, if it has one (docs/inspection.md)."""
        icap = frontend.icap
        if icap is None:
            return ()
        key = (icap.url, icap.max_connections)
        client = self.icap_clients.get(key)
        if client is None:
            client = self.icap_clients[key] = IcapClient(
                icap.service, self.clock, max_connections=icap.max_connections)
        return (IcapInspector(icap, client, self.security, frontend.name),)

    def _waf(self, prepared_frontend: PreparedFrontend) -> tuple[Inspector, ...]:
        """The frontend's WAF in this worker: its rules loaded here (after fork: libmodsecurity
        holds no thread or lock across it), its own thread pool."""
        plan, config = prepared_frontend.waf, prepared_frontend.config.waf
        if plan is None or config is None:
            return ()
        pool = WafPool(asyncio.get_running_loop(), config.threads, config.queue)
        self.waf_pools.append(pool)
        engine = self.waf_engines.get(plan.sources)
        if engine is None:
            engine = self.waf_engines[plan.sources] = Engine(list(plan.sources))
        return (WafInspector(engine, config, pool, events=self.security,
                             counters=self.counters, frontend=prepared_frontend.config.name),)

    async def start(self) -> None:
        for log in self.access_logs.values():
            log.start()
        for group in self.groups():
            group.start()
        for listener in self.listeners:
            await listener.start()
        if self.fleet_limits is not None:
            self.fleet_limits.start()
        loop = asyncio.get_running_loop()
        for prepared in self.spec.prepared.frontends:
            frontend = prepared.config
            https_port = frontend.bind[0].port
            for address in frontend.redirect_http:
                storage = self._acme(frontend, "http-01", self.spec.prepared.acme_storage)

                def redirect(frontend: FrontendConfig = frontend, port: int = https_port,
                             storage: AcmeStorage | None = storage) -> RedirectProtocol:
                    return RedirectProtocol(port, frontend.request_timeout, self.counters,
                                            frontend.name, storage)
                self.redirects.append(await loop.create_server(
                    redirect, sock=self.spec.sockets[address].dup(), backlog=frontend.backlog))

    def _offence(self, client: str, event: BanEvent) -> None:
        if self._offences.add(client, event):
            asyncio.get_running_loop().call_later(OFFENCE_REPORT_INTERVAL, self._report_offences)

    def _report_offences(self) -> None:
        reports, dropped = self._offences.take()
        if reports or dropped:
            self.status.send(Offences(reports, dropped))

    def apply(self, message: object) -> None:
        """Act on a control message from the supervisor."""
        if isinstance(message, BanList):
            self.banned.update(message.added, message.removed)
        elif isinstance(message, TicketKeys):
            self.tickets.update(message.keys)
        elif isinstance(message, CertificatesChanged):
            for listener in self.listeners:
                store = listener.frontend.store
                if listener.name == message.frontend and store.update(message.order,
                                                                      message.changed):
                    _log.info("certificates updated", extra=fields(
                        frontend=message.frontend, certificates=len(store.certificates())))
        elif isinstance(message, BackendCertificateChanged):
            backend_tls = self.spec.prepared.backend_tls
            if backend_tls is not None:
                try:
                    backend_tls.use_certificate(message.path, message.certificate)
                except (ssl.SSLError, OSError) as error:
                    _log.error("backend client certificate not applied", extra=fields(
                        file=message.path, reason=str(error)))
                else:
                    _log.info("backend client certificate updated", extra=fields(
                        file=message.path))
        elif isinstance(message, ServerAdmin):
            for group in self.groups():
                if group.name == message.backend:
                    group.set_admin(message.server, message.state)

    def groups(self) -> list[ServerGroup]:
        return [*self.tcp_backends.values(), *self.http_backends.values()]

    def stats(self) -> WorkerStats:
        """What this worker counted so far, with its present connections and servers."""
        counters = self.counters
        gauges: dict[tuple[str, ...], float] = {}
        live = Counters()  # open connections' bytes, access logs' own counts: not in counters
        for listener in self.listeners:
            gauges["connections_active", listener.name] = listener.open
        for stream in self.registry.streams:
            owner = stream.owner_name
            live.inc("bytes_in", owner, amount=stream.bytes_in)
            live.inc("bytes_out", owner, amount=stream.bytes_out)
        for (target, _), log in self.access_logs.items():
            for reason, lost in log.dropped().items():
                live.inc("access_log_dropped", target, reason, amount=lost)
        tally = self.fleet_tally
        if tally is not None:  # plain ints on the request path, turned into counters here
            live.inc("fleet_limit_local_decisions", amount=tally.local_decisions)
            live.inc("fleet_limit_unsynced", amount=tally.unsynced)
        now = asyncio.get_running_loop().time()
        servers: list[ServerReport] = []
        for group in self.groups():
            servers += group.reports(now)
        stats = snapshot(counters, gauges, tuple(servers))
        for key, value in live.values.items():
            stats.counters[key] = stats.counters.get(key, 0) + value
        return stats

    def stop_accepting(self) -> None:
        for listener in self.listeners:
            listener.stop_accepting()
        for server in self.redirects:
            server.close()
        for site in self.sites:
            site.draining = True
        self.registry.drain()

    async def stop(self) -> None:
        for client in self.icap_clients.values():
            client.close()
        if self.fleet_limits is not None:
            await self.fleet_limits.stop()
        if self.fleet_link is not None:
            await self.fleet_link.close()
        for group in self.groups():
            await group.stop()
        for pool in self.waf_pools:
            pool.close()
        for log in self.access_logs.values():
            log.stop()
        await self.crls.stop()


async def _serve(spec: WorkerSpec, fleet_client: Redis | None = None) -> int:
    loop = asyncio.get_running_loop()
    settings = spec.prepared.config.global_
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def lifeline() -> None:
        if not os.read(spec.lifeline_fd, 1):
            loop.remove_reader(spec.lifeline_fd)
            _log.warning("the supervisor is gone; draining")
            stop.set()

    loop.add_reader(spec.lifeline_fd, lifeline)
    counters = Counters()
    registry = ConnectionRegistry(settings.max_connections)
    status = _StatusPipe(spec.status_fd)
    apps = _Apps(spec, registry, counters, status, fleet_client)
    inbox = Inbox()

    def control() -> None:
        data = os.read(spec.control_fd, 1 << 20)
        if not data:
            loop.remove_reader(spec.control_fd)
            return
        for message in inbox.feed(data):
            if isinstance(message, StatsRequest):
                status.send(StatsReply(message.request, apps.stats()))
            else:
                apps.apply(message)

    loop.add_reader(spec.control_fd, control)
    await apps.start()
    status.send(Ready())
    _log.info("worker ready", extra=fields(slot=spec.slot, generation=spec.generation))
    await stop.wait()

    apps.stop_accepting()
    status.send(StoppedAccepting())
    _log.info("worker draining", extra=fields(
        slot=spec.slot, generation=spec.generation, open_connections=len(registry.streams)))
    try:
        async with asyncio.timeout(settings.drain_timeout):
            await registry.wait_empty()
    except TimeoutError:
        _log.warning("drain deadline reached, closing connections",
                     extra=fields(open_connections=len(registry.streams)))
        registry.close_all()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FINAL_CLOSE_GRACE):
                await registry.wait_empty()
    await apps.stop()
    loop.remove_reader(spec.control_fd)
    status.send(StatsReply(0, apps.stats()))  # the final counts, kept by the supervisor
    status.finish()
    _log.info("worker stopped", extra=fields(slot=spec.slot, generation=spec.generation))
    return 0


class _StatusPipe:
    """The worker's end of the status pipe: messages to the supervisor, never blocking the loop
    (what the pipe cannot take waits until it is writable)."""

    def __init__(self, fd: int) -> None:
        self._outbox = Outbox(fd)
        self._loop = asyncio.get_running_loop()
        self._waiting = False

    def send(self, message: object) -> None:
        if not self._outbox.send(message) and not self._waiting:
            self._waiting = True
            self._loop.add_writer(self._outbox.fd, self._flush)

    def _flush(self) -> None:
        if self._outbox.flush():
            self._waiting = False
            self._loop.remove_writer(self._outbox.fd)

    def finish(self) -> None:
        """Write out everything before the process exits."""
        if self._waiting:
            self._loop.remove_writer(self._outbox.fd)
            self._waiting = False
        os.set_blocking(self._outbox.fd, True)
        self._outbox.flush()
