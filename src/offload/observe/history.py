"""The last minutes of traffic as small time series, for the status page (sans-IO).

When something went wrong, an operator opening the status page wants to see what the last
minutes looked like, not only the rates from the moment the page was opened. The supervisor
collects fresh worker statistics every :data:`SAMPLE_INTERVAL` seconds and hands them to
:meth:`History.record`; each sample holds, for the interval since the previous collection:

* all requests: rate, and p50/p99 of the total request time (request head in to end of response
  out);
* per backend: rate, and p50/p99 of the backend's response time (request sent to response head);
* per server: rate of final responses, error rate (its 5xx answers plus connect failures,
  timeouts, resets and malformed responses, each also on its own), p50/p99 response time, and
  the requests waiting for its response head with the age of the oldest — a server that accepts
  and never answers shows here long before a health check gives up on it.

Only the previous collection's cumulative counts are kept to difference against, and at most
:data:`SAMPLES` samples of a few numbers per backend and server: memory is bounded by the
configuration, not by traffic. Percentiles are read from the duration histograms' buckets with
linear interpolation inside a bucket, as Prometheus' ``histogram_quantile`` does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from offload.observe.metrics import Merged, server_views
from offload.observe.stats import LATENCY_BUCKETS

SAMPLE_INTERVAL = 10.0
"""Seconds between samples."""
SAMPLES = 60
"""Samples kept: ten minutes."""
FAILURE_REASONS = ("connect_failed", "timeout", "reset", "bad_response")
ServerKey = tuple[str, str]


def quantile(q: float, counts: Sequence[int], bounds: Sequence[float] = LATENCY_BUCKETS
             ) -> float | None:
    """The ``q`` quantile (0..1) of observations counted per bucket (the last one ``+Inf``);
    None without observations; the largest finite bound when it falls in the ``+Inf`` bucket."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    below = 0
    for index, count in enumerate(counts):
        if count > 0 and below + count >= rank:
            if index >= len(bounds):
                return bounds[-1]
            lower = bounds[index - 1] if index else 0.0
            return lower + (bounds[index] - lower) * max(0.0, rank - below) / count
        below += count
    return bounds[-1]


@dataclass(frozen=True)
class Figures:
    """One interval of one series: events per second and duration percentiles (seconds)."""

    rate: float
    p50: float | None
    p99: float | None


@dataclass(frozen=True)
class ServerFigures(Figures):
    errors: float
    """Per second: 5xx answers and failures."""
    kinds: dict[str, float]
    """Per second, by kind: ``5xx`` and each of :data:`FAILURE_REASONS` that happened."""
    waiting: int
    oldest_wait: float


@dataclass(frozen=True)
class Sample:
    wall: float
    """Unix time at the end of the interval."""
    seconds: float
    total: Figures
    backends: dict[str, Figures]
    servers: dict[ServerKey, ServerFigures]


@dataclass
class _Totals:
    """The cumulative counts one collection saw, to difference the next one against."""

    when: float
    requests: int = 0
    request_buckets: list[int] = field(default_factory=list)
    backend_requests: dict[str, int] = field(default_factory=dict)
    backend_buckets: dict[str, list[int]] = field(default_factory=dict)
    server_counts: dict[tuple[str, str, str], int] = field(default_factory=dict)
    """(backend, server, status class or failure reason) -> count."""
    server_buckets: dict[ServerKey, list[int]] = field(default_factory=dict)


def _buckets(merged: Merged, name: str, width: int) -> dict[tuple[str, ...], list[int]]:
    """The bucket counts of histogram ``name``, keyed by the first ``width`` labels (summed)."""
    out: dict[tuple[str, ...], list[int]] = {}
    for key, (counts, _) in merged.histograms.items():
        if key[0] != name or len(key) < width + 1:
            continue
        labels = key[1:width + 1]
        mine = out.get(labels)
        out[labels] = list(counts) if mine is None else [a + b for a, b in zip(mine, counts,
                                                                                strict=True)]
    return out


def _totals(merged: Merged, when: float) -> _Totals:
    totals = _Totals(when)
    for key, count in merged.counters.items():
        if key[0] == "requests" and len(key) == 4:
            totals.requests += count
            totals.backend_requests[key[2]] = totals.backend_requests.get(key[2], 0) + count
        elif key[0] in ("server_responses", "server_failures") and len(key) == 4:
            kind = key[3] if key[0] == "server_failures" else f"status:{key[3]}"
            name = (key[1], key[2], kind)
            totals.server_counts[name] = totals.server_counts.get(name, 0) + count
    requests = _buckets(merged, "request_seconds", 0)
    totals.request_buckets = requests.get((), [])
    totals.backend_buckets = {labels[0]: counts for labels, counts in
                              _buckets(merged, "backend_response_seconds", 1).items()}
    totals.server_buckets = {(labels[0], labels[1]): counts for labels, counts in
                             _buckets(merged, "server_response_seconds", 2).items()}
    return totals


