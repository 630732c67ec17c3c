"""The status page's recent history (observe/history.py) and the per-server figures it is built
from: what each worker records per server (upstream/group.py), how the supervisor merges them
(metrics.server_views) and how they are exposed."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from offload.config.model import BackendConfig
from offload.observe.exposition import render_text as render
from offload.observe.history import SAMPLES, History, quantile
from offload.observe.metrics import Merged, SupervisorFacts, server_views
from offload.observe.snapshot import ServerReport, WorkerStats, snapshot
from offload.observe.stats import LATENCY_BUCKETS, Counters
from offload.upstream.group import ServerGroup
from offload.upstream.servers import Server


def bucketed(*values: float) -> list[int]:
    counts = Counters()
    for value in values:
        counts.observe(value, "x")
    return counts.histograms["x",].counts


# ------------------------------------------------------------ percentiles


def test_quantile_interpolates_inside_the_bucket() -> None:
    assert quantile(0.5, [0] * (len(LATENCY_BUCKETS) + 1)) is None
    # 100 observations in (0.01, 0.025]: the median is halfway through that bucket
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    counts[LATENCY_BUCKETS.index(0.025)] = 100
    assert quantile(0.5, counts) == pytest.approx(0.0175)
    assert quantile(0.99, counts) == pytest.approx(0.01 + 0.015 * 0.99)


def test_quantile_of_the_slowest_bucket_is_its_lower_bound() -> None:
    counts = bucketed(0.002, 100.0, 100.0, 100.0)
    assert quantile(0.99, counts) == LATENCY_BUCKETS[-1]
    low = quantile(0.1, counts)
    assert low is not None and low <= 0.0025


@given(st.lists(st.floats(0.0001, 60.0), min_size=1, max_size=200), st.floats(0.01, 1.0))
def test_quantile_lies_within_the_observations_bucket_bounds(values: list[float], q: float) -> None:
    estimate = quantile(q, bucketed(*values))
    assert estimate is not None
    ordered = sorted(values)
    exact = ordered[max(0, math.ceil(q * len(ordered)) - 1)]
    upper = next((b for b in LATENCY_BUCKETS if exact <= b), LATENCY_BUCKETS[-1])
    lower = max([0.0, *(b for b in LATENCY_BUCKETS if b < exact)])
    assert lower - 1e-9 <= estimate <= upper + 1e-9


# ------------------------------------------------------------ samples


def worker(requests: int, durations: list[float], *, server_durations: tuple[float, ...] = (),
           fivexx: int = 0, timeouts: int = 0, waiting: int = 0, oldest: float = 0.0,
           servers: tuple[str, ...] = ("a",)) -> WorkerStats:
    counters = Counters()
    counters.inc("requests", "web", "app", "2xx", amount=requests)
    for value in durations:
        counters.observe(value, "request_seconds", "web")
        counters.observe(value / 2, "backend_response_seconds", "app")
    for value in server_durations:
        counters.inc("server_responses", "app", "a", "2xx")
        counters.observe(value, "server_response_seconds", "app", "a")
    if fivexx:
        counters.inc("server_responses", "app", "a", "5xx", amount=fivexx)
    if timeouts:
        counters.inc("server_failures", "app", "a", "timeout", amount=timeouts)
    reports = tuple(ServerReport("app", name, "127.0.0.1:80", 1, False, True, "enabled", waiting,
                                 0, waiting if name == "a" else 0, oldest if name == "a" else 0.0)
                    for name in servers)
    return snapshot(counters, {}, reports)


def merged(*workers: WorkerStats) -> Merged:
    total = Merged()
    for stats in workers:
        total.add(stats, live=True)
    return total


def test_the_first_record_is_the_baseline_and_the_next_one_a_sample() -> None:
    history = History()
    assert history.record(100.0, 1e9, merged(worker(50, [0.01] * 50))) is None
    sample = history.record(110.0, 1e9 + 10, merged(
        worker(150, [0.01] * 50 + [0.2] * 100, server_durations=(0.05,) * 20, fivexx=3,
               timeouts=2, waiting=2, oldest=7.5)))
    assert sample is not None and sample.seconds == 10.0
    assert sample.total.rate == 10.0                       # 100 requests in 10 s
    assert sample.total.p50 is not None and 0.1 < sample.total.p50 <= 0.25   # only this interval
    assert sample.backends["app"].rate == 10.0
    server = sample.servers["app", "a"]
    assert server.rate == pytest.approx(2.3)               # 20 answers of 2xx and 3 of 5xx
    assert server.errors == pytest.approx(0.5)             # 3 answers of 5xx and 2 timeouts
    assert server.kinds == {"5xx": pytest.approx(0.3), "timeout": pytest.approx(0.2)}
    assert (server.waiting, server.oldest_wait) == (2, 7.5)
    assert server.p99 is not None and 0.025 < server.p99 <= 0.05


def test_counts_that_go_down_give_zero_not_negative_rates() -> None:
    history = History()
    history.record(0.0, 0.0, merged(worker(100, [0.01] * 100)))
    sample = history.record(10.0, 10.0, merged(worker(40, [0.01] * 40)))
    assert sample is not None and sample.total.rate == 0.0
    assert sample.total.p50 is None


def test_memory_is_bounded_by_the_samples_kept() -> None:
    history = History()
    for step in range(SAMPLES * 3):
        history.record(10.0 * step, 10.0 * step, merged(worker(step * 10, [0.01] * step)))
    assert len(history.samples) == SAMPLES
    out: Any = history.as_json()
    assert out["time"][0] == 10.0 * (SAMPLES * 2)


def test_as_json_has_columns_with_gaps_for_servers_added_later() -> None:
    history = History()
    history.record(0.0, 0.0, merged(worker(0, [])))
    history.record(10.0, 10.0, merged(worker(10, [0.01] * 10)))
    history.record(20.0, 20.0, merged(worker(20, [0.01] * 20, servers=("a", "b"))))
    out: Any = history.as_json()
    json.dumps(out, allow_nan=False)  # strict JSON: no NaN or Infinity
    assert out["interval_seconds"] == 10.0 and out["window_seconds"] == 600.0
    assert out["time"] == [10.0, 20.0]
    assert out["total"]["rate"] == [1.0, 1.0]
    servers = {s["server"]: s for s in out["servers"]}
    assert servers["b"]["rate"] == [None, 0.0]
    assert servers["a"]["waiting"] == [0, 0]


# ------------------------------------------------------------ per-server figures in a worker


def group() -> ServerGroup:
    config = BackendConfig.model_validate({"name": "app", "servers": ["127.0.0.1:1", "127.0.0.1:2"]})
    servers = (Server("127.0.0.1:1", "127.0.0.1", 1), Server("127.0.0.1:2", "127.0.0.1", 2))
    return ServerGroup(config, servers, Counters())


def test_a_worker_reports_the_oldest_request_waiting_on_each_server() -> None:
    backend = group()
    first, second, third = object(), object(), object()
    backend.wait_began(0, first, 100.0)
    backend.wait_began(0, second, 103.0)
    backend.wait_began(1, third, 104.0)
    reports = backend.reports(110.0)
    assert [(r.waiting, r.oldest_wait) for r in reports] == [(2, 10.0), (1, 6.0)]
    backend.wait_ended(0, first)
    backend.wait_ended(0, first)  # twice is fine
    backend.wait_ended(1, object())  # one that never waited too
    assert [(r.waiting, r.oldest_wait) for r in backend.reports(110.0)] == [(1, 7.0), (1, 6.0)]
    backend.wait_ended(0, second)
    backend.wait_ended(1, third)
    assert [(r.waiting, r.oldest_wait) for r in backend.reports(110.0)] == [(0, 0.0), (0, 0.0)]


def test_a_worker_counts_answers_and_failures_per_server() -> None:
    backend = group()
    backend.responded(0, 200, 0.01)
    backend.responded(0, 503, 0.02)
    backend.responded(1, 999, 0.03)  # a status class offload does not know: counted apart
    backend.report(1, "connect_failed", 0.0)
    values = backend.counters.values
    assert values["server_responses", "app", "127.0.0.1:1", "2xx"] == 1
    assert values["server_responses", "app", "127.0.0.1:1", "5xx"] == 1
    assert values["server_responses", "app", "127.0.0.1:2", "other"] == 1
    assert values["server_failures", "app", "127.0.0.1:2", "connect_failed"] == 1
    assert backend.counters.histograms["server_response_seconds", "app", "127.0.0.1:1"].counts


def test_the_supervisor_sums_waiting_requests_and_keeps_the_longest_wait() -> None:
    views = server_views(merged(worker(0, [], waiting=1, oldest=3.0),
                                worker(0, [], waiting=2, oldest=9.0),
                                worker(0, [], waiting=0, oldest=0.0)))
    (view,) = views
    assert (view.waiting, view.oldest_wait, view.workers) == (3, 9.0, 3)
    text = render(merged(worker(5, [0.01], server_durations=(0.02,), timeouts=1, waiting=1,
                                oldest=4.0)),
                  SupervisorFacts("1.0", 0.0, 1, {}, 0, ())).decode()
    values = {(s.name, frozenset(s.labels.items())): s.value
              for family in text_string_to_metric_families(text) for s in family.samples}

    def sample(name: str, **labels: str) -> float:
        return values[name, frozenset({"backend": "app", "server": "a", **labels}.items())]

    assert sample("offload_backend_server_oldest_wait_seconds") == 4.0
    assert sample("offload_backend_server_waiting_requests") == 1.0
    assert sample("offload_backend_server_failures_total", reason="timeout") == 1
    assert sample("offload_backend_server_responses_total", status_class="2xx") == 1
    assert sample("offload_backend_server_response_duration_seconds_count") == 1
