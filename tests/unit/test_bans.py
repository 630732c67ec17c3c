"""Automatic bans (offload.security.bans), driven by a fake clock: plain floats.

Properties checked with hypothesis: the jail agrees with a brute-force model that keeps every
event (exact sliding window, bans ending exactly at ``until``, events during a ban ignored);
memory stays bounded under address spraying; allow-listed addresses are never banned; unban
always lifts a ban.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offload.security.bans import BAN_EVENTS, Ban, BanEvent, Jail, JailConfig

A = "192.0.2.1"
B = "192.0.2.2"
C = "192.0.2.3"


def jail(**overrides: object) -> Jail:
    settings_: dict[str, object] = {"threshold": 3, "window": 10.0, "ban_time": 100.0}
    settings_.update(overrides)
    return Jail(JailConfig(**settings_))  # type: ignore[arg-type]


def test_threshold_within_window_bans() -> None:
    cell = jail()
    assert cell.record(A, "handshake_failure", 0.0) is None
    assert cell.record(A, "handshake_failure", 1.0) is None
    assert cell.is_banned(A, 1.0) is None
    ban = cell.record(A, "handshake_failure", 2.0)
    assert ban == Ban(client=A, reason="handshake_failure", since=2.0, until=102.0, count=3,
                      events=(("handshake_failure", 3),))
    assert cell.is_banned(A, 2.0) == ban
    assert cell.is_banned(B, 2.0) is None
    assert cell.bans(50.0) == [ban]
    assert cell.tracked == 0  # the window is cleared by the ban


def test_window_is_exact_and_half_open() -> None:
    cell = jail()
    assert cell.record(A, "rule_denied", 0.0) is None
    assert cell.record(A, "rule_denied", 5.0) is None
    assert cell.record(A, "rule_denied", 10.0) is None  # the event at 0.0 is 10 s old: gone
    assert cell.is_banned(A, 10.0) is None
    ban = cell.record(A, "rule_denied", 14.5)  # 5.0, 10.0 and 14.5 are within 10 s
    assert ban is not None
    assert ban.since == 14.5


def test_ban_ends_exactly_at_until() -> None:
    cell = jail(threshold=1, ban_time=30.0)
    ban = cell.record(A, "limit_hit", 5.0)
    assert ban is not None
    assert ban.until == 35.0
    assert cell.is_banned(A, math.nextafter(35.0, 0.0)) == ban
    assert ban.active(math.nextafter(35.0, 0.0))
    assert not ban.active(35.0)
    assert cell.is_banned(A, 35.0) is None
    assert cell.bans(35.0) == []


def test_events_during_a_ban_are_ignored_and_counting_restarts_after() -> None:
    cell = jail()
    for when in (0.0, 1.0):
        cell.record(A, "backend_auth_failure", when)
    ban = cell.record(A, "backend_auth_failure", 2.0)
    assert ban is not None
    for when in (3.0, 4.0, 101.0):
        assert cell.record(A, "backend_auth_failure", when) is None
    assert cell.is_banned(A, 101.9) == ban  # not extended
    assert cell.record(A, "backend_auth_failure", 102.0) is None
    assert cell.record(A, "backend_auth_failure", 103.0) is None
    assert cell.is_banned(A, 103.0) is None  # two events since the ban ended, not five
    second = cell.record(A, "backend_auth_failure", 104.0)
    assert second is not None
    assert second.since == 104.0


def test_only_configured_events_count() -> None:
    cell = jail(events=frozenset({"handshake_failure"}))
    for step in range(10):
        assert cell.record(A, "rule_denied", float(step)) is None
    assert cell.tracked == 0
    cell.record(A, "handshake_failure", 10.0)
    cell.record(A, "handshake_failure", 10.0)
    assert cell.record(A, "handshake_failure", 10.0) is not None


def test_unknown_event_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown ban event"):
        jail().record(A, "sneezed", 0.0)  # type: ignore[arg-type]


def test_reason_is_the_most_frequent_event_then_the_latest() -> None:
    cell = jail()
    cell.record(A, "limit_hit", 0.0)
    cell.record(A, "handshake_failure", 1.0)
    ban = cell.record(A, "limit_hit", 2.0)
    assert ban is not None
    assert ban.reason == "limit_hit"
    assert ban.events == (("limit_hit", 2), ("handshake_failure", 1))
    tie = jail(threshold=2)
    tie.record(B, "handshake_failure", 0.0)
    tied = tie.record(B, "rule_denied", 1.0)
    assert tied is not None
    assert tied.reason == "rule_denied"
    assert tied.events == (("rule_denied", 1), ("handshake_failure", 1))


def test_ipv6_clients_are_counted_and_banned_by_64() -> None:
    cell = jail()
    cell.record("2001:db8:1:2::1", "handshake_failure", 0.0)
    cell.record("2001:db8:1:2::2", "handshake_failure", 0.0)
    ban = cell.record("2001:db8:1:2:ffff::9", "handshake_failure", 0.0)
    assert ban is not None
    assert ban.client == "2001:db8:1:2::/64"
    assert cell.is_banned("2001:db8:1:2:abcd::1", 1.0) == ban
    assert cell.is_banned("2001:db8:1:3::1", 1.0) is None


def test_ipv4_mapped_addresses_are_the_ipv4_client() -> None:
    cell = jail(threshold=2)
    cell.record("::ffff:192.0.2.1", "limit_hit", 0.0)
    ban = cell.record(A, "limit_hit", 0.0)
    assert ban is not None
    assert cell.is_banned("::ffff:192.0.2.1", 0.0) == ban


def test_allow_list_is_never_counted_or_banned() -> None:
    cell = jail(threshold=1, allow=("198.51.100.0/24", "2001:db8:1:2::7"))
    assert cell.is_allowed("198.51.100.200")
    assert not cell.is_allowed(A)
    assert cell.record("198.51.100.9", "handshake_failure", 0.0) is None
    assert cell.tracked == 0
    assert cell.is_banned("198.51.100.9", 0.0) is None
    # a neighbour gets the whole /64 banned; the allow-listed address in it still gets in
    ban = cell.record("2001:db8:1:2::8", "handshake_failure", 0.0)
    assert ban is not None
    assert cell.is_banned("2001:db8:1:2::9", 0.0) == ban
    assert cell.is_banned("2001:db8:1:2::7", 0.0) is None


def test_unban_by_address_or_key_and_counting_restarts() -> None:
    cell = jail(threshold=2)
    cell.record("2001:db8::1", "limit_hit", 0.0)
    assert cell.record("2001:db8::1", "limit_hit", 0.0) is not None
    assert cell.unban("2001:db8::/64")
    assert not cell.unban("2001:db8::/64")
    assert cell.is_banned("2001:db8::1", 1.0) is None
    cell.record(A, "limit_hit", 0.0)
    assert cell.record(A, "limit_hit", 0.0) is not None
    assert cell.unban(A)
    assert cell.bans(1.0) == []
    cell.record(B, "limit_hit", 0.0)
    assert not cell.unban(B)  # nothing to lift, but the count is forgotten
    assert cell.record(B, "limit_hit", 1.0) is None
    with pytest.raises(ValueError):
        cell.unban("not an address")


def test_counting_table_forgets_finished_windows_first() -> None:
    cell = jail(threshold=2, max_tracked=2)
    cell.record(A, "limit_hit", 0.0)
    cell.record(B, "limit_hit", 5.0)
    cell.record(C, "limit_hit", 10.0)  # full: A's only event is 10 s old, so A goes
    assert cell.tracked == 2
    assert cell.record(B, "limit_hit", 11.0) is not None  # B kept its count


def test_counting_table_forgets_the_least_recently_counted_otherwise() -> None:
    cell = jail(threshold=2, max_tracked=2)
    cell.record(A, "limit_hit", 0.0)
    cell.record(B, "limit_hit", 1.0)
    cell.record(C, "limit_hit", 2.0)
    assert cell.tracked == 2
    assert cell.record(A, "limit_hit", 3.0) is None  # A's count was lost (B is evicted now)
    assert cell.record(C, "limit_hit", 3.0) is not None


def test_ban_table_forgets_expired_bans_then_the_oldest() -> None:
    cell = jail(threshold=1, max_bans=2, ban_time=10.0)
    cell.record(A, "limit_hit", 0.0)
    cell.record(B, "limit_hit", 5.0)
    cell.record(C, "limit_hit", 10.0)  # A's ban has ended
    assert [ban.client for ban in cell.bans(10.0)] == [B, C]
    cell.record(A, "limit_hit", 11.0)  # no ban has ended: B's, the nearest to its end, goes
    assert [ban.client for ban in cell.bans(11.0)] == [C, A]


def test_prune_forgets_finished_windows_and_bans() -> None:
    cell = jail(threshold=2, ban_time=10.0)
    cell.record(A, "limit_hit", 0.0)
    cell.record(B, "limit_hit", 0.0)
    cell.record(B, "limit_hit", 0.0)
    cell.record(C, "limit_hit", 5.0)
    cell.prune(10.0)
    assert cell.tracked == 1
    assert cell.bans(9.0) == []  # already forgotten by prune(10.0)


@pytest.mark.parametrize("make", [
    lambda: JailConfig(threshold=0),
    lambda: JailConfig(window=0.0),
    lambda: JailConfig(ban_time=-1.0),
    lambda: JailConfig(max_tracked=0),
    lambda: JailConfig(max_bans=0),
    lambda: JailConfig(events=frozenset({"nope"})),  # type: ignore[arg-type]
    lambda: JailConfig(v4_prefix=33),
    lambda: Jail(JailConfig(allow=("10.0.0.1/8",))),  # host bits set: a typo, not a network
    lambda: Jail(JailConfig(allow=("not a network",))),
])
def test_config_is_validated(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()


# ------------------------------------------------------------------------------------ properties

EVENTS = st.sampled_from(BAN_EVENTS)


class Model:
    """Every event kept; the rules of the module docstring, written out plainly."""

    def __init__(self, threshold: int, window: float, ban_time: float,
                 counted: frozenset[BanEvent]) -> None:
        self.threshold, self.window, self.ban_time, self.counted = (
            threshold, window, ban_time, counted)
        self.events: dict[str, list[float]] = {}
        self.until: dict[str, float] = {}

    def record(self, client: str, event: BanEvent, now: float) -> float | None:
        if event not in self.counted or now < self.until.get(client, -math.inf):
            return None
        times = [t for t in self.events.get(client, []) if now - t < self.window] + [now]
        if len(times) < self.threshold:
            self.events[client] = times
            return None
        self.events[client] = []
        self.until.pop(client, None)  # the newest ban last, as bans() lists them on a tie
        self.until[client] = now + self.ban_time
        return self.until[client]

    def banned(self, client: str, now: float) -> bool:
        return now < self.until.get(client, -math.inf)


@settings(max_examples=300)
@given(threshold=st.integers(1, 4), window=st.floats(0.5, 10.0), ban_time=st.floats(0.5, 20.0),
       counted=st.frozensets(EVENTS, min_size=1),
       steps=st.lists(st.tuples(st.integers(0, 3), EVENTS, st.floats(0.0, 3.0)), max_size=80))
def test_jail_matches_a_model_that_keeps_every_event(
        threshold: int, window: float, ban_time: float, counted: frozenset[BanEvent],
        steps: list[tuple[int, BanEvent, float]]) -> None:
    cell = Jail(JailConfig(threshold=threshold, window=window, ban_time=ban_time,
                           events=counted))
    model = Model(threshold, window, ban_time, counted)
    now = 0.0
    for number, event, gap in steps:
        now += gap
        client = f"203.0.113.{number}"
        ban = cell.record(client, event, now)
        until = model.record(client, event, now)
        assert (ban.until if ban else None) == until
        for other in range(4):
            address = f"203.0.113.{other}"
            found = cell.is_banned(address, now)
            assert (found is not None) == model.banned(address, now)
        assert [b.client for b in cell.bans(now)] == sorted(
            (c for c in model.until if model.banned(c, now)), key=lambda c: model.until[c])


@settings(max_examples=200)
@given(max_tracked=st.integers(1, 6), max_bans=st.integers(1, 4),
       steps=st.lists(st.tuples(st.integers(0, 2**32 - 1), EVENTS, st.floats(0.0, 1.0)),
                      max_size=200))
def test_memory_stays_bounded_under_address_spraying(
        max_tracked: int, max_bans: int, steps: list[tuple[int, BanEvent, float]]) -> None:
    cell = Jail(JailConfig(threshold=2, window=30.0, ban_time=60.0, max_tracked=max_tracked,
                           max_bans=max_bans))
    now = 0.0
    for number, event, gap in steps:
        now += gap
        ban = cell.record(str(IPv4Address(number)), event, now)
        assert cell.tracked <= max_tracked
        assert len(cell.bans(now)) <= max_bans
        if ban is not None:
            assert cell.is_banned(str(IPv4Address(number)), now) == ban  # a new ban is kept


@settings(max_examples=200)
@given(hosts=st.lists(st.tuples(st.integers(0, 255), EVENTS, st.floats(0.0, 1.0)),
                      max_size=100))
def test_allow_listed_addresses_are_never_banned(hosts: list[tuple[int, BanEvent, float]]) -> None:
    cell = Jail(JailConfig(threshold=1, allow=("198.51.100.0/24",), v4_prefix=16))
    now = 0.0
    for host, event, gap in hosts:
        now += gap
        assert cell.record(f"198.51.100.{host}", event, now) is None
        # a neighbour outside the allow-list bans the whole /16 ...
        assert cell.record(f"198.51.{host}.1", event, now) is not None or host == 100
        # ... but never the allow-listed addresses in it
        assert cell.is_banned(f"198.51.100.{host}", now) is None
        cell.unban("198.51.0.0/16")


@settings(max_examples=200)
@given(steps=st.lists(st.tuples(st.integers(0, 3), EVENTS, st.floats(0.0, 1.0)), min_size=1,
                      max_size=50))
def test_unban_always_lifts_the_ban(steps: list[tuple[int, BanEvent, float]]) -> None:
    cell = Jail(JailConfig(threshold=2, window=5.0, ban_time=50.0))
    now = 0.0
    for number, event, gap in steps:
        now += gap
        cell.record(f"2001:db8:{number}::1", event, now)
    for number in range(4):
        was_banned = cell.is_banned(f"2001:db8:{number}::1", now) is not None
        assert cell.unban(f"2001:db8:{number}::2") == was_banned
        assert cell.is_banned(f"2001:db8:{number}::1", now) is None
    assert cell.bans(now) == []
