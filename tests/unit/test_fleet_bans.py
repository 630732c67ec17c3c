"""Fleet bans without sockets: records from Redis parsed defensively, announcements and full
pulls merged into a node's book, and the jail imposing bans decided elsewhere."""

from __future__ import annotations

import time

from offload.fleet.ban_sync import (
    CLOCK_SLACK,
    PUSH_GRACE,
    FleetBan,
    FleetBook,
    decode_ban,
    fleet_offences,
    overlong,
)
from offload.security.bans import Jail, JailConfig


def record(client: str, until: float, since: float = 0.0) -> FleetBan:
    return FleetBan(client, "rule_denied", since, until, 3, "node-a")


def test_records_round_trip_and_malformed_ones_are_skipped() -> None:
    ban = record("198.51.100.7", 500.0)
    assert decode_ban(ban.encode()) == ban
    for bad in [b"", b"[]", b'{"client": "x"}', b'{"client": "x", "reason": "sneeze", '
                b'"since": 1, "until": 2, "count": 1}', b'{"client": "", "reason": '
                b'"rule_denied", "since": 1, "until": 2, "count": 1}',
                b'{"client": "x", "reason": "rule_denied", "since": 1, "until": NaN, '
                b'"count": 1}']:
        assert decode_ban(bad) is None, bad


def test_hostile_records_are_refused_without_raising() -> None:
    """Anyone who can write to Redis or publish on the channel: no exception, ever."""
    head = b'{"client": "x", "reason": "rule_denied", "since": 1, '
    for bad in [head + b'"until": 2, "count": 1e999}', head + b'"until": 2, "count": -1}',
                head + b'"until": 2, "count": 1e12}', head + b'"until": Infinity, "count": 1}',
                head + b'"until": 1e999, "count": 1}', head + b'"until": ' + b"9" * 400
                + b', "count": 1}', b"[" * 100_000, b'"a string"', b"\xff\xfe",
                head + b'"until": 2, "count": 1, "node": "' + b"n" * 2000 + b'"}']:
        assert decode_ban(bad) is None, bad[:60]


def test_a_ban_longer_than_this_node_would_decide_is_overlong() -> None:
    assert not overlong(record("a", 1000.0 + 600.0), 1000.0, 600.0)
    assert not overlong(record("a", 1000.0 + 600.0 + CLOCK_SLACK), 1000.0, 600.0)
    assert overlong(record("a", 1000.0 + 10 * 365 * 86400.0), 1000.0, 600.0)
    assert overlong(record("a", 1e308), 1000.0, 600.0)


def test_announcements_impose_once_and_full_pulls_lift_what_the_fleet_dropped() -> None:
    book = FleetBook()
    first = book.merge([record("a", 200.0)], 100.0, full=False)
    assert [r.client for r in first.impose] == ["a"]
    assert book.merge([record("a", 200.0)], 101.0, full=False).impose == ()
    longer = book.merge([record("a", 300.0)], 102.0, full=True)
    assert [r.until for r in longer.impose] == [300.0]
    assert book.merge([record("old", 50.0)], 103.0, full=False).impose == ()  # over
    gone = book.merge([], 104.0, full=True)  # unbanned on another node while we were away
    assert gone.lift == ("a",)


def test_a_ban_just_pushed_survives_a_pull_read_before_the_push() -> None:
    book = FleetBook()
    book.own(record("b", 900.0), 100.0)
    assert book.merge([], 101.0, full=True).lift == ()
    assert book.merge([], 100.0 + PUSH_GRACE, full=True).lift == ("b",)


def test_jail_imposes_fleet_bans_but_never_whole_ranges_or_allowed_clients() -> None:
    jail = Jail(JailConfig(threshold=3, allow=("192.0.2.0/24",)))
    ban = record("198.51.100.7", 0).to_jail(mono_now=1000.0, wall_now=0.0)
    longer = FleetBan("198.51.100.7", "rule_denied", 0.0, 600.0, 3, "n").to_jail(1000.0, 0.0)
    assert jail.impose(ban, 1000.0) is None  # over already (until == now)
    imposed = jail.impose(longer, 1000.0)
    assert imposed is not None and jail.is_banned("198.51.100.7", 1001.0) is not None
    assert jail.impose(longer, 1001.0) is None  # held already, as long
    for wide in ["0.0.0.0/0", "2001:db8::/32", "192.0.2.9"]:
        attempt = FleetBan(wide, "rule_denied", 0.0, 600.0, 3, "n").to_jail(1000.0, 0.0)
        assert jail.impose(attempt, 1000.0) is None, wide
    assert jail.is_banned("203.0.113.1", 1001.0) is None
    six = FleetBan("2001:db8:1:2::/64", "limit_hit", 0.0, 60.0, 3, "n").to_jail(10.0, 0.0)
    assert jail.impose(six, 10.0) is not None
    assert jail.is_banned("2001:db8:1:2::99", 11.0) is not None


def test_times_move_between_clocks() -> None:
    fleet = FleetBan("x", "limit_hit", 90.0, 700.0, 4, "n")
    ban = fleet.to_jail(mono_now=50.0, wall_now=100.0)
    assert (ban.since, ban.until) == (40.0, 650.0)
    back = FleetBan.from_jail(ban, 50.0, 100.0, "n")
    assert (back.since, back.until) == (90.0, 700.0)


def test_fleet_counts_offences_by_client_key_and_never_those_that_banned_locally() -> None:
    jail = Jail(JailConfig(threshold=2, events=frozenset({"rule_denied", "limit_hit"}),
                           allow=("192.0.2.0/24",)))
    assert jail.record("203.0.113.9", "rule_denied", 1.0) is None
    assert jail.record("203.0.113.9", "rule_denied", 1.0) is not None  # banned here
    reports = (("203.0.113.9", "rule_denied", 2), ("2001:db8:1:2::a", "rule_denied", 1),
               ("192.0.2.7", "rule_denied", 5), ("198.51.100.1", "handshake_failure", 1),
               ("unix-peer", "limit_hit", 1), ("198.51.100.2", "limit_hit", 3))
    assert fleet_offences(jail, reports, 2.0) == (("2001:db8:1:2::/64", "rule_denied", 1),
                                                  ("198.51.100.2", "limit_hit", 3))


def test_ban_relay_tells_the_fleet_after_its_jail_has_counted() -> None:
    from offload.config.model import BansConfig
    from offload.server.ban_relay import BanRelay
    from offload.server.control import Offences

    relay = BanRelay(BansConfig(threshold=2), lambda message: None)
    seen: list[tuple[str, bool]] = []

    class Fleet:
        def offences(self, message: Offences) -> None:
            assert relay.hub is not None
            for address, _, _ in message.reports:
                banned = relay.hub.jail.is_banned(address, time.monotonic()) is not None
                seen.append((address, banned))

        def banned(self, bans: list) -> None:
            seen.append(("banned", True))

        def unbanned(self, key: str, who: str) -> None:
            seen.append(("unbanned " + key, True))

    relay.fleet = Fleet()
    relay.offences(Offences((("203.0.113.9", "rule_denied", 2),)))
    assert seen[0] == ("203.0.113.9", True), "the fleet heard of offences before the jail banned"
    assert ("banned", True) in seen
    assert relay.unban("203.0.113.9", "test") is None
    assert seen[-1] == ("unbanned 203.0.113.9", True)
