"""The supervisor's side of the admin API: the :class:`~offload.observe.admin_api.AdminHost` it
provides (what it knows of workers, certificates and backends; the changes it can make), the
admin listener's life across reloads, and the ban jail fed by the workers' offences.

A mixin of :class:`~offload.server.supervisor.Supervisor`, kept apart so that the process
supervision reads on its own; it declares the supervisor state it uses.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import selectors
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from offload import __version__
from offload.config.model import AdminConfig
from offload.observe.admin_api import (
    AdminApi,
    BanInfo,
    Overview,
    ServedCertificate,
    WorkerInfo,
)
from offload.observe.admin_guard import AdminGuard
from offload.observe.history import History
from offload.observe.log import fields
from offload.observe.metrics import CertificateExpiry, Merged, SupervisorFacts
from offload.server.admin_server import AdminServer
from offload.server.ban_hub import BanHub
from offload.server.control import BanList, Offences, ServerAdmin, StatsRequest
from offload.server.prepare import Prepared
from offload.server.stats_hub import StatsHub
from offload.upstream.balancer import AdminState

if TYPE_CHECKING:
    from offload.server.fleet_part import FleetPart
    from offload.server.supervisor import WorkerProcess

_log = logging.getLogger("offload.supervisor")
_audit = logging.getLogger("offload.audit")


class SupervisorAdmin:
    """The admin API's host and the ban jail, as part of the supervisor."""

    _current: Prepared
    _workers: dict[int, WorkerProcess]
    _selector: selectors.BaseSelector
    _generation: int
    _started: bool
    _stopping: bool
    _stats: StatsHub
    _history: History
    _admin: AdminServer | None
    _admin_api: AdminApi | None
    _admin_config: AdminConfig | None
    _server_admin: dict[tuple[str, str], AdminState]
    _bans: BanHub | None
    _fleet: FleetPart
    _in_rotation: bool
    _reloads: dict[str, int]
    _worker_restarts: int
    _start_time: float
    _started_at: dt.datetime

    def _send(self, worker: WorkerProcess, message: object) -> None:
        raise NotImplementedError

    def _reload(self, who: str = "SIGHUP") -> tuple[bool, str]:
        raise NotImplementedError

    # ------------------------------------------------------------------ admin listener

    def _sync_admin(self) -> OSError | None:
        """Serve the admin API the current configuration asks for; the error if it cannot
        listen."""
        config = self._current.config.admin
        token = self._current.admin_token
        if config is None:
            if self._admin is not None:
                self._admin.close()
                self._admin = self._admin_api = None
            self._admin_config = None
            return None
        api = AdminApi(self, token, AdminGuard(config.bind.port, config.hosts),
                       health_without_token=config.health_without_token)
        if self._admin is not None and self._admin.address == config.bind:
            self._admin.api = self._admin_api = api  # the same socket, new rules and token
            self._admin_config = config
            return None
        old, self._admin = self._admin, None
        try:
            self._admin = AdminServer(self._selector, config.bind, api, self._collect,
                                      sample=self._sample)
        except OSError as error:
            _log.error("cannot serve the admin API", extra=fields(
                address=str(config.bind), reason=error.strerror))
            self._admin = old
            return error
        if old is not None:
            old.close()
        self._admin_api, self._admin_config = api, config
        _log.info("admin API listening", extra=fields(address=str(config.bind),
                                                      token=token is not None))
        return None

    def _collect(self, done: Callable[[], None]) -> None:
        """Ask every worker for fresh statistics; ``done`` once they answered (or 1 s passed)."""
        workers = [w for w in self._workers.values() if w.status_fd >= 0 and w.control.fd >= 0]
        request = self._stats.collect([w.pid for w in workers], time.monotonic(), done)
        if request is not None:
            for worker in workers:
                self._send(worker, StatsRequest(request))

    def _forget_missing_servers(self) -> None:
        """After a reload, drop admin states of servers the configuration no longer has."""
        present = {(b.name, s.label) for b in self._current.config.backends for s in b.servers}
        self._server_admin = {k: v for k, v in self._server_admin.items() if k in present}

    # ------------------------------------------------------------------ bans

    def _sync_bans(self) -> None:
        """A changed ``[bans]`` section starts a new jail; the old bans are lifted."""
        wanted = self._current.config.bans
        if (self._bans.config if self._bans is not None else None) == wanted:
            return
        if self._bans is not None:
            lifted = tuple(b.client for b in self._bans.jail.bans(time.monotonic()))
            if lifted:
                self._broadcast(BanList(removed=lifted))
        self._bans = BanHub(wanted) if wanted is not None else None

    def _on_offences(self, message: Offences) -> None:
        assert self._bans is not None
        now = time.monotonic()
        self._fleet.offences(message)
        bans = self._bans.offences(message, now)
        if not bans:
            return
        self._fleet.banned(bans)
        self._broadcast(BanList(added=tuple((ban.client, ban.until) for ban in bans)))
        for ban in bans:
            counts = {event: count for event, count in ban.events}
            _log.warning("client banned", extra=fields(
                event="ban", client=ban.client, reason=ban.reason, events=counts,
                ban_seconds=round(ban.until - now)))
            _audit.info("ban", extra=fields(
                audit=True, who="automatic", what=f"ban {ban.client}",
                result=f"banned for {round(ban.until - now)}s after {ban.count} offences",
                events=counts))

    def _broadcast(self, message: object) -> None:
        for worker in self._workers.values():
            if not worker.draining:
                self._send(worker, message)

    # AdminHost, for the admin API

    def overview(self) -> Overview:
        workers = tuple(WorkerInfo(
            w.pid, w.slot, w.generation,
            "draining" if w.draining else "ready" if w.ready else "starting")
            for w in sorted(self._workers.values(), key=lambda w: (w.generation, w.slot)))
        frontends = tuple((f.name, f.mode, tuple(str(a) for a in f.bind))
                          for f in self._current.config.frontends)
        redirects = tuple((f.name, tuple(str(a) for a in f.redirect_http))
                          for f in self._current.config.frontends if f.redirect_http)
        admin = (str(self._admin.address), self._admin.open) if self._admin is not None else None
        draining = self._stopping or not self._in_rotation
        return Overview(__version__, os.getpid(), self._started_at, self._generation,
                        draining, self._started and not draining, workers, frontends,
                        redirects, admin)

    def history(self) -> dict[str, object]:
        return self._history.as_json()

    def _sample(self) -> None:
        """Collect fresh statistics for the next sample of the status page's history."""
        def record() -> None:
            self._history.record(time.monotonic(), time.time(), self._stats.merged())
        self._collect(record)

    def merged(self) -> Merged:
        return self._stats.merged()

    def facts(self) -> SupervisorFacts:
        certificates = tuple(
            CertificateExpiry(served.frontend, served.certificate.names[0]
                              if served.certificate.names else served.certificate.subject,
                              f"{served.certificate.key_type} {served.certificate.key_bits}",
                              served.certificate.source,
                              served.certificate.not_after.timestamp())
            for served in self.certificates())
        live = sum(1 for w in self._workers.values() if not w.draining)
        bans = self._bans
        return SupervisorFacts(__version__, self._start_time, live, dict(self._reloads),
                               self._worker_restarts, certificates,
                               bans.total if bans is not None else 0,
                               len(bans.jail.bans(time.monotonic())) if bans is not None else 0,
                               fleet=self._fleet.status)

    def certificates(self) -> list[ServedCertificate]:
        return [ServedCertificate(frontend.config.name, certificate)
                for frontend in self._current.frontends
                for certificate in frontend.store.certificates()]

    def backend_balance(self) -> dict[str, str]:
        return {backend.name: backend.balance for backend in self._current.config.backends}

    def set_server_admin(self, backend: str, server: str, state: AdminState) -> str | None:
        config = next((b for b in self._current.config.backends if b.name == backend), None)
        if config is None:
            return f"no backend is called {backend!r}"
        if all(s.label != server for s in config.servers):
            return f"backend {backend!r} has no server {server!r}"
        if state == "enabled":
            self._server_admin.pop((backend, server), None)
        else:
            self._server_admin[backend, server] = state
        for worker in self._workers.values():
            if not worker.draining:
                self._send(worker, ServerAdmin(backend, server, state))
        _log.info("backend server %s", state, extra=fields(
            event="server_admin", backend=backend, server=server, admin=state))
        return None

    def reload(self, who: str) -> tuple[bool, str]:
        return self._reload(who)

    def bans(self) -> list[BanInfo] | None:
        if self._bans is None:
            return None
        now, wall = time.monotonic(), time.time()
        return [BanInfo(ban.client, ban.reason, wall - (now - ban.since),
                        wall + (ban.until - now), ban.count, dict(ban.events))
                for ban in self._bans.jail.bans(now)]

    def unban(self, client: str, who: str) -> str | None:
        if self._bans is None:
            return "automatic bans are not configured ([bans])"
        try:
            key = self._bans.unban(client)
        except ValueError:
            return f"{client!r} is not an address or network"
        if key is None:
            return f"{client} is not banned"
        self._broadcast(BanList(removed=(key,)))
        self._fleet.unbanned(key, who)
        _audit.info("unban", extra=fields(audit=True, who=who, what=f"unban {key}",
                                          result="done"))
        return None

    def fleet(self) -> dict[str, object] | None:
        return self._fleet.as_json()

    def set_in_rotation(self, wanted: bool) -> None:
        self._in_rotation = wanted
        _log.info("in rotation" if wanted else "out of rotation: /readyz answers 503",
                  extra=fields(event="rotation", ready=wanted))
