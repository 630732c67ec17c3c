"""BodyPace: a minimum body rate with a capped allowance, and a clock that stops while offload
does not read (offload.security.body_pace). Time is plain floats."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offload.security.body_pace import BodyPace


def test_the_body_starts_with_one_window() -> None:
    pace = BodyPace(rate=100, window=10)
    assert pace.start(1000.0) == 1010.0
    assert pace.cause(1010.0) == "body_timeout"  # nothing at all came


def test_each_byte_buys_time_at_the_minimum_rate() -> None:
    pace = BodyPace(rate=100, window=10)
    pace.start(0.0)
    assert pace.received(50, 1.0) == 10.5  # 10 + 50/100 (at most 1 + 10)
    assert pace.received(100, 2.0) == 11.5
    assert pace.received(300, 3.0) == 13.0  # 14.5 is more than a window ahead


def test_the_allowance_is_capped_at_one_window() -> None:
    """A fast start does not buy a long trickle afterwards (mod_reqtimeout's credit would)."""
    pace = BodyPace(rate=100, window=10)
    pace.start(0.0)
    assert pace.received(1_000_000, 1.0) == 11.0  # not 10_010
    assert pace.received(1, 5.0) == 11.01


def test_a_trickle_runs_out_and_is_named_so() -> None:
    """slowhttptest -B: a few bytes every few seconds, far below the minimum rate."""
    pace = BodyPace(rate=500, window=20)
    deadline = pace.start(0.0)
    now = 0.0
    while now + 5 < deadline:
        now += 5
        deadline = pace.received(10, now)
    assert 20 <= deadline < 21
    assert pace.cause(deadline) == "min_body_rate"


def test_a_fast_enough_client_never_runs_out() -> None:
    pace = BodyPace(rate=500, window=20)
    deadline = pace.start(0.0)
    for second in range(1, 1000):
        deadline = pace.received(600, float(second))
        assert deadline > second + 1


def test_without_a_rate_each_byte_restarts_the_window() -> None:
    """rate 0: the plain idle timeout between two reads (nginx's client_body_timeout)."""
    pace = BodyPace(rate=0, window=10)
    pace.start(0.0)
    assert pace.received(1, 9.0) == 19.0
    assert pace.received(1, 18.0) == 28.0
    assert pace.cause(28.0) == "body_timeout"


def test_the_clock_stops_while_offload_does_not_read() -> None:
    pace = BodyPace(rate=100, window=10)
    pace.start(0.0)
    pace.received(100, 2.0)  # deadline 11
    pace.pause(3.0)  # 8 seconds of allowance left
    assert pace.paused
    assert pace.received(100, 50.0) == 11.0  # bytes while paused move nothing
    assert pace.resume(100.0) == 108.0
    assert not pace.paused
    assert pace.resume(101.0) == 108.0  # a second resume changes nothing


def test_a_pause_does_not_hide_a_stall() -> None:
    """The silence before a pause still counts when the cause is named afterwards."""
    pace = BodyPace(rate=100, window=10)
    pace.start(0.0)
    pace.pause(6.0)  # six silent seconds, four left
    deadline = pace.resume(60.0)
    assert deadline == 64.0
    assert pace.cause(deadline) == "body_timeout"


def test_start_forgets_the_previous_body() -> None:
    pace = BodyPace(rate=100, window=10)
    pace.start(0.0)
    pace.pause(1.0)
    assert pace.start(50.0) == 60.0
    assert not pace.paused


@pytest.mark.parametrize(("rate", "window"), [(-1, 10), (100, 0), (100, -1)])
def test_bad_settings(rate: float, window: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        BodyPace(rate, window)


@settings(max_examples=300)
@given(st.floats(0, 10_000), st.floats(0.1, 100),
       st.lists(st.tuples(st.floats(0, 50), st.integers(0, 100_000)), max_size=40))
def test_deadline_is_never_earlier_and_never_beyond_a_window(rate: float, window: float,
                                                              arrivals: list[tuple[float, int]]
                                                              ) -> None:
    pace = BodyPace(rate, window)
    now = 0.0
    deadline = pace.start(now)
    for gap, size in arrivals:
        if now + gap >= deadline:
            break  # the body was cut off
        now += gap
        moved = pace.received(size, now)
        assert deadline <= moved <= now + window + 1e-9
        if rate > 0:
            assert moved <= deadline + size / rate + 1e-9
        deadline = moved
