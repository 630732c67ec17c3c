"""Whether a server should get traffic, decided from check and request results (sans-IO).

Two independent signals change a :class:`~offload.upstream.balancer.ServerState`:

* **active checks** (:mod:`offload.upstream.probe` produces the results) move ``up``;
* **passive ejection** — consecutive failed requests (connect failures, resets, timeouts; 5xx
  answers only when configured) — moves ``ejected_until``.

Nothing here reads a clock or touches a socket: every result comes with ``now``, taken from the
clock the balancer is given (normally ``loop.time()``). Each method returns the transition it
caused, if any, so the caller can log it; :meth:`HealthTracker.describe` gives the details.

Theory of operation, active checks (``fall``/``rise`` consecutive results)::

    state   result   effect                                      transition
    up      ok       failures = 0; confirmed                     -
    up      fail     failures += 1; down at fall (or at the      "down"
                     first failure before any success)
    down    ok       successes += 1; up at rise                  "up"
    down    fail     successes = 0                               -

Servers start **up** whether or not there is an active check (optimistic, as HAProxy does, so
a reload does not take a backend out of service until its first checks pass). Like HAProxy,
a server that has not yet passed a check goes down at its first failed check rather than after
``fall`` of them, so a server that is dead at start-up does not get traffic for
``fall * interval``.

Passive ejection (``failures`` consecutive failed requests, 0 = off). The caller says what
happened (an :data:`Outcome`); connect failures, resets, timeouts and malformed answers are
failures, a 5xx answer only with ``count_5xx`` (otherwise it counts as an answer: the server is
alive, and any client can make it answer 500 by asking for a broken path)::

    state     result   effect                                     transition
    in        ok       failures = 0                               -
    in        fail     failures += 1; at ``failures``, if the     "ejected"
                       budget allows: ejected_until = now +
                       duration (else it stays in, and the next
                       failure asks again)
    ejected   any      ignored (requests started before ejection)  -
    ejected   time     now >= ejected_until, noticed by any call  "returned" (once)

The :class:`EjectionBudget` is shared by a backend's servers: passive ejection never holds out
more than ``max_ejected_percent`` of them (at least one when the share rounds to zero, like
Envoy's ``max_ejection_percent``) and never the last server in rotation, so a single-server
backend is never ejected (as nginx ignores ``max_fails`` for a lone server). Failing requests
cannot then take a whole backend down; what is left of it answers, or fails on its own.

An ejected server is back in rotation as soon as ``now >= ejected_until`` (the balancer checks
the time itself); "returned" only reports that moment, from :meth:`~HealthTracker.refresh` or
the next ``record_*`` call. If one call both ends an ejection and starts a new one, it returns
"ejected", the state the server is in afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from offload.config.model import EjectionConfig, HealthCheckConfig
    from offload.upstream.balancer import ServerState

CheckTransition = Literal["down", "up"]
RequestTransition = Literal["ejected", "returned"]
Outcome = Literal["ok", "connect_failed", "reset", "timeout", "bad_response", "status_5xx"]
"""What one request (HTTP mode) or connection (TCP mode) to a server came to:

