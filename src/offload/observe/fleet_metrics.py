"""Fleet-mode metrics from the fleet process's latest status (docs/fleet.md): Redis round trips
by operation, failures and outages, latency, ticket-key rotations and the nodes seen."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from offload.fleet.messages import FleetStatus


def fleet_families(status: FleetStatus) -> Iterator[Metric]:
    trips = CounterMetricFamily("offload_fleet_store_round_trips", "Redis operations of the "
                                "fleet process, by operation (workers make none)",
                                labels=["operation"])
    for operation, count in sorted(status.round_trips.items()):
        trips.add_metric([operation], count)
    failures = CounterMetricFamily("offload_fleet_store_failures", "Redis operations that "
                                   "failed or timed out (the node went on with local state)")
    failures.add_metric([], status.failures)
    outages = CounterMetricFamily("offload_fleet_store_outages", "Times Redis became "
                                  "unreachable")
    outages.add_metric([], status.outages)
    up = GaugeMetricFamily("offload_fleet_store_up", "Whether Redis answered the last "
                           "operation (1) or not (0)")
    up.add_metric([], 1 if status.store_up else 0)
    latency = GaugeMetricFamily("offload_fleet_store_latency_seconds", "Smoothed Redis "
                                "round-trip time")
    if status.latency_ms is not None:
        latency.add_metric([], status.latency_ms / 1000)
    rotations = CounterMetricFamily("offload_fleet_ticket_key_rotations", "Ticket key sets "
                                    "this node made (under the fleet's lock)")
    rotations.add_metric([], status.rotations)
    received = CounterMetricFamily("offload_fleet_ticket_key_sets", "Ticket key sets this node "
                                   "handed to its workers")
    received.add_metric([], status.key_sets_seen)
    age = GaugeMetricFamily("offload_fleet_ticket_key_age_seconds", "Age of the newest fleet "
                            "ticket key in use")
    if status.ticket_key_age is not None:
        age.add_metric([], status.ticket_key_age)
    nodes = GaugeMetricFamily("offload_fleet_nodes", "Nodes seen in the last minute, and those "
                              "whose configuration differs from the fleet's", labels=["kind"])
    nodes.add_metric(["seen"], len(status.nodes))
    nodes.add_metric(["config_differs"], sum(1 for n in status.nodes if n.get("config_differs")))
    yield from (trips, failures, outages, up, latency, rotations, received, age, nodes)
