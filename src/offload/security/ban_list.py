"""A worker's side of automatic bans (sans-IO): who is banned, and the offences to report.

The supervisor's jail (:mod:`offload.server.ban_hub`) decides bans from every worker's
offences; each worker keeps the resulting :class:`BannedClients` and checks a new connection
against it before any TLS work. With no ban in force the check is one truth test, so an
instance without bans pays nothing per connection.

Offences are batched in an :class:`OffenceBatch`: counted per client and kind, bounded in
size (a flood from sprayed addresses cannot grow it), and sent a few times a second.
"""

from __future__ import annotations

from offload.security.bans import BanEvent
from offload.security.buckets import client_key

MAX_BATCH = 4096
"""Distinct (client, event) pairs one batch holds; more are counted as dropped."""


class BannedClients:
    """Client keys banned until a monotonic time."""

    __slots__ = ("_until", "v4_prefix", "v6_prefix")

    def __init__(self, v4_prefix: int = 32, v6_prefix: int = 64) -> None:
        self._until: dict[str, float] = {}
        self.v4_prefix = v4_prefix
        self.v6_prefix = v6_prefix

    def __len__(self) -> int:
        return len(self._until)

    def update(self, added: tuple[tuple[str, float], ...], removed: tuple[str, ...]) -> None:
        for key in removed:
            self._until.pop(key, None)
        for key, until in added:
            self._until[key] = until

    def banned(self, address: str, now: float) -> bool:
        """Whether connections from ``address`` are refused at ``now``."""
        if not self._until:
            return False
        try:
            key = client_key(address, v4_prefix=self.v4_prefix, v6_prefix=self.v6_prefix)
        except ValueError:
            return False  # a Unix socket peer, say: nothing to ban
        until = self._until.get(key)
        if until is None:
            return False
        if now >= until:
            del self._until[key]
            return False
        return True


class OffenceBatch:
    """Offences waiting to be sent to the supervisor."""

    __slots__ = ("counts", "dropped")

    def __init__(self) -> None:
        self.counts: dict[tuple[str, BanEvent], int] = {}
        self.dropped = 0

    def add(self, client: str, event: BanEvent) -> bool:
        """Count one offence; True if the batch was empty (time to schedule a send)."""
        key = (client, event)
        counts = self.counts
        first = not counts and not self.dropped
        if key in counts:
            counts[key] += 1
        elif len(counts) < MAX_BATCH:
            counts[key] = 1
        else:
            self.dropped += 1
        return first

    def take(self) -> tuple[tuple[tuple[str, BanEvent, int], ...], int]:
        """The batch as (client, event, count) reports and the number dropped; empties it."""
        reports = tuple((client, event, count) for (client, event), count in self.counts.items())
        dropped = self.dropped
        self.counts = {}
        self.dropped = 0
        return reports, dropped
