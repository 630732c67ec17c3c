"""StatsHub and the metrics it feeds: scrapes complete on answers or on time, totals never go
down when workers exit, and the exposition parses back to the same numbers."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from offload.observe.exposition import render_text as render
from offload.observe.metrics import SupervisorFacts, server_views
from offload.observe.snapshot import ServerReport, WorkerStats, snapshot
from offload.observe.stats import Counters
from offload.server.stats_hub import StatsHub


def stats(requests: int, *, active: int = 0, healthy: bool = True) -> WorkerStats:
    counters = Counters()
    counters.inc("requests", "web", "app", "2xx", amount=requests)
    counters.observe(0.003, "request_seconds", "web")
    server = ServerReport("app", "a", "127.0.0.1:8080", 1, False, healthy, "enabled", active, 2)
    return snapshot(counters, {("connections_active", "web"): float(active)}, (server,))


def facts() -> SupervisorFacts:
    return SupervisorFacts("1.0", 1700000000.0, 2, {"success": 1}, 0, ())


def test_a_scrape_completes_when_every_worker_answered() -> None:
    hub = StatsHub(timeout=1.0)
    done: list[int] = []
    request = hub.collect([10, 11], now=0.0, done=lambda: done.append(1))
    assert request == 1
    hub.received(10, 1, stats(3))
    assert done == []
    hub.received(11, 1, stats(4))
    assert done == [1]
    assert hub.merged().counters["requests", "web", "app", "2xx"] == 7
    assert hub.deadline() is None


def test_a_silent_worker_does_not_hold_the_scrape_past_its_deadline() -> None:
    hub = StatsHub(timeout=1.0)
    done: list[int] = []
    hub.collect([10, 11], now=5.0, done=lambda: done.append(1))
    hub.received(10, 1, stats(3))
    assert hub.deadline() == 6.0
    hub.on_time(5.5)
    assert done == []
    hub.on_time(6.0)
    assert done == [1]


def test_an_answer_to_an_older_request_does_not_complete_a_newer_one() -> None:
    hub = StatsHub()
    done: list[str] = []
    hub.collect([10], now=0.0, done=lambda: done.append("first"))
    hub.collect([10], now=0.0, done=lambda: done.append("second"))
    hub.received(10, 1, stats(1))
    assert done == ["first"]
    hub.received(10, 2, stats(1))
    assert done == ["first", "second"]


def test_exited_workers_keep_their_counters_but_not_their_gauges() -> None:
    hub = StatsHub()
    hub.received(10, 0, stats(5, active=3))
    hub.received(11, 0, stats(2, active=1))
    hub.worker_gone(10)
    merged = hub.merged()
    assert merged.counters["requests", "web", "app", "2xx"] == 7
    assert merged.gauges["connections_active", "web"] == 1
    assert merged.histograms["request_seconds", "web"][0][3] == 2  # 3 ms: the 5 ms bucket
    assert len(merged.workers) == 1
    again = hub.merged()  # summing does not change what is kept
    assert again.counters == merged.counters and again.histograms == merged.histograms


def test_a_worker_exiting_mid_scrape_completes_it() -> None:
    hub = StatsHub()
    done: list[int] = []
    hub.collect([10, 11], now=0.0, done=lambda: done.append(1))
    hub.received(11, 1, stats(1))
    hub.worker_gone(10)
    assert done == [1]


def test_collect_with_no_workers_answers_at_once() -> None:
    done: list[int] = []
    assert StatsHub().collect([], now=0.0, done=lambda: done.append(1)) is None
    assert done == [1]


def test_server_views_sum_connections_and_count_healthy_workers() -> None:
    hub = StatsHub()
    hub.received(10, 0, stats(1, active=2, healthy=True))
    hub.received(11, 0, stats(1, active=5, healthy=False))
    (view,) = server_views(hub.merged())
    assert (view.active, view.idle, view.healthy_workers, view.workers) == (7, 4, 1, 2)
    assert view.health == "partial"


def test_exposition_parses_back() -> None:
    hub = StatsHub()
    hub.received(10, 0, stats(5))
    hub.received(11, 0, stats(2, healthy=False))
    text = render(hub.merged(), facts()).decode()
    found = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
             for family in text_string_to_metric_families(text) for sample in family.samples}
    assert found["offload_http_requests_total", (("backend", "app"), ("frontend", "web"),
                                                 ("status_class", "2xx"))] == 7
    assert found["offload_http_request_duration_seconds_count", (("frontend", "web"),)] == 2
    assert found["offload_http_request_duration_seconds_bucket",
                 (("frontend", "web"), ("le", "0.0025"))] == 0
    assert found["offload_http_request_duration_seconds_bucket",
                 (("frontend", "web"), ("le", "0.005"))] == 2
    assert found["offload_backend_server_up", (("backend", "app"), ("server", "a"))] == 0.5
    assert found["offload_config_reloads_total", (("result", "success"),)] == 1
    assert found["offload_build_info", (("version", "1.0"),)] == 1


def test_unknown_counter_keys_are_left_out() -> None:
    counters = Counters()
    counters.inc("no_such_metric", "x")
    counters.inc("requests", "too", "few")
    hub = StatsHub()
    hub.received(1, 0, snapshot(counters, {}, ()))
    text = render(hub.merged(), facts()).decode()
    assert "no_such_metric" not in text and "offload_http_requests_total{" not in text
