"""The supervisor's side of the admin API: the :class:`~offload.observe.admin_api.AdminHost` it
provides (what it knows of workers, certificates and backends; the changes it can make), and the
admin listener's life across reloads.

It reaches the workers only through :class:`WorkerOps` (the worker pool) and the bans through
:class:`~offload.server.ban_relay.BanRelay`; the instance's state it reads, never changes.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import selectors
import time
from collections.abc import Callable
from typing import Protocol

from offload import __version__
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
from offload.server.ban_relay import BanRelay
from offload.server.children import Instance
from offload.server.control import ServerAdmin
from offload.server.fleet_part import FleetComponent
from offload.server.stats_hub import StatsHub
from offload.upstream.balancer import AdminState

_log = logging.getLogger("offload.supervisor")


class WorkerOps(Protocol):
    """What the admin API needs of the workers."""

    @property
    def restarts(self) -> int:
        """Workers restarted after dying."""

    def describe(self) -> tuple[WorkerInfo, ...]: ...

    def live(self) -> int:
        """Workers not draining."""

    def broadcast(self, message: object) -> None:
        """Send to every worker not draining."""

    def collect(self, done: Callable[[], None]) -> None:
        """Ask every worker for fresh statistics; ``done`` once they are in (or overdue)."""


class AdminService:
    """The admin API's host, and its listener (when ``[admin]`` is configured)."""

    def __init__(self, instance: Instance, selector: selectors.BaseSelector, workers: WorkerOps,
                 *, stats: StatsHub, bans: BanRelay,
                 reload: Callable[[str], tuple[bool, str]],
                 fleet: FleetComponent | None = None) -> None:
        self._instance = instance
        self._selector = selector
        self._workers = workers
        self._stats = stats
        self._bans = bans
        self._reload = reload
        self._fleet = fleet
        self._history = History()
        """The status page's last ten minutes, sampled while the admin listener runs."""
        self.server: AdminServer | None = None
        self._server_admin: dict[tuple[str, str], AdminState] = {}
        """Servers drained or disabled through the API (told to every new worker too)."""
        self._in_rotation = True
        """False after POST /api/drain: /readyz says 503 so the balancer in front moves on."""
        self._start_time = time.time()
        self._started_at = dt.datetime.now(dt.UTC)

    # ------------------------------------------------------------------ admin listener

    def sync(self) -> OSError | None:
        """Serve the admin API the current configuration asks for; the error if it cannot
        listen."""
        config = self._instance.prepared.config.admin
        token = self._instance.prepared.admin_token
        if config is None:
            if self.server is not None:
                self.server.close()
                self.server = None
            return None
        api = AdminApi(self, token, AdminGuard(config.bind.port, config.hosts),
                       health_without_token=config.health_without_token)
        if self.server is not None and self.server.address == config.bind:
            self.server.api = api  # the same socket, new rules and token
            return None
        old, self.server = self.server, None
        try:
            self.server = AdminServer(self._selector, config.bind, api, self._workers.collect,
                                      sample=self._sample)
        except OSError as error:
            _log.error("cannot serve the admin API", extra=fields(
                address=str(config.bind), reason=error.strerror))
            self.server = old
            return error
        if old is not None:
            old.close()
        _log.info("admin API listening", extra=fields(address=str(config.bind),
                                                      token=token is not None))
        return None

    def fds(self) -> list[int]:
        return self.server.fds() if self.server is not None else []

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    def deadline(self) -> float | None:
        return self.server.deadline() if self.server is not None else None

    def on_time(self, now: float) -> None:
        if self.server is not None:
            self.server.on_time(now)

    def _sample(self) -> None:
        """Collect fresh statistics for the next sample of the status page's history."""
        def record() -> None:
            self._history.record(time.monotonic(), time.time(), self._stats.merged())
        self._workers.collect(record)

    # ------------------------------------------------------------------ backend server states

    def greeting(self) -> list[object]:
        """What a newly forked worker is told: the admin state of every server set by hand."""
        return [ServerAdmin(backend, server, state)
                for (backend, server), state in self._server_admin.items()]

    def forget_missing_servers(self) -> None:
        """After a reload, drop admin states of servers the configuration no longer has."""
        present = {(b.name, s.label) for b in self._instance.prepared.config.backends
                   for s in b.servers}
        self._server_admin = {k: v for k, v in self._server_admin.items() if k in present}

    # ------------------------------------------------------------------ AdminHost

    def overview(self) -> Overview:
        config = self._instance.prepared.config
        frontends = tuple((f.name, f.mode, tuple(str(a) for a in f.bind))
                          for f in config.frontends)
        redirects = tuple((f.name, tuple(str(a) for a in f.redirect_http))
                          for f in config.frontends if f.redirect_http)
        admin = (str(self.server.address), self.server.open) if self.server is not None else None
        draining = self._instance.stopping or not self._in_rotation
        return Overview(__version__, os.getpid(), self._started_at, self._instance.generation,
                        draining, self._instance.started and not draining,
                        self._workers.describe(), frontends, redirects, admin)

    def history(self) -> dict[str, object]:
        return self._history.as_json()

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
        total, in_force = self._bans.totals()
        return SupervisorFacts(__version__, self._start_time, self._workers.live(),
                               dict(self._instance.reloads), self._workers.restarts,
                               certificates, total, in_force,
                               fleet=self._fleet.status if self._fleet is not None else None)

    def certificates(self) -> list[ServedCertificate]:
        return [ServedCertificate(frontend.config.name, certificate)
                for frontend in self._instance.prepared.frontends
                for certificate in frontend.store.certificates()]

    def backend_balance(self) -> dict[str, str]:
        return {backend.name: backend.balance
                for backend in self._instance.prepared.config.backends}

    def set_server_admin(self, backend: str, server: str, state: AdminState) -> str | None:
        config = next((b for b in self._instance.prepared.config.backends if b.name == backend),
                      None)
        if config is None:
            return f"no backend is called {backend!r}"
        if all(s.label != server for s in config.servers):
            return f"backend {backend!r} has no server {server!r}"
        if state == "enabled":
            self._server_admin.pop((backend, server), None)
        else:
            self._server_admin[backend, server] = state
        self._workers.broadcast(ServerAdmin(backend, server, state))
        _log.info("backend server %s", state, extra=fields(
            event="server_admin", backend=backend, server=server, admin=state))
        return None

    def reload(self, who: str) -> tuple[bool, str]:
        return self._reload(who)

    def bans(self) -> list[BanInfo] | None:
        return self._bans.listing()

    def unban(self, client: str, who: str) -> str | None:
        return self._bans.unban(client, who)

    def fleet(self) -> dict[str, object] | None:
        return self._fleet.as_json() if self._fleet is not None else None

    def set_in_rotation(self, wanted: bool) -> None:
        self._in_rotation = wanted
        _log.info("in rotation" if wanted else "out of rotation: /readyz answers 503",
                  extra=fields(event="rotation", ready=wanted))
