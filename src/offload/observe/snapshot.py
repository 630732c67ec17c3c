"""A worker's statistics as they travel to the supervisor (pickled over the status pipe).

Kept out of the mypyc-compiled :mod:`offload.observe.stats`: a compiled frozen dataclass cannot
be unpickled (its ``__setattr__`` refuses the state), and these only travel, they are not on
the data path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from offload.observe.stats import Counters


@dataclass(frozen=True)
class ServerReport:
    """One backend server as one worker sees it."""

    backend: str
    server: str
    address: str
    weight: int
    backup: bool
    healthy: bool
    """Passing its health checks and not ejected for failed requests."""
    admin: str
    active: int
    idle: int
    waiting: int = 0
    """Requests sent to the server that wait for its response head."""
    oldest_wait: float = 0.0
    """Seconds the longest-waiting of them has waited (0 when none)."""
    tls: str = "off"
    """TLS to the server: "off", "verified" or "unverified" (``verify = false``)."""
    check: str = ""
    """The last active health check: "ok: status 200", "failed: unknown_ca ..." ("": none)."""


@dataclass(frozen=True)
class WorkerStats:
    """A snapshot of one worker, sent to the supervisor: counters and histograms only grow
    (the supervisor keeps the last ones of a worker that exited), gauges are the present."""

    counters: dict[tuple[str, ...], int] = field(default_factory=dict)
    histograms: dict[tuple[str, ...], tuple[tuple[int, ...], float]] = field(
        default_factory=dict)
    gauges: dict[tuple[str, ...], float] = field(default_factory=dict)
    servers: tuple[ServerReport, ...] = ()


def snapshot(counters: Counters, gauges: dict[tuple[str, ...], float],
             servers: tuple[ServerReport, ...]) -> WorkerStats:
    """Freeze ``counters`` (copies, so the worker goes on counting) with the present gauges."""
    return WorkerStats(
        counters=dict(counters.values),
        histograms={key: (tuple(h.counts), h.total) for key, h in counters.histograms.items()},
        gauges=gauges, servers=servers)
