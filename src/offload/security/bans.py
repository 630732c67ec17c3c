"""Automatic bans, like fail2ban: too many bad events from one client in a window ban it for a time.

The caller reports events — a failed TLS handshake, a request a rule refused, a 401/403 from
the backend (a login being brute-forced), a per-client limit hit — with :meth:`Jail.record`,
checks new connections with :meth:`Jail.is_banned` before the handshake, and shows and lifts
bans through :meth:`Jail.bans` and :meth:`Jail.unban` (the admin API; the audit log records the
:class:`Ban` that ``record`` returns). Nothing here does I/O or reads a clock: ``now`` is
monotonic seconds (normally ``loop.time()``) and must not go backwards.

Theory of operation, per client key (:func:`~offload.security.buckets.client_key`: the address,
IPv6 by /64)::

    state     call                 effect
    -         record(counted)      the event joins the client's window
    counting  record(counted)      events at least ``window`` seconds old leave the window,
                                   the new one joins; at ``threshold`` events the client is
                                   banned until ``now + ban_time`` and its window is cleared
    banned    record(any)          ignored: the ban is neither extended nor counted towards
    banned    now >= until         not banned any more (noticed by any call); counting
                                   starts again from zero
    any       unban(client)        ban and window forgotten
    -         allow-listed address never counted and never reported banned (even when its
                                   /64 is banned because of a neighbour)

The window is exact: an event counts while ``now - time < window``. It is also bounded: a ban
clears it at ``threshold`` events, so no client holds more than ``threshold - 1`` timestamps.
Memory is bounded by ``max_tracked`` counting clients and ``max_bans`` bans. A full table
first forgets what is already over (windows whose events have all left, expired bans) and
otherwise the oldest entry: the least recently counted client loses its partial count, or the
ban nearest to its end is lifted early. That is the price of a hard bound under address
spraying, and it only ever errs towards not banning.

State is per worker process; sharing bans between workers is the caller's business.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from itertools import islice
from typing import Final, Literal

from offload.security.buckets import EVICTION_SCAN, IPAddress, client_key, parse_address

BanEvent = Literal["handshake_failure", "rule_denied", "backend_auth_failure", "limit_hit"]
BAN_EVENTS: Final[tuple[BanEvent, ...]] = (
    "handshake_failure", "rule_denied", "backend_auth_failure", "limit_hit")
"""Every event a jail can count; its position is the code a window stores it under."""


@dataclass(frozen=True, slots=True)
class JailConfig:
    """``threshold`` counted events within ``window`` seconds ban a client for ``ban_time``.

    ``events`` are the events that count; ``allow`` lists networks (CIDR, or single addresses)
    that are never banned: the health checker, the operator's own network. ``max_tracked`` and
    ``max_bans`` bound memory; ``v4_prefix``/``v6_prefix`` are the prefix lengths clients are
    grouped by.
    """

    threshold: int = 10
    window: float = 60.0
    ban_time: float = 600.0
    events: frozenset[BanEvent] = frozenset(BAN_EVENTS)
    allow: tuple[str, ...] = ()
    max_tracked: int = 65536
    max_bans: int = 65536
    v4_prefix: int = 32
    v6_prefix: int = 64

    def __post_init__(self) -> None:
        if self.threshold < 1 or self.max_tracked < 1 or self.max_bans < 1:
            raise ValueError("threshold, max_tracked and max_bans must be at least 1")
        if not self.window > 0 or not self.ban_time > 0:
            raise ValueError(f"window and ban_time must be above 0, not {self.window} "
                             f"and {self.ban_time}")
        unknown = sorted(set(self.events) - set(BAN_EVENTS))
        if unknown:
            raise ValueError(f"unknown ban events {unknown}; known: {', '.join(BAN_EVENTS)}")
        client_key("0.0.0.0", v4_prefix=self.v4_prefix, v6_prefix=self.v6_prefix)  # validates


@dataclass(frozen=True, slots=True)
class Ban:
    """One ban, as the admin API shows it and the audit log records it.

    ``client`` is the banned key (an address, or a network such as an IPv6 /64); ``events``
    counts the window's events by kind, most frequent first, and ``reason`` is the first of
    them (on a tie, the one seen last); ``count`` is their total.
    """

    client: str
    reason: BanEvent
    since: float
    until: float
    count: int
    events: tuple[tuple[BanEvent, int], ...]

    def active(self, now: float) -> bool:
        """Whether the ban still holds at ``now`` (it ends exactly at ``until``)."""
        return now < self.until


class _Window:
    """A client's counted events, oldest first: times and event codes, compactly."""

    __slots__ = ("kinds", "times")

    def __init__(self) -> None:
        self.times: array[float] = array("d")
        self.kinds = bytearray()

    def drop_old(self, now: float, window: float) -> None:
        """Forget events that are ``window`` seconds old or older at ``now``."""
        times = self.times
        stale = 0
        while stale < len(times) and now - times[stale] >= window:
            stale += 1
        if stale:
            del times[:stale]
            del self.kinds[:stale]

    def summary(self) -> tuple[tuple[BanEvent, int], ...]:
        counts: dict[int, int] = {}
        last: dict[int, int] = {}
        for position, code in enumerate(self.kinds):
            counts[code] = counts.get(code, 0) + 1
            last[code] = position
        ranked = sorted(counts, key=lambda code: (-counts[code], -last[code]))
        return tuple((BAN_EVENTS[code], counts[code]) for code in ranked)


