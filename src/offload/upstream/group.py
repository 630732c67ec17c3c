"""The servers of one backend inside one worker: their state, the balancer, health checks.

Both modes use it: TCP mode picks a server per connection, HTTP mode per request. Health is per
worker (each worker probes on its own, as HAProxy's processes did), so a server one worker sees
failing is taken out of that worker's rotation at once, without coordination.
"""

from __future__ import annotations

import asyncio
import logging

from offload.config.model import BackendConfig
from offload.observe.log import fields
from offload.observe.snapshot import ServerReport
from offload.observe.stats import Counters
from offload.upstream.balancer import AdminState, make_balancer, server_states
from offload.upstream.health import EjectionBudget, HealthTracker, Outcome, is_failure
from offload.upstream.probe import HealthChecker
from offload.upstream.servers import Server

_log = logging.getLogger("offload.upstream")


class ServerGroup:
    """A backend's servers in one worker."""

    def __init__(self, config: BackendConfig, servers: tuple[Server, ...],
                 counters: Counters) -> None:
        self.config = config
        self.name = config.name
        self.servers = servers
        self.counters = counters
        self.states = server_states(config)
        self.balancer = make_balancer(config.balance, self.states)
        self.budget = EjectionBudget(self.states, config.ejection.max_ejected_percent)
        """How many servers passive checks may hold out; its ``ejected`` count tells when the
        trackers must be asked whether an ejection has run out (keeps the common path free of
        per-server calls)."""
        self.trackers = [HealthTracker(state, config.health_check, config.ejection, self.budget)
                         for state in self.states]
        self.checker: HealthChecker | None = None

    def start(self) -> None:
        """Start the active health checks, if configured (in the running loop)."""
        if self.config.health_check is not None and self.checker is None:
            self.checker = HealthChecker(self.servers, self.config.health_check, self.trackers,
                                         on_change=self.health_changed)
            self.checker.start()

    async def stop(self) -> None:
        if self.checker is not None:
            await self.checker.stop()
            self.checker = None

    def health_changed(self, index: int, transition: str) -> None:
        server = self.servers[index]
        self.counters.inc("server_state", self.name, transition)
        log = _log.warning if transition in ("down", "ejected") else _log.info
        log("backend server %s", transition, extra=fields(
            event="server_state", backend=self.name, server=server.label, address=str(server),
            state=transition))

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

    def reports(self, now: float) -> list[ServerReport]:
        """Each server as this worker sees it, for the admin API and metrics."""
        return [ServerReport(
            backend=self.name, server=server.label, address=str(server), weight=state.weight,
            backup=state.backup, healthy=state.up and now >= state.ejected_until,
            admin=state.admin, active=state.active, idle=self.idle_connections(index))
            for index, (server, state) in enumerate(zip(self.servers, self.states, strict=True))]

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

    def report(self, index: int, outcome: Outcome | bool, now: float) -> None:
        """Passive health: what a connection or request to server ``index`` came to.

        ``outcome`` says what happened (:data:`~offload.upstream.health.Outcome`); whether it
        counts against the server is the configuration's business. A bool is the older form
        (``False``: a failure of unknown kind, counted as one).
        """
        if self.budget.ejected and is_failure(outcome, self.config.ejection):
            self._refresh(now)  # so the budget does not count ejections that ran out
        change = self.trackers[index].record_request(outcome, now)
        if change is not None:
            self.health_changed(index, change)

    @staticmethod
    def now() -> float:
        return asyncio.get_running_loop().time()