def _delta(now: Sequence[int], before: Sequence[int] | None) -> list[int]:
    """Bucket counts of the interval (never negative: a count that went down tells nothing)."""
    if before is None or len(before) != len(now):
        return list(now)
    return [max(0, a - b) for a, b in zip(now, before, strict=True)]


def _figures(count: int, seconds: float, buckets: Sequence[int]) -> Figures:
    return Figures(max(0, count) / seconds, quantile(0.5, buckets), quantile(0.99, buckets))


class History:
    """A ring of :class:`Sample` fed by periodic collections."""

    def __init__(self, interval: float = SAMPLE_INTERVAL, length: int = SAMPLES) -> None:
        self.interval = interval
        self.samples: deque[Sample] = deque(maxlen=length)
        self._last: _Totals | None = None

    def record(self, now: float, wall: float, merged: Merged) -> Sample | None:
        """Add the interval since the previous call (``now`` monotonic, ``wall`` Unix time);
        the first call only sets the baseline."""
        totals = _totals(merged, now)
        last, self._last = self._last, totals
        if last is None or now - last.when <= 0:
            return None
        seconds = now - last.when
        sample = Sample(
            wall, seconds,
            _figures(totals.requests - last.requests, seconds,
                     _delta(totals.request_buckets, last.request_buckets or None)),
            {backend: _figures(count - last.backend_requests.get(backend, 0), seconds,
                               _delta(totals.backend_buckets.get(backend, []),
                                      last.backend_buckets.get(backend)))
             for backend, count in totals.backend_requests.items()},
            self._servers(merged, totals, last, seconds))
        self.samples.append(sample)
        return sample

    @staticmethod
    def _servers(merged: Merged, totals: _Totals, last: _Totals,
                 seconds: float) -> dict[ServerKey, ServerFigures]:
        out: dict[ServerKey, ServerFigures] = {}
        for view in server_views(merged):
            key = (view.backend, view.server)
            counts = {kind: max(0, count - last.server_counts.get((*key, kind), 0))
                      for (backend, server, kind), count in totals.server_counts.items()
                      if (backend, server) == key}
            responses = sum(n for kind, n in counts.items() if kind.startswith("status:"))
            kinds = {"5xx": counts.get("status:5xx", 0) / seconds}
            kinds.update({reason: counts.get(reason, 0) / seconds for reason in FAILURE_REASONS})
            buckets = _delta(totals.server_buckets.get(key, []), last.server_buckets.get(key))
            out[key] = ServerFigures(
                responses / seconds, quantile(0.5, buckets), quantile(0.99, buckets),
                errors=sum(kinds.values()), kinds={k: v for k, v in kinds.items() if v},
                waiting=view.waiting, oldest_wait=view.oldest_wait)
        return out

    def as_json(self) -> dict[str, object]:
        """Columns of the samples, oldest first: one list per figure, None where a backend or
        server was not there (before a reload added it)."""
        samples = list(self.samples)
        backends = _names(s.backends for s in samples)
        servers = _names(s.servers for s in samples)

        def column(values: Iterable[float | None], digits: int = 4) -> list[float | None]:
            return [None if v is None else round(v, digits) for v in values]

        def series(pick: Iterable[Figures | None]) -> dict[str, list[float | None]]:
            figures = list(pick)
            return {"rate": column(f.rate if f else None for f in figures),
                    "p50": column(f.p50 if f else None for f in figures),
                    "p99": column(f.p99 if f else None for f in figures)}

        def server_series(key: ServerKey) -> dict[str, object]:
            figures = [s.servers.get(key) for s in samples]
            kinds = sorted({kind for f in figures if f for kind in f.kinds})
            return {"backend": key[0], "server": key[1], **series(figures),
                    "errors": column(f.errors if f else None for f in figures),
                    "kinds": {kind: column(f.kinds.get(kind, 0.0) if f else None
                                           for f in figures) for kind in kinds},
                    "waiting": [f.waiting if f else None for f in figures],
                    "oldest_wait": column((f.oldest_wait if f else None for f in figures), 1)}

        return {
            "interval_seconds": self.interval,
            "window_seconds": self.interval * (self.samples.maxlen or 0),
            "time": [round(s.wall, 1) for s in samples],
            "seconds": [round(s.seconds, 2) for s in samples],
            "total": series(s.total for s in samples),
            "backends": {name: series(s.backends.get(name) for s in samples)
                         for name in backends},
            "servers": [server_series(key) for key in servers],
        }


_K = TypeVar("_K")


def _names(maps: Iterable[Mapping[_K, object]]) -> list[_K]:
    """Every key of ``maps``, in the order first seen."""
    seen: dict[_K, None] = {}
    for mapping in maps:
        for key in mapping:
            seen.setdefault(key, None)
    return list(seen)