class Jail:
    """Counts bad events per client and bans clients that reach the threshold (see the module
    docstring). Methods take the client's address as the socket reports it."""

    __slots__ = ("_allow", "_bans", "_windows", "config")

    def __init__(self, config: JailConfig) -> None:
        self.config = config
        self._allow: tuple[IPv4Network | IPv6Network, ...] = tuple(
            ip_network(network) for network in config.allow)
        self._windows: dict[str, _Window] = {}  # least recently counted first
        self._bans: dict[str, Ban] = {}  # in the order they were made: nearest end first

    @property
    def tracked(self) -> int:
        """Clients with events in their window (not yet pruned)."""
        return len(self._windows)

    def client_key(self, address: str) -> str:
        """:func:`~offload.security.buckets.client_key` with the configured prefix lengths."""
        return client_key(address, v4_prefix=self.config.v4_prefix,
                          v6_prefix=self.config.v6_prefix)

    def is_allowed(self, address: str) -> bool:
        """Whether ``address`` is on the allow-list (never counted, never banned)."""
        return self._allowed(parse_address(address))

    def _allowed(self, ip: IPAddress) -> bool:
        return any(ip in network for network in self._allow)

    def record(self, address: str, event: BanEvent, now: float) -> Ban | None:
        """Count ``event`` from ``address``; the new :class:`Ban` if this one reached the
        threshold, else ``None`` (also for events the configuration does not count, for
        allow-listed addresses and for clients already banned)."""
        if event not in BAN_EVENTS:
            raise ValueError(f"unknown ban event {event!r}")
        config = self.config
        if event not in config.events or (self._allow and self.is_allowed(address)):
            return None
        key = self.client_key(address)
        ban = self._bans.get(key)
        if ban is not None:
            if ban.active(now):
                return None
            del self._bans[key]
        windows = self._windows
        window = windows.pop(key, None)
        if window is None:
            if len(windows) >= config.max_tracked:
                self._evict_window(now)
            window = _Window()
        window.drop_old(now, config.window)
        window.times.append(now)
        window.kinds.append(BAN_EVENTS.index(event))
        if len(window.times) < config.threshold:
            windows[key] = window  # most recently counted last
            return None
        events = window.summary()
        ban = Ban(client=key, reason=events[0][0], since=now, until=now + config.ban_time,
                  count=len(window.times), events=events)
        self._add_ban(ban, now)
        return ban

    def is_banned(self, address: str, now: float) -> Ban | None:
        """The ban that holds for ``address`` at ``now``, if any. Cheap while nobody is banned."""
        bans = self._bans
        if not bans:
            return None
        key = self.client_key(address)
        ban = bans.get(key)
        if ban is None:
            return None
        if not ban.active(now):
            del bans[key]
            return None
        if self._allow and self.is_allowed(address):
            return None
        return ban

    def bans(self, now: float) -> list[Ban]:
        """The bans holding at ``now``, oldest first; expired ones are forgotten."""
        self._drop_expired(now)
        return list(self._bans.values())

    def impose(self, ban: Ban, now: float) -> Ban | None:
        """Hold a ban decided elsewhere (another node of the fleet): the ban now held under
        the key this jail uses for its client, or None when it is over, the client is
        allow-listed, or a ban lasting at least as long already holds. ``ValueError`` if its
        client is not an address or key."""
        key = self.client_key(ban.client)
        if "/" in key:  # never wider than the jail's own grouping: no ban of whole ranges
            network = ip_network(key, strict=False)
            narrowest = self.config.v4_prefix if network.version == 4 else self.config.v6_prefix
            if network.prefixlen < narrowest:
                return None
        if not ban.active(now) or (self._allow and self.is_allowed(key.split("/")[0])):
            return None
        held = self._bans.get(key)
        if held is not None and held.active(now) and held.until >= ban.until:
            return None
        self._windows.pop(key, None)
        self._bans.pop(key, None)
        imposed = Ban(key, ban.reason, ban.since, ban.until, ban.count, ban.events)
        self._add_ban(imposed, now)
        return imposed

    def unban(self, client: str) -> bool:
        """Lift the ban on ``client`` (an address or a key from :meth:`bans`) and forget its
        count; whether there was a ban to lift. ``ValueError`` if ``client`` is not one."""
        key = self.client_key(client)
        self._windows.pop(key, None)
        return self._bans.pop(key, None) is not None

    def prune(self, now: float) -> None:
        """Forget expired bans and windows whose events have all left (a full scan, for a
        timer: the tables also clean up after themselves when full)."""
        self._drop_expired(now)
        span = self.config.window
        stale = [key for key, window in self._windows.items() if now - window.times[-1] >= span]
        for key in stale:
            del self._windows[key]

    def _drop_expired(self, now: float) -> None:
        expired = [key for key, ban in self._bans.items() if not ban.active(now)]
        for key in expired:
            del self._bans[key]

    def _add_ban(self, ban: Ban, now: float) -> None:
        bans = self._bans
        if len(bans) >= self.config.max_bans:
            expired = [key for key, old in islice(bans.items(), EVICTION_SCAN)
                       if not old.active(now)]
            for key in expired or [next(iter(bans))]:
                del bans[key]
        bans[ban.client] = ban

    def _evict_window(self, now: float) -> None:
        windows = self._windows
        span = self.config.window
        stale = [key for key, window in islice(windows.items(), EVICTION_SCAN)
                 if now - window.times[-1] >= span]
        for key in stale or [next(iter(windows))]:
            del windows[key]


__all__ = ["BAN_EVENTS", "Ban", "BanEvent", "Jail", "JailConfig"]
