"""The Prometheus text exposition of the merged statistics, written by ``prometheus_client``
from metric families built at scrape time.

Kept apart from :mod:`offload.observe.metrics` so that ``prometheus_client`` is imported on the
first scrape, not by the supervisor at start (what the supervisor holds when it forks, every
worker inherits).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from offload.observe.fleet_metrics import fleet_families
from offload.observe.metrics import (
    COUNTERS,
    GAUGES,
    HISTOGRAMS,
    Merged,
    Spec,
    SupervisorFacts,
    server_views,
)
from offload.observe.stats import LATENCY_BUCKETS

CONTENT_TYPE = CONTENT_TYPE_LATEST


class _Collector(Collector):
    def __init__(self, merged: Merged, facts: SupervisorFacts) -> None:
        self._merged = merged
        self._facts = facts

    def collect(self) -> Iterator[Metric]:
        yield from self._counters()
        yield from self._histograms()
        yield from self._gauges()
        yield from self._servers()
        yield from self._supervisor()

    def _counters(self) -> Iterator[Metric]:
        def add(family: CounterMetricFamily, labels: list[str], value: int) -> None:
            family.add_metric(labels, value)
        return _families(self._merged.counters, COUNTERS, CounterMetricFamily, add)

    def _histograms(self) -> Iterator[Metric]:
        bounds = [*(f"{b:g}" for b in LATENCY_BUCKETS), "+Inf"]

        def add(family: HistogramMetricFamily, labels: list[str],
                value: tuple[list[int], float]) -> None:
            counts, total = value
            cumulative, running = [], 0
            for bound, count in zip(bounds, counts, strict=True):
                running += count
                cumulative.append((bound, float(running)))
            family.add_metric(labels, cumulative, total)
        return _families(self._merged.histograms, HISTOGRAMS, HistogramMetricFamily, add)

    def _gauges(self) -> Iterator[Metric]:
        def add(family: GaugeMetricFamily, labels: list[str], value: float) -> None:
            family.add_metric(labels, value)
        return _families(self._merged.gauges, GAUGES, GaugeMetricFamily, add)

    def _servers(self) -> Iterator[Metric]:
        labels = ["backend", "server"]
        up = GaugeMetricFamily("offload_backend_server_up", "Share of workers that find the "
                               "server healthy (1: all of them)", labels=labels)
        admin = GaugeMetricFamily("offload_backend_server_admin_state", "The server's admin "
                                  "state (1 for the current one)", labels=[*labels, "state"])
        active = GaugeMetricFamily("offload_backend_connections_active", "Requests or "
                                   "connections in flight to the server", labels=labels)
        idle = GaugeMetricFamily("offload_backend_connections_idle", "Idle pooled "
                                 "connections to the server", labels=labels)
        waiting = GaugeMetricFamily("offload_backend_server_waiting_requests", "Requests sent "
                                    "to the server that wait for its response head",
                                    labels=labels)
        oldest = GaugeMetricFamily("offload_backend_server_oldest_wait_seconds", "How long "
                                   "the longest-waiting of them has waited", labels=labels)
        tls = GaugeMetricFamily("offload_backend_server_tls", "TLS to the server (1): "
                                "verified, or unverified (verify = false); servers reached "
                                "over plain TCP are not listed", labels=[*labels, "verify"])
        for view in server_views(self._merged):
            names = [view.backend, view.server]
            up.add_metric(names, view.healthy_workers / view.workers)
            for state in ("enabled", "drain", "disabled"):
                admin.add_metric([*names, state], 1.0 if view.admin == state else 0.0)
            active.add_metric(names, view.active)
            idle.add_metric(names, view.idle)
            waiting.add_metric(names, view.waiting)
            oldest.add_metric(names, view.oldest_wait)
            if view.tls != "off":
                tls.add_metric([*names, "true" if view.tls == "verified" else "false"], 1)
        yield from (up, admin, active, idle, waiting, oldest, tls)

    def _supervisor(self) -> Iterator[Metric]:
        facts = self._facts
        info = GaugeMetricFamily("offload_build_info", "offload's version", labels=["version"])
        info.add_metric([facts.version], 1)
        start = GaugeMetricFamily("offload_start_time_seconds",
                                  "When the supervisor started (Unix time)")
        start.add_metric([], facts.start_time)
        workers = GaugeMetricFamily("offload_workers", "Worker processes running")
        workers.add_metric([], facts.workers)
        reloads = CounterMetricFamily("offload_config_reloads", "Configuration reloads",
                                      labels=["result"])
        for result in ("success", "failure"):
            reloads.add_metric([result], facts.reloads.get(result, 0))
        restarts = CounterMetricFamily("offload_worker_restarts",
                                       "Workers restarted after dying")
        restarts.add_metric([], facts.worker_restarts)
        expiry = GaugeMetricFamily(
            "offload_certificate_expiry_timestamp_seconds",
            "When each served certificate expires (Unix time)",
            labels=["frontend", "name", "key", "source"])
        for cert in facts.certificates:
            expiry.add_metric([cert.frontend, cert.name, cert.key, cert.source], cert.not_after)
        bans = CounterMetricFamily("offload_bans", "Clients banned automatically")
        bans.add_metric([], facts.bans)
        banned = GaugeMetricFamily("offload_bans_active", "Bans in force")
        banned.add_metric([], facts.bans_active)
        yield from (info, start, workers, reloads, restarts, expiry, bans, banned)
        if facts.fleet is not None:
            yield from fleet_families(facts.fleet)


_Family = TypeVar("_Family", CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily)
_Value = TypeVar("_Value")


def _families(values: Mapping[tuple[str, ...], _Value], specs: dict[str, Spec],
              make: Callable[..., _Family],
              add: Callable[[_Family, list[str], _Value], None]) -> Iterator[_Family]:
    """One family per metric named in ``specs``, holding its keys' values (the rest of a key is
    the label values; keys with no spec, or the wrong number of labels, are left out)."""
    families: dict[str, _Family] = {}
    for key, value in sorted(values.items()):
        spec = specs.get(key[0])
        if spec is None or len(key) - 1 != len(spec.labels):
            continue
        family = families.get(spec.name)
        if family is None:
            family = families[spec.name] = make(spec.name, spec.help, labels=spec.labels)
        add(family, list(key[1:]), value)
    yield from families.values()


def render_text(merged: Merged, facts: SupervisorFacts) -> bytes:
    """The Prometheus text exposition of everything."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(merged, facts))
    return generate_latest(registry)
