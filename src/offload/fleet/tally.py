"""Fleet-wide rate limits without a Redis round trip on the request path (sans-IO).

A frontend with ``limits.scope = "fleet"`` counts its rate limits for the whole fleet. No
request waits for Redis: every event is decided at once, in the worker, by

1. the fleet's last word: a (limit, key) the fleet found over its limit is refused locally
   until the fleet's refusal expires (the "deny cache");
2. the worker's own token buckets (the per-instance limits of :mod:`offload.security.limits`,
   which hold in any case and are all that is left when Redis is gone).

Every event admitted is counted here, and every 50-100 ms one batch carries all the counts
to Redis (:mod:`offload.fleet.limit_script`), which charges them to one GCRA counter per
(frontend, limit, key) and answers, per key, how long the next event must wait. A key that
must wait goes into the deny cache. Overshoot is bounded and self-correcting: events admitted
on several nodes within one batch interval are all charged, which pushes the fleet's
theoretical arrival time further out and lengthens the next refusal, so over any window the
fleet admits ``rate * window + burst`` plus at most one batch interval's worth.

Theory of operation of the store link (what :class:`FleetTally` believes about Redis)::

    healthy --batch failed--> failing --batch succeeded--> healthy

While failing, with ``on_store_failure = "local"`` the per-instance limits decide alone and
the counts of failed batches are dropped (counted as unsynced); with ``"deny"`` every event a
fleet limit covers is refused. Either way a batch (possibly empty) goes out every interval so
the link is probed and recovery is noticed. Nothing here does I/O or reads a clock: ``now`` is
monotonic seconds from the caller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import islice
from typing import Final, Literal

StoreFailure = Literal["local", "deny"]

MAX_BATCH: Final = 4096
"""Counters one batch carries at most (80k per second per worker at 50 ms): an attacker
spraying addresses must not turn into unbounded Redis work. The rest waits for the next batch;
the plain (global) counters always go."""
FIRST_RETRY: Final = 0.1
MAX_RETRY: Final = 1.0
"""While the store is failing, batches go out 0.1 s after the failure, then doubling to at
most every second: every worker of every node retrying 20 times a second would be a
reconnection storm against a Redis that is starting up (or failing over)."""
DENIED_SCAN: Final = 64
"""Cached refusals looked at per batch for expiry (bounded work per batch)."""


@dataclass(frozen=True, slots=True)
class FleetRate:
    """One fleet limit's GCRA parameters in whole microseconds (what the Lua script takes):
    ``interval`` between events at the sustained rate, ``tolerance`` = (burst - 1) intervals."""

    interval_us: int
    tolerance_us: int

    @classmethod
    def of(cls, per_second: float, burst: float) -> FleetRate:
        if not per_second > 0 or not burst >= 1 or math.isinf(per_second) or math.isinf(burst):
            raise ValueError(f"a fleet rate needs a finite rate above 0 and a burst of at "
                             f"least 1, not {per_second}/s burst {burst}")
        interval = max(1, round(1_000_000 / per_second))
        return cls(interval, round((burst - 1) * interval))


CounterKey = tuple[str, str, str]
"""(frontend, limit name, client key): one GCRA counter in Redis."""


@dataclass(frozen=True, slots=True)
class Batch:
    """The counts one batch carries: ``entries[i]`` is (key, events, rate)."""

    entries: tuple[tuple[CounterKey, int, FleetRate], ...]
    probe: bool
    """Sent only to find out whether the store is back (the link is failing)."""

    def __len__(self) -> int:
        return len(self.entries)


class FleetTally:
    """One worker's counts and cached fleet refusals, for every fleet-scoped frontend.

    The request path calls :meth:`refused` before and :meth:`count` after its own buckets
    admit an event (:meth:`uncount` when a later limit refuses it after all); the batch timer
    calls :meth:`take_batch` and then :meth:`settle` with the store's answer or :meth:`fail`.
    At most one batch is in flight. ``max_keys`` bounds both tables (address spraying cannot
    grow memory): a count beyond it is not reported (counted in :attr:`unsynced`), a refusal
    beyond it replaces the oldest.
    """

    __slots__ = ("_denied", "_deny_when_failing", "_failures", "_in_flight", "_last_sent",
                 "_pending", "_rates", "failing", "local_decisions", "max_keys", "unsynced")

    def __init__(self, *, max_keys: int = 65536) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {max_keys}")
        self.max_keys = max_keys
        self._deny_when_failing: set[str] = set()
        self._rates: dict[tuple[str, str], FleetRate] = {}
        self._pending: dict[CounterKey, int] = {}
        self._denied: dict[CounterKey, float] = {}  # oldest first
        self._in_flight = False
        self._last_sent = 0.0
        self._failures = 0
        """Batches failed in a row (the retry delay doubles with each)."""
        self.failing = False
        """Whether the last batch failed (the store is unreachable or erring)."""
        self.unsynced = 0
        """Admitted events never charged to the fleet (dropped batches, a full table)."""
        self.local_decisions = 0
        """Events decided by the per-instance limits alone because the store was failing."""

    def add_limit(self, frontend: str, limit: str, rate: FleetRate,
                  on_store_failure: StoreFailure = "local") -> None:
        """Declare a fleet limit; events of undeclared limits are not counted."""
        self._rates[frontend, limit] = rate
        if on_store_failure == "deny":
            self._deny_when_failing.add(frontend)
        else:
            self._deny_when_failing.discard(frontend)

    def denies_when_failing(self, frontend: str) -> bool:
        return frontend in self._deny_when_failing

    def covers(self, frontend: str, limit: str) -> bool:
        return (frontend, limit) in self._rates

    # the request path: dict operations only

    def refused(self, key: CounterKey, now: float) -> float | None:
        """Seconds the fleet still refuses ``key`` for, or None when it does not.

        While the store is failing under ``on_store_failure = "deny"`` every key is refused
        (for one second at a time: the next batch may find the store back); under ``"local"``
        the event is left to the per-instance limits, and counted.
        """
        if self.failing:
            if key[0] in self._deny_when_failing:
                return 1.0
            self.local_decisions += 1
        until = self._denied.get(key)
        if until is None:
            return None
        if until > now:
            return until - now
        del self._denied[key]
        return None

    def count(self, key: CounterKey) -> None:
        """One event admitted locally: charge it to the fleet with the next batch."""
        pending = self._pending
        count = pending.get(key)
        if count is not None:
            pending[key] = count + 1
        elif len(pending) < self.max_keys:
            pending[key] = 1
        else:
            self.unsynced += 1

    def uncount(self, key: CounterKey) -> None:
        """Take back :meth:`count` for an event a later limit refused (if not sent yet)."""
        count = self._pending.get(key)
        if count is None:
            return
        if count > 1:
            self._pending[key] = count - 1
        else:
            del self._pending[key]

    # the batch timer

    def take_batch(self, now: float) -> Batch | None:
        """The counts gathered since the last batch, or None when there is nothing to send.

        While the link is failing a batch goes out even when empty: it probes the store, after
        a delay that grows with each failure (:data:`FIRST_RETRY` to :data:`MAX_RETRY`).
        """
        if self._in_flight or (not self._pending and not self.failing) or (
                self.failing and now - self._last_sent + 1e-6  # a timer firing a hair early
                < min(MAX_RETRY, FIRST_RETRY * 2 ** (self._failures - 1))):
            self._expire(now)
            return None
        self._last_sent = now
        pending = self._pending
        if len(pending) <= MAX_BATCH:
            self._pending = {}
        else:
            taken = {key: count for key, count in islice(pending.items(), MAX_BATCH)}
            taken.update((key, count) for key, count in pending.items() if key[2] == "*")
            for key in taken:
                del pending[key]
            pending = taken
        rates = self._rates
        entries = tuple((key, count, rates[key[0], key[1]]) for key, count in pending.items()
                        if (key[0], key[1]) in rates)
        self._in_flight = True
        self._expire(now)
        return Batch(entries, probe=self.failing and not entries)

    def settle(self, batch: Batch, waits_ms: list[int], now: float) -> bool:
        """The store charged ``batch``: ``waits_ms[i]`` is how long ``batch.entries[i]``'s key
        must wait before its next event (0: it may go on). Whether the link just recovered."""
        if len(waits_ms) != len(batch.entries):
            raise ValueError(f"{len(waits_ms)} answers for a batch of {len(batch.entries)}")
        self._in_flight = False
        denied = self._denied
        for (key, _, _), wait in zip(batch.entries, waits_ms, strict=True):
            if wait > 0:
                if key not in denied and len(denied) >= self.max_keys:
                    del denied[next(iter(denied))]
                denied.pop(key, None)
                denied[key] = now + wait / 1000
        recovered, self.failing, self._failures = self.failing, False, 0
        return recovered

    def fail(self, batch: Batch) -> bool:
        """``batch`` did not reach the store: its counts are lost (per-instance limits held
        them back anyway). Whether the link just started failing."""
        self._in_flight = False
        self.unsynced += sum(count for _, count, _ in batch.entries)
        self._failures = min(self._failures + 1, 32)
        started, self.failing = not self.failing, True
        return started

    def _expire(self, now: float) -> None:
        """Forget a few expired refusals (the oldest first) so the table does not fill."""
        denied = self._denied
        expired = [key for key, until in islice(denied.items(), DENIED_SCAN) if until <= now]
        for key in expired:
            del denied[key]

    def denied_keys(self) -> int:
        """Cached refusals (for metrics and tests)."""
        return len(self._denied)


__all__ = ["DENIED_SCAN", "FIRST_RETRY", "MAX_BATCH", "MAX_RETRY", "Batch", "CounterKey",
           "FleetRate", "FleetTally", "StoreFailure"]
