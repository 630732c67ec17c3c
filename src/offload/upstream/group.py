"""The servers of one backend inside one worker: their state, the balancer, health checks.

Both modes use it: TCP mode picks a server per connection, HTTP mode per request. Health is per
worker (each worker probes on its own, as HAProxy's processes did), so a server one worker sees
failing is taken out of that worker's rotation at once, without coordination.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from offload.config.model import BackendConfig
from offload.errors import BackendTlsError
from offload.observe.log import CappedLog, fields
from offload.observe.snapshot import ServerReport
from offload.observe.stats import Counters
from offload.upstream.balancer import AdminState, make_balancer, server_states
from offload.upstream.health import EjectionBudget, HealthTracker, Outcome, is_failure
from offload.upstream.probe import HealthChecker
from offload.upstream.servers import Server

if TYPE_CHECKING:
    from offload.tls.backend_tls import ServerTls

_log = logging.getLogger("offload.upstream")

_STATUS_CLASSES = ("", "1xx", "2xx", "3xx", "4xx", "5xx")


class ServerGroup:
    """A backend's servers in one worker."""

    def __init__(self, config: BackendConfig, servers: tuple[Server, ...],
                 counters: Counters, tls: tuple[ServerTls | None, ...] | None = None) -> None:
        self.config = config
        self.name = config.name
        self.servers = servers
        self.counters = counters
        self.tls = tls
        """Per server, how offload speaks TLS to it (None: no server of this backend uses
        TLS; an entry None: that server is plain TCP)."""
        self._tls_log = CappedLog()
        self.states = server_states(config)
        self.balancer = make_balancer(config.balance, self.states)
        self.budget = EjectionBudget(self.states, config.ejection.max_ejected_percent)
        """How many servers passive checks may hold out; its ``ejected`` count tells when the
        trackers must be asked whether an ejection has run out (keeps the common path free of
        per-server calls)."""
        self.trackers = [HealthTracker(state, config.health_check, config.ejection, self.budget)
                         for state in self.states]
        self.checker: HealthChecker | None = None
        self.waits: list[dict[object, float]] = [{} for _ in servers]
        """Per server: the requests sent to it that wait for its response head, and since when
        (loop time), so that a server that accepts and never answers shows before its health
        check gives up."""

    def start(self) -> None:
        """Start the active health checks, if configured (in the running loop)."""
        if self.config.health_check is not None and self.checker is None:
            self.checker = HealthChecker(self.servers, self.config.health_check, self.trackers,
                                         on_change=self.health_changed, tls=self.tls)
            self.checker.start()

    async def stop(self) -> None:
        if self.checker is not None:
            await self.checker.stop()
            self.checker = None

    def health_changed(self, index: int, transition: str) -> None:
        server = self.servers[index]
        self.counters.inc("server_state", self.name, transition)
        log = _log.warning if transition in ("down", "ejected") else _log.info
        check = self.check_result(index)
        log("backend server %s", transition, extra=fields(
            event="server_state", backend=self.name, server=server.label, address=str(server),
            state=transition, **({"check": check} if check else {})))

    def set_admin(self, server: str, state: AdminState) -> bool:
        """Drain, disable or enable the server labelled ``server``; False if there is none."""
        found = False
        for index, candidate in enumerate(self.servers):
            if candidate.label == server:
                self.states[index].admin = state
                self.admin_changed(index, state)
                found = True
        return found

    def admin_changed(self, index: int, state: AdminState) -> None:
        """Hook for subclasses: server ``index`` got admin state ``state``."""

    def idle_connections(self, index: int) -> int:
        """Pooled connections to server ``index`` (none in TCP mode)."""
        return 0

    def tls_failed(self, index: int, error: BackendTlsError) -> None:
        """The TLS handshake with server ``index`` failed: counted by reason
        (``backend_tls_error``), logged (capped: a server or a client choosing bad names
        cannot flood the log) and, unless the client chose the name, held against the
        server like a failed connect."""
        server = self.servers[index]
        self.counters.inc("backend_tls_error", self.name, error.reason)
        suppressed = self._tls_log.admit(error.reason)
        if suppressed >= 0:
            extra = fields(event="backend_tls_error", backend=self.name, server=server.label,
                           address=str(server), reason=error.reason, detail=error.detail,
                           **({"suppressed": suppressed} if suppressed else {}))
            _log.warning("backend TLS handshake failed: %s", error.reason, extra=extra)
        if not error.client_named:
            self.report(index, "connect_failed", self.now())

    def tls_state(self, index: int) -> str:
        """"off", "verified" or "unverified" (``verify = false``), for the status page."""
        tls = self.tls[index] if self.tls is not None else None
        if tls is None:
            return "off"
        return "verified" if tls.verified else "unverified"

    def check_result(self, index: int) -> str:
        """The last active health check's result for server ``index`` ("" without checks)."""
        if self.checker is None:
            return ""
        result = self.checker.results.get(index)
        return "" if result is None else ("ok: " if result[0] else "failed: ") + result[1]

    def reports(self, now: float) -> list[ServerReport]:
        """Each server as this worker sees it, for the admin API and metrics."""
        return [ServerReport(
            backend=self.name, server=server.label, address=str(server), weight=state.weight,
            backup=state.backup, healthy=state.up and now >= state.ejected_until,
            admin=state.admin, active=state.active, idle=self.idle_connections(index),
            waiting=len(waits), tls=self.tls_state(index), check=self.check_result(index),
            oldest_wait=max(0.0, now - min(waits.values())) if waits else 0.0)
            for index, (server, state, waits) in enumerate(
                zip(self.servers, self.states, self.waits, strict=True))]

    # Per-server figures, recorded by the data path (HTTP mode: the exchange).

    def wait_began(self, index: int, request: object, since: float) -> None:
        """``request`` went to server ``index`` at ``since`` (loop time) and waits for the
        response head."""
        self.waits[index][request] = since

    def wait_ended(self, index: int, request: object) -> None:
        """``request`` got a response head from server ``index``, or waits no more (failed,
        timed out, abandoned); calling it again, or for a request that never waited, is fine."""
        self.waits[index].pop(request, None)

    def responded(self, index: int, status: int, seconds: float) -> None:
        """Server ``index`` answered with a final ``status``, ``seconds`` after the request was
        sent to it."""
        label = self.servers[index].label
        kind = status // 100
        self.counters.inc("server_responses", self.name, label,
                          _STATUS_CLASSES[kind] if 1 <= kind <= 5 else "other")
        self.counters.observe(seconds, "server_response_seconds", self.name, label)

    def candidates(self, key: bytes, now: float) -> list[int]:
        """Servers to try, first choice first (only usable ones; backups if no primary is)."""
        if self.budget.ejected:
            self._refresh(now)
        states = self.states
        if len(states) == 1:  # nothing to balance
            return [0] if states[0].usable(now) else []
        return self.balancer.order(states, now, key)

    def acquired(self, index: int) -> None:
        self.states[index].active += 1

    def released(self, index: int) -> None:
        self.states[index].active -= 1

    def _refresh(self, now: float) -> None:
        """Notice (and log) the ejections that have run out by ``now``."""
        for tracker in self.trackers:
            change = tracker.refresh(now)
            if change is not None:
                self.health_changed(tracker.server.index, change)

    def report(self, index: int, outcome: Outcome, now: float) -> None:
        """What a connection or request to server ``index`` came to
        (:data:`~offload.upstream.health.Outcome`): counted per server (``connect_failed``,
        ``timeout``, ``reset``, ``bad_response``) and fed to passive health, where whether it
        counts against the server is the configuration's business."""
        if outcome not in ("ok", "status_5xx"):
            self.counters.inc("server_failures", self.name, self.servers[index].label, outcome)
        if self.budget.ejected and is_failure(outcome, self.config.ejection):
            self._refresh(now)  # so the budget does not count ejections that ran out
        change = self.trackers[index].record_request(outcome, now)
        if change is not None:
            self.health_changed(index, change)

    @staticmethod
    def now() -> float:
        return asyncio.get_running_loop().time()
