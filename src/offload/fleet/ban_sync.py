"""Fleet bans (sans-IO): a ban as it is stored in Redis, and how a node merges what the fleet
says into its own jail.

Theory of operation. Offences are counted twice: by the node's own jail (so bans keep working
when Redis is away) and by the fleet's counter in Redis (a Lua script: one sliding window per
client over every node's offences). A ban decided by either is written to the fleet's ban hash
and announced on the fleet's channel; every node imposes announced bans at once and, every
couple of seconds, pulls the whole hash to catch what it missed (a dropped subscription, a
failover, a restart: bans live in Redis, so they survive a node's restart).

    source of news             effect on the node
    announce "ban" (record)    impose it unless a ban at least as long already holds
    announce "unban" (key)     lift it, if the fleet had imposed it or it was local
    full pull (every record)   impose the missing; lift the bans the fleet imposed earlier
                               and no longer lists (an unban announced while we were away)

Bans the node decided on its own while Redis was away are pushed when it comes back, before
the next full pull could lift them. Times are Unix time in Redis and monotonic time inside a
node; records from Redis are parsed defensively (a malformed one is skipped).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from offload.security.bans import BAN_EVENTS, Ban, BanEvent, Jail

MAX_FLEET_BANS = 65536
"""Records a full pull reads at most (the jail's own bound)."""
PUSH_GRACE = 10.0
"""Seconds a ban this node pushed is kept though a full pull does not list it yet (the pull
may have been read before the push was written)."""


@dataclass(frozen=True)
class FleetBan:
    """A ban as the fleet stores it: the client key, why, Unix times, and the node that
    decided it."""

    client: str
    reason: BanEvent
    since: float
    until: float
    count: int
    node: str

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    def to_jail(self, mono_now: float, wall_now: float) -> Ban:
        """As a jail's :class:`Ban`, on the monotonic clock."""
        return Ban(client=self.client, reason=self.reason,
                   since=mono_now - (wall_now - self.since),
                   until=mono_now + (self.until - wall_now), count=self.count,
                   events=((self.reason, self.count),))

    @classmethod
    def from_jail(cls, ban: Ban, mono_now: float, wall_now: float, node: str) -> FleetBan:
        return cls(ban.client, ban.reason, wall_now - (mono_now - ban.since),
                   wall_now + (ban.until - mono_now), ban.count, node)


MAX_RECORD_SIZE = 1024
"""Bytes a ban record may take (a real one is about 150): a longer one is refused unparsed."""
CLOCK_SLACK = 300.0
"""Seconds a fleet ban may end later than this node's own ``ban_time`` would (clocks differ)."""


def decode_ban(data: bytes | str) -> FleetBan | None:
    """A ban record from Redis, or None when it is malformed: not JSON of the expected shape,
    too long, times that are not finite, a count below zero. Never raises (a record written
    by anyone with access to Redis must not end the fleet process)."""
    if len(data) > MAX_RECORD_SIZE:
        return None
    try:
        raw = json.loads(data)
        reason = str(raw["reason"])
        if reason not in BAN_EVENTS:
            return None
        ban = FleetBan(client=str(raw["client"])[:64], reason=BAN_EVENTS[
            BAN_EVENTS.index(reason)], since=float(raw["since"]), until=float(raw["until"]),
            count=int(raw["count"]), node=str(raw.get("node", ""))[:128])
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError):
        return None
    if (not ban.client or not math.isfinite(ban.since) or not math.isfinite(ban.until)
            or ban.count < 0 or ban.count > 1_000_000_000):
        return None
    return ban


def overlong(ban: FleetBan, wall_now: float, ban_time: float) -> bool:
    """Whether ``ban`` lasts longer than any ban this node would decide (its ``ban_time``,
    give or take :data:`CLOCK_SLACK`): a record with an absurd end (a year, ``1e308``) is
    refused rather than held as a permanent ban."""
    return ban.until - wall_now > ban_time + CLOCK_SLACK


def fleet_offences(jail: Jail, reports: tuple[tuple[str, BanEvent, int], ...], now: float
                   ) -> tuple[tuple[str, BanEvent, int], ...]:
    """Workers' offences as the fleet counts them: under the jail's client keys (an IPv6
    client by its /64); allow-listed clients, events the jail does not count, clients that are
    no IP address, and clients the jail holds banned left out (the offences that banned them
    are spent: the ban itself goes to the fleet, and counting them again would ban the client
    anew after an operator lifts the ban)."""
    counted: list[tuple[str, BanEvent, int]] = []
    for address, event, count in reports:
        try:
            if (event not in jail.config.events or jail.is_allowed(address)
                    or jail.is_banned(address, now) is not None):
                continue
            counted.append((jail.client_key(address), event, count))
        except ValueError:
            continue
    return tuple(counted)


@dataclass(frozen=True)
class Merge:
    """What the node must do to its jail."""

    impose: tuple[FleetBan, ...] = ()
    lift: tuple[str, ...] = ()


class FleetBook:
    """The bans the fleet imposed on this node, by client key, with their end (Unix time)."""

    def __init__(self) -> None:
        self.imposed: dict[str, float] = {}
        self._pushed: dict[str, float] = {}

    def merge(self, records: list[FleetBan], wall_now: float, *, full: bool) -> Merge:
        """Fold announced (``full=False``) or pulled (``full=True``) records in."""
        impose: list[FleetBan] = []
        listed: set[str] = set()
        for record in records[:MAX_FLEET_BANS]:
            if record.until <= wall_now:
                continue
            listed.add(record.client)
            known = self.imposed.get(record.client)
            if known is not None and known >= record.until:
                continue
            self.imposed[record.client] = record.until
            impose.append(record)
        lift: list[str] = []
        for key, until in list(self.imposed.items()):
            if until <= wall_now:
                del self.imposed[key]
            elif (full and key not in listed
                  and wall_now - self._pushed.get(key, 0.0) >= PUSH_GRACE):
                del self.imposed[key]
                lift.append(key)
        self._pushed = {k: t for k, t in self._pushed.items() if wall_now - t < PUSH_GRACE}
        return Merge(tuple(impose), tuple(lift))

    def unbanned(self, key: str) -> bool:
        """The fleet lifted ``key``; whether the node held it from the fleet."""
        self._pushed.pop(key, None)
        return self.imposed.pop(key, None) is not None

    def own(self, ban: FleetBan, wall_now: float) -> None:
        """A ban this node decided and is pushing: the fleet lists it from now on."""
        self.imposed[ban.client] = max(ban.until, self.imposed.get(ban.client, 0.0))
        self._pushed[ban.client] = wall_now
