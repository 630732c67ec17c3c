"""Whether a server should get traffic, decided from check and request results (sans-IO).

Two independent signals change a :class:`~offload.upstream.balancer.ServerState`:

* **active checks** (:mod:`offload.upstream.probe` produces the results) move ``up``;
* **passive ejection** — consecutive failed requests (connect failures or 5xx answers, the
  caller decides) — moves ``ejected_until``.

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

Passive ejection (``failures`` consecutive failed requests, 0 = off)::

    state     result   effect                                     transition
    in        ok       failures = 0                               -
    in        fail     failures += 1; at ``failures``:            "ejected"
                       ejected_until = now + duration
    ejected   any      ignored (requests started before ejection)  -
    ejected   time     now >= ejected_until, noticed by any call  "returned" (once)

An ejected server is back in rotation as soon as ``now >= ejected_until`` (the balancer checks
the time itself); "returned" only reports that moment, from :meth:`~HealthTracker.refresh` or
the next ``record_*`` call. If one call both ends an ejection and starts a new one, it returns
"ejected", the state the server is in afterwards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from offload.config.model import EjectionConfig, HealthCheckConfig
    from offload.upstream.balancer import ServerState

CheckTransition = Literal["down", "up"]
RequestTransition = Literal["ejected", "returned"]


class HealthTracker:
    """Health state of one server in one worker; updates the server's ``up``/``ejected_until``."""

    __slots__ = ("_check", "_check_failures", "_check_successes", "_confirmed", "_ejected",
                 "_ejection", "_request_failures", "server")

    def __init__(self, server: ServerState, check: HealthCheckConfig | None,
                 ejection: EjectionConfig) -> None:
        self.server = server
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
            return "returned"
        return None

    def record_request(self, ok: bool, now: float) -> RequestTransition | None:
        """Count one request outcome (``ok=False``: connect failure or 5xx answer)."""
        if ok and not self._request_failures and not self._ejected:
            return None  # the common case: nothing to count, nothing to end
        transition = self.refresh(now)
        limit = self._ejection.failures
        if limit == 0 or self._ejected:
            return transition
        if ok:
            self._request_failures = 0
            return transition
        self._request_failures += 1
        if self._request_failures < limit:
            return transition
        self._request_failures = 0
        self._ejected = True
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


__all__ = ["CheckTransition", "HealthTracker", "RequestTransition"]
