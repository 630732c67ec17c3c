"""The per-worker counters and duration histograms (offload.observe.stats)."""

from __future__ import annotations

import math
from bisect import bisect_left

from hypothesis import given
from hypothesis import strategies as st

from offload.observe.stats import LATENCY_BUCKETS, Counters, Histogram


@given(st.floats(allow_nan=True, allow_infinity=True)
       | st.sampled_from([*LATENCY_BUCKETS, 0.0, -0.0]))
def test_a_duration_lands_in_the_bucket_bisect_would_pick(value: float) -> None:
    histogram = Histogram()
    histogram.observe(value)
    expected = [0] * (len(LATENCY_BUCKETS) + 1)
    expected[bisect_left(LATENCY_BUCKETS, value)] = 1
    assert histogram.counts == expected
    assert histogram.total == value or (math.isnan(value) and math.isnan(histogram.total))


def test_a_bound_belongs_to_its_own_bucket_and_beyond_the_last_to_inf() -> None:
    histogram = Histogram()
    for value in (0.0005, 0.00051, 30.0, 31.0):
        histogram.observe(value)
    assert histogram.counts[0] == 1  # le="0.0005" includes 0.0005
    assert histogram.counts[1] == 1
    assert histogram.counts[len(LATENCY_BUCKETS) - 1] == 1  # le="30"
    assert histogram.counts[-1] == 1  # +Inf
    assert histogram.total == 0.0005 + 0.00051 + 30.0 + 31.0


def test_counters_keep_one_histogram_per_key() -> None:
    counters = Counters()
    counters.observe(0.002, "request", "web")
    counters.observe(7.0, "request", "web")
    counters.observe(0.002, "handshake", "web")
    assert sum(counters.histograms["request", "web"].counts) == 2
    assert sum(counters.histograms["handshake", "web"].counts) == 1
