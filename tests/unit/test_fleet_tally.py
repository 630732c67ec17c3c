"""Fleet rate limits, the sans-IO part: counts in, batches out, the store's answers in,
decisions out; time is a float the test moves."""

from __future__ import annotations

import itertools

import pytest

from offload.fleet.tally import MAX_BATCH, FleetRate, FleetTally, StoreFailure
from offload.security.limits import Limits, LimitsConfig, Rate

KEY = ("web", "per_ip_request_rate", "192.0.2.1")


def tally(*, on_store_failure: StoreFailure = "local", max_keys: int = 65536) -> FleetTally:
    fleet = FleetTally(max_keys=max_keys)
    fleet.add_limit("web", "per_ip_request_rate", FleetRate.of(10, 5), on_store_failure)
    fleet.add_limit("web", "global_request_rate", FleetRate.of(100, 100), on_store_failure)
    return fleet


def test_rate_parameters_are_whole_microseconds() -> None:
    assert FleetRate.of(10, 5) == FleetRate(100_000, 400_000)
    assert FleetRate.of(3, 1) == FleetRate(333_333, 0)
    with pytest.raises(ValueError, match="burst"):
        FleetRate.of(10, 0.5)
    with pytest.raises(ValueError, match="rate"):
        FleetRate.of(float("inf"), 5)


def test_counts_travel_in_one_batch_and_a_refusal_is_cached_until_it_expires() -> None:
    fleet = tally()
    for _ in range(3):
        fleet.count(KEY)
    other = ("web", "global_request_rate", "*")
    fleet.count(other)
    batch = fleet.take_batch(0.0)
    assert batch is not None
    assert {(key, count) for key, count, _ in batch.entries} == {(KEY, 3), (other, 1)}
    assert fleet.take_batch(0.01) is None  # one batch in flight at a time
    fleet.count(KEY)  # meanwhile: the next batch's
    waits = [250 if key == KEY else 0 for key, _, _ in batch.entries]
    assert fleet.settle(batch, waits, 0.05) is False
    assert fleet.refused(KEY, 0.05) == pytest.approx(0.25)
    assert fleet.refused(KEY, 0.299) == pytest.approx(0.001)
    assert fleet.refused(KEY, 0.3) is None  # expired: forgotten
    assert fleet.refused(other, 0.05) is None
    batch = fleet.take_batch(0.35)
    assert batch is not None and [(k, c) for k, c, _ in batch.entries] == [(KEY, 1)]


def test_nothing_to_send_means_no_batch() -> None:
    fleet = tally()
    assert fleet.take_batch(0.0) is None


def test_a_later_refusal_takes_the_count_back() -> None:
    fleet = tally()
    fleet.count(KEY)
    fleet.count(KEY)
    fleet.uncount(KEY)
    batch = fleet.take_batch(0.0)
    assert batch is not None and [c for _, c, _ in batch.entries] == [1]
    fleet.uncount(KEY)  # already sent: nothing to take back, no error


def test_store_failure_local_keeps_deciding_and_probes_until_it_is_back() -> None:
    fleet = tally(on_store_failure="local")
    fleet.count(KEY)
    batch = fleet.take_batch(0.0)
    assert batch is not None
    assert fleet.fail(batch) is True  # started failing: the caller logs once
    assert fleet.unsynced == 1
    assert fleet.refused(KEY, 0.1) is None  # local limits decide
    assert fleet.local_decisions == 1
    probe = fleet.take_batch(0.1)
    assert probe is not None and probe.probe and len(probe) == 0
    assert fleet.fail(probe) is False  # still failing: not logged again
    probe = fleet.take_batch(0.3)
    assert probe is not None
    assert fleet.settle(probe, [], 0.3) is True  # recovered
    assert fleet.take_batch(0.4) is None  # healthy and idle: quiet again


def test_a_failing_store_is_retried_ever_less_often_not_every_batch() -> None:
    """Every worker of every node retrying every 50 ms is a reconnection storm against a
    Redis that is starting up: after a failure the retries back off to once a second."""
    fleet = tally()
    fleet.count(KEY)
    batch = fleet.take_batch(0.0)
    assert batch is not None
    fleet.fail(batch)
    sent, now = [], 0.0
    while now < 10.0:
        now = round(now + 0.05, 2)
        fleet.count(KEY)
        attempt = fleet.take_batch(now)
        if attempt is not None:
            sent.append(now)
            fleet.fail(attempt)
    assert sent[:4] == [0.1, 0.3, 0.7, 1.5]
    assert len(sent) <= 13  # not 200
    assert all(b - a <= 1.0 + 1e-9 for a, b in itertools.pairwise(sent))
    recovered = fleet.take_batch(now + 1.0)
    assert recovered is not None and len(recovered) == 1  # the counts went with it
    assert fleet.settle(recovered, [0], now + 1.0) is True
    fleet.count(KEY)
    assert fleet.take_batch(now + 1.05) is not None  # healthy: every batch again


