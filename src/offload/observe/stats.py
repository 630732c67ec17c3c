"""Per-worker event counters and duration histograms: what happened, by kind and reason.

Plain counters keyed by short, low-cardinality tuples (``("handshake_failed", "web",
"timeout")``); the first element names the metric (see :mod:`offload.observe.metrics`), the rest
are its label values. Updating one is a dict increment, cheap enough for every request; the
supervisor asks each worker for a snapshot (:mod:`offload.observe.snapshot`) when ``/metrics``
is scraped.
"""

from __future__ import annotations

from collections import Counter
from typing import Final

LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Upper bounds (seconds) of the duration histograms: handshakes, requests, backend answers.
(Typed as a tuple of any length: compiled, a fixed-length tuple is a C struct that is turned
into a new tuple of 15 new floats each time it is iterated or passed on.)"""


class Histogram:
    """Counts of observations per bucket (the last one is ``+Inf``) and their sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left, written out: compiled, a scan comparing unboxed floats costs less than
        # the call to bisect (which boxes the value and compares objects), and durations are
        # short, so the scan stops within the first few bounds.
        index = 0
        for bound in LATENCY_BUCKETS:
            if not bound < value:
                break
            index += 1
        self.counts[index] += 1
        self.total += value


class Counters:
    """Event counts and duration histograms of one worker process."""

    __slots__ = ("histograms", "values")

    def __init__(self) -> None:
        self.values: Counter[tuple[str, ...]] = Counter()
        self.histograms: dict[tuple[str, ...], Histogram] = {}

    def inc(self, *key: str, amount: int = 1) -> None:
        """Add ``amount`` to the counter named by ``key``."""
        self.values[key] += amount

    def get(self, *key: str) -> int:
        """The current count for ``key``."""
        return self.values[key]

    def observe(self, value: float, *key: str) -> None:
        """Record a duration (seconds) in the histogram named by ``key``."""
        histogram = self.histograms.get(key)
        if histogram is None:
            histogram = self.histograms[key] = Histogram()
        histogram.observe(value)
