"""RoundRobin server order and the per-worker Counters."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offload.observe.stats import Counters
from offload.upstream.balancer import RoundRobin


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8])
def test_each_server_first_exactly_once_per_cycle(count: int) -> None:
    balancer = RoundRobin(count)
    for _cycle in range(3):
        firsts = [balancer.order()[0] for _ in range(count)]
        assert sorted(firsts) == list(range(count))
        assert firsts == list(range(count))  # and in index order, starting again at 0


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8])
def test_fallbacks_follow_in_order_and_cover_every_server(count: int) -> None:
    balancer = RoundRobin(count)
    for call in range(2 * count + 1):
        order = balancer.order()
        assert len(order) == count
        assert sorted(order) == list(range(count))
        start = call % count
        assert order == [(start + step) % count for step in range(count)]


def test_three_servers_exact_orders() -> None:
    balancer = RoundRobin(3)
    assert [balancer.order() for _ in range(4)] == [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]


def test_single_server_is_always_chosen() -> None:
    balancer = RoundRobin(1)
    assert [balancer.order() for _ in range(3)] == [[0], [0], [0]]


def test_instances_do_not_share_position() -> None:
    first, second = RoundRobin(4), RoundRobin(4)
    first.order()
    first.order()
    assert second.order() == [0, 1, 2, 3]
    assert first.order() == [2, 3, 0, 1]


@pytest.mark.parametrize("count", [0, -1, -10])
def test_count_below_one_is_refused(count: int) -> None:
    with pytest.raises(ValueError, match="at least one server"):
        RoundRobin(count)


@given(count=st.integers(min_value=1, max_value=40), calls=st.integers(min_value=0, max_value=200))
def test_first_choices_are_balanced(count: int, calls: int) -> None:
    balancer = RoundRobin(count)
    firsts: Counter[int] = Counter()
    for _ in range(calls):
        order = balancer.order()
        assert sorted(order) == list(range(count))
        assert all(order[i + 1] == (order[i] + 1) % count for i in range(count - 1))
        firsts[order[0]] += 1
    # After any number of calls, no server has been first more than once more than another.
    counts = [firsts[index] for index in range(count)]
    assert max(counts) - min(counts) <= 1
    assert sum(counts) == calls


# ------------------------------------------------------------------ Counters


def test_counter_starts_at_zero() -> None:
    counters = Counters()
    assert counters.get("handshake_failed", "timeout") == 0
    assert counters.get() == 0


def test_counter_inc_by_one_and_by_amount() -> None:
    counters = Counters()
    counters.inc("handshake_failed", "timeout")
    counters.inc("handshake_failed", "timeout")
    assert counters.get("handshake_failed", "timeout") == 2
    counters.inc("handshake_failed", "timeout", amount=5)
    assert counters.get("handshake_failed", "timeout") == 7
    counters.inc("bytes", amount=0)
    assert counters.get("bytes") == 0


def test_counter_keys_are_distinct_tuples() -> None:
    counters = Counters()
    counters.inc("handshake_failed", "timeout")
    counters.inc("handshake_failed", "alert", amount=3)
    counters.inc("handshake_failed")
    assert counters.get("handshake_failed", "timeout") == 1
    assert counters.get("handshake_failed", "alert") == 3
    assert counters.get("handshake_failed") == 1
    assert counters.get("timeout", "handshake_failed") == 0
    assert dict(counters.values) == {
        ("handshake_failed", "timeout"): 1,
        ("handshake_failed", "alert"): 3,
        ("handshake_failed",): 1,
    }


def test_counters_instances_are_independent() -> None:
    first, second = Counters(), Counters()
    first.inc("accepted")
    assert first.get("accepted") == 1
    assert second.get("accepted") == 0