def test_store_failure_deny_refuses_everything_covered() -> None:
    fleet = tally(on_store_failure="deny")
    fleet.count(KEY)
    batch = fleet.take_batch(0.0)
    assert batch is not None
    fleet.fail(batch)
    assert fleet.refused(("web", "per_ip_request_rate", "198.51.100.7"), 0.1) == 1.0
    probe = fleet.take_batch(0.1)
    assert probe is not None
    fleet.settle(probe, [], 0.1)
    assert fleet.refused(KEY, 0.2) is None
    assert fleet.local_decisions == 0


def test_tables_stay_bounded_under_address_spraying() -> None:
    fleet = tally(max_keys=4)
    for index in range(10):
        fleet.count(("web", "per_ip_request_rate", f"192.0.2.{index}"))
    assert fleet.unsynced == 6
    batch = fleet.take_batch(0.0)
    assert batch is not None and len(batch) == 4
    fleet.settle(batch, [1000] * 4, 0.0)
    for index in range(10, 20):
        key = ("web", "per_ip_request_rate", f"192.0.2.{index}")
        fleet.count(key)
    batch = fleet.take_batch(0.1)
    assert batch is not None
    fleet.settle(batch, [1000] * len(batch), 0.1)
    assert fleet.denied_keys() == 4


def test_an_answer_of_the_wrong_length_is_an_error() -> None:
    fleet = tally()
    fleet.count(KEY)
    batch = fleet.take_batch(0.0)
    assert batch is not None
    with pytest.raises(ValueError, match="answers"):
        fleet.settle(batch, [], 0.0)


def test_undeclared_limits_are_not_sent() -> None:
    fleet = tally()
    fleet.count(("web", "per_ip_connection_rate", "192.0.2.1"))
    batch = fleet.take_batch(0.0)
    assert batch is not None and len(batch) == 0


# Limits with a fleet tally: the request path


def limits(fleet: FleetTally) -> Limits:
    return Limits(LimitsConfig(per_ip_request_rate=Rate(10, 5),
                               global_request_rate=Rate(100, 100)), fleet, "web")


def test_limits_count_admitted_events_for_the_fleet() -> None:
    fleet = tally()
    gate = limits(fleet)
    for _ in range(7):
        gate.on_request("192.0.2.1", 0.0)
    batch = fleet.take_batch(0.0)
    assert batch is not None
    counts = {key[1]: count for key, count, _ in batch.entries}
    # the local bucket (burst 5) admitted 5; refusals are not charged
    assert counts == {"per_ip_request_rate": 5, "global_request_rate": 5}


def test_a_fleet_refusal_refuses_locally_with_its_retry_after() -> None:
    fleet = tally()
    gate = limits(fleet)
    assert gate.on_request("192.0.2.1", 0.0).allowed
    batch = fleet.take_batch(0.0)
    assert batch is not None
    fleet.settle(batch, [2500 if key == KEY else 0 for key, _, _ in batch.entries], 0.0)
    decision = gate.on_request("192.0.2.1", 0.1)
    assert decision.limit == "per_ip_request_rate"
    assert decision.retry_after == 3
    assert decision.per_client
    assert gate.on_request("192.0.2.2", 0.1).allowed  # another client is not affected
    assert gate.on_request("192.0.2.1", 2.6).allowed


def test_a_fleet_global_refusal_gives_the_client_token_back() -> None:
    fleet = tally()
    gate = limits(fleet)
    gate.on_request("192.0.2.1", 0.0)
    batch = fleet.take_batch(0.0)
    assert batch is not None
    fleet.settle(batch, [0 if key == KEY else 1000 for key, _, _ in batch.entries], 0.0)
    for _ in range(10):
        decision = gate.on_request("192.0.2.1", 0.0)
        assert decision.limit == "global_request_rate"
        assert not decision.per_client
    assert fleet.take_batch(0.0) is None  # nothing admitted, nothing charged
    assert gate.on_request("192.0.2.1", 1.0).allowed


def test_a_batch_is_bounded_and_the_global_counter_always_goes() -> None:
    fleet = tally(max_keys=3 * MAX_BATCH)
    for index in range(MAX_BATCH + 10):
        fleet.count(("web", "per_ip_request_rate", f"2001:db8:{index:x}::/64"))
    fleet.count(("web", "global_request_rate", "*"))
    batch = fleet.take_batch(0.0)
    assert batch is not None
    sent = {key for key, _, _ in batch.entries}
    assert len(sent) == MAX_BATCH + 1
    assert ("web", "global_request_rate", "*") in sent
    fleet.settle(batch, [0] * len(batch), 0.0)
    batch = fleet.take_batch(0.05)
    assert batch is not None and len(batch) == 10  # the rest, next time
    assert not sent & {key for key, _, _ in batch.entries}
