"""Per-worker event counters: what happened, by kind and reason.

Plain counters keyed by short, low-cardinality tuples (``("handshake_failed", "timeout")``);
the metrics endpoint exports them, tests and logs read them.
"""

from __future__ import annotations

from collections import Counter


class Counters:
    """Event counts of one worker process."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: Counter[tuple[str, ...]] = Counter()

    def inc(self, *key: str, amount: int = 1) -> None:
        """Add ``amount`` to the counter named by ``key``."""
        self.values[key] += amount

    def get(self, *key: str) -> int:
        """The current count for ``key``."""
        return self.values[key]
