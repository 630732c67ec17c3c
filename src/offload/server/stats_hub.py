"""The supervisor's view of its workers' statistics (sans-IO: no pipes, no clock of its own).

A scrape asks every worker for a snapshot (:meth:`StatsHub.collect` returns the request number
the caller sends them) and completes when all have answered or the deadline passes, whichever
comes first; a worker that does not answer in time is shown with its last snapshot. Counters of
a worker that exited are kept (its final snapshot, sent as it stops), so totals never go down
when workers restart or a reload replaces them; its gauges go with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from offload.observe.metrics import Merged
from offload.observe.snapshot import WorkerStats

COLLECT_TIMEOUT = 1.0
"""Seconds a scrape waits for the workers' answers."""

Done = Callable[[], None]


@dataclass
class _Collection:
    request: int
    waiting: set[int]
    deadline: float
    done: Done


class StatsHub:
    """Latest snapshot per live worker, the totals of exited ones, scrapes in progress."""

    def __init__(self, timeout: float = COLLECT_TIMEOUT) -> None:
        self._timeout = timeout
        self._latest: dict[int, WorkerStats] = {}
        self._retired = Merged()
        self._pending: list[_Collection] = []
        self._requests = 0

    def collect(self, pids: list[int], now: float, done: Done) -> int | None:
        """Start a scrape of ``pids``; returns the request number to send each of them, or None
        when there is no one to ask (``done`` has then been called already)."""
        if not pids:
            done()
            return None
        self._requests += 1
        self._pending.append(_Collection(self._requests, set(pids), now + self._timeout, done))
        return self._requests

    def received(self, pid: int, request: int, stats: WorkerStats) -> None:
        """A worker's snapshot (``request`` 0: its last, sent unasked as it exits)."""
        self._latest[pid] = stats
        self._settle(lambda c: request in (c.request, 0), pid)

    def worker_gone(self, pid: int) -> None:
        """A worker exited: keep what it counted, stop waiting for it."""
        stats = self._latest.pop(pid, None)
        if stats is not None:
            self._retired.add(stats, live=False)
        self._settle(lambda c: True, pid)

    def deadline(self) -> float | None:
        return min((c.deadline for c in self._pending), default=None)

    def on_time(self, now: float) -> None:
        due = [c for c in self._pending if c.deadline <= now]
        self._pending = [c for c in self._pending if c.deadline > now]
        for collection in due:
            collection.done()

    def merged(self) -> Merged:
        """Every live worker's latest snapshot plus the counters of the exited ones."""
        total = self._retired.copy()
        for stats in self._latest.values():
            total.add(stats, live=True)
        return total

    def _settle(self, matches: Callable[[_Collection], bool], pid: int) -> None:
        finished = []
        for collection in self._pending:
            if matches(collection):
                collection.waiting.discard(pid)
                if not collection.waiting:
                    finished.append(collection)
        for collection in finished:
            self._pending.remove(collection)
            collection.done()