* ``ok``: connected (TCP mode), or a response head below 500 arrived;
* ``connect_failed``: no connection within ``connect_timeout`` (refused, unreachable, timeout);
* ``reset``: the connection broke before the response was complete;
* ``timeout``: the server stayed silent for ``server_timeout``;
* ``bad_response``: the server answered with something that is not valid HTTP;
* ``status_5xx``: a response head of 500 or more (a failure only with ``count_5xx``).
"""

ALWAYS_FAILURES: frozenset[str] = frozenset({"connect_failed", "reset", "timeout",
                                             "bad_response"})
"""Outcomes that count as failures whatever the configuration (nginx's ``error`` and
``timeout``; Envoy's gateway failures)."""


def is_failure(outcome: Outcome, ejection: EjectionConfig) -> bool:
    """Whether ``outcome`` counts towards ejection under ``ejection``."""
    if outcome == "ok":
        return False
    if outcome == "status_5xx":
        return ejection.count_5xx
    return True


def ejection_limit(servers: int, percent: int) -> int:
    """How many of ``servers`` passive ejection may hold out at once: ``percent`` of them,
    rounded down but at least one when ``percent`` is above zero, and never all of them."""
    if servers < 2 or percent <= 0:
        return 0
    return min(servers - 1, max(1, servers * percent // 100))


class EjectionBudget:
    """The share of one backend's servers (in one worker) that passive ejection may hold out.

    Shared by the backend's trackers: each asks before ejecting and reports ejections and
    returns. ``ejected`` may include ejections that have run out but that no call has noticed
    yet; the owner refreshes the trackers before asking when that matters.
    """

    __slots__ = ("_servers", "ejected", "limit")

    def __init__(self, servers: Sequence[ServerState], percent: int) -> None:
        self._servers = servers
        self.limit = ejection_limit(len(servers), percent)
        self.ejected = 0

    def allows(self, server: ServerState, now: float) -> bool:
        """Whether ``server`` may be ejected now: under the limit, and another server stays in
        rotation (up, not ejected, enabled)."""
        if self.ejected >= self.limit:
            return False
        return any(other is not server and other.up and now >= other.ejected_until
                   and other.admin == "enabled" and other.weight > 0
                   for other in self._servers)


class HealthTracker:
    """Health state of one server in one worker; updates the server's ``up``/``ejected_until``."""

    __slots__ = ("_budget", "_check", "_check_failures", "_check_successes", "_confirmed",
                 "_ejected", "_ejection", "_request_failures", "server")

    def __init__(self, server: ServerState, check: HealthCheckConfig | None,
                 ejection: EjectionConfig, budget: EjectionBudget | None = None) -> None:
        """``budget``: the backend's shared :class:`EjectionBudget` (None: this server alone
        decides, with no limit)."""
        self.server = server
        self._budget = budget
        self._check = check
        self._ejection = ejection
        self._check_failures = 0
        self._check_successes = 0
        self._confirmed = False
        self._request_failures = 0
        self._ejected = False
        server.up = True

    # ------------------------------------------------------------------ active checks

    def record_check(self, ok: bool, now: float) -> CheckTransition | None:
        """Count one active check result; "down" or "up" when the server changes state."""
        check = self._check
        if check is None:
            raise ValueError("record_check needs an active health check in the configuration")
        server = self.server
        if server.up:
            if ok:
                self._check_failures = 0
                self._confirmed = True
                return None
            self._check_failures += 1
            if self._check_failures < check.fall and self._confirmed:
                return None
            server.up = False
            self._check_failures = self._check_successes = 0
            return "down"
        if not ok:
            self._check_successes = 0
            return None
        self._check_successes += 1
        if self._check_successes < check.rise:
            return None
        server.up = True
        self._confirmed = True
        self._check_failures = self._check_successes = 0
        return "up"

    # ------------------------------------------------------------------ passive ejection

    def refresh(self, now: float) -> RequestTransition | None:
        """"returned" once, the first time it is called after an ejection has run out."""
        if self._ejected and now >= self.server.ejected_until:
            self._ejected = False
            if self._budget is not None:
                self._budget.ejected -= 1
            return "returned"
        return None

    def record_request(self, outcome: Outcome, now: float) -> RequestTransition | None:
        """Count one request outcome (see :data:`Outcome`; which ones are failures depends on
        the configuration, :func:`is_failure`)."""
        failed = is_failure(outcome, self._ejection)
        if not failed and not self._request_failures and not self._ejected:
            return None  # the common case: nothing to count, nothing to end
        transition = self.refresh(now)
        limit = self._ejection.failures
        if limit == 0 or self._ejected:
            return transition
        if not failed:
            self._request_failures = 0
            return transition
        self._request_failures = min(self._request_failures + 1, limit)
        if self._request_failures < limit:
            return transition
        budget = self._budget
        if budget is not None and not budget.allows(self.server, now):
            return transition  # held in: the next failure asks again
        self._request_failures = 0
        self._ejected = True
        if budget is not None:
            budget.ejected += 1
        self.server.ejected_until = now + self._ejection.duration
        return "ejected"

    # ------------------------------------------------------------------ reporting

    def describe(self) -> dict[str, object]:
        """A short summary for logs and the status page."""
        server = self.server
        state = "down" if not server.up else "ejected" if self._ejected else "up"
        return {
            "state": state,
            "admin": server.admin,
            "check_successes": self._check_successes,
            "check_failures": self._check_failures,
            "request_failures": self._request_failures,
            "ejected_until": server.ejected_until if self._ejected else None,
        }


__all__ = ["ALWAYS_FAILURES", "CheckTransition", "EjectionBudget", "HealthTracker", "Outcome",
           "RequestTransition", "ejection_limit", "is_failure"]
