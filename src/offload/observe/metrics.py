"""Prometheus metrics: the workers' counters, summed by the supervisor, in the text format.

The data path counts with plain dict increments (:mod:`offload.observe.stats`); this module
names them. Each counter key's first element picks a row of :data:`COUNTERS` (metric name, help,
label names for the rest of the key). ``prometheus_client`` writes the exposition format from
metric families built at scrape time, so nothing on the data path pays for it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from offload.fleet.messages import FleetStatus
from offload.observe.snapshot import WorkerStats


@dataclass
class Merged:
    """The statistics of every worker, summed."""

    counters: Counter[tuple[str, ...]] = field(default_factory=Counter)
    histograms: dict[tuple[str, ...], tuple[list[int], float]] = field(default_factory=dict)
    gauges: Counter[tuple[str, ...]] = field(default_factory=Counter)
    workers: list[WorkerStats] = field(default_factory=list)
    """The live workers' own snapshots (for per-server views)."""

    def add(self, stats: WorkerStats, *, live: bool) -> None:
        self.counters.update(stats.counters)
        for key, (counts, total) in stats.histograms.items():
            mine = self.histograms.get(key)
            if mine is None:
                self.histograms[key] = (list(counts), total)
            else:
                self.histograms[key] = ([a + b for a, b in zip(mine[0], counts, strict=True)],
                                        mine[1] + total)
        if live:
            self.gauges.update(stats.gauges)
            self.workers.append(stats)

    def copy(self) -> Merged:
        """A copy to add to, leaving this one as it is."""
        return Merged(Counter(self.counters),
                      {key: (list(counts), total)
                       for key, (counts, total) in self.histograms.items()},
                      Counter(self.gauges), list(self.workers))


@dataclass(frozen=True)
class Spec:
    """How one counter key becomes a metric."""

    name: str
    help: str
    labels: tuple[str, ...]


COUNTERS: dict[str, Spec] = {spec_key: spec for spec_key, spec in [
    ("accepted", Spec("offload_connections_accepted", "TCP connections accepted",
                      ("frontend",))),
    ("handshake", Spec("offload_tls_handshakes", "Completed TLS handshakes",
                       ("frontend", "version", "cipher", "resumed"))),
    ("handshake_failed", Spec("offload_tls_handshake_failures", "Failed TLS handshakes",
                              ("frontend", "reason"))),
    ("bytes_in", Spec("offload_received_bytes", "TLS bytes received from clients",
                      ("frontend",))),
    ("bytes_out", Spec("offload_sent_bytes", "TLS bytes sent to clients", ("frontend",))),
    ("requests", Spec("offload_http_requests", "HTTP requests answered",
                      ("frontend", "backend", "status_class"))),
    ("http_rejected", Spec("offload_http_rejected", "HTTP requests refused as malformed",
                           ("frontend", "reason"))),
    ("redirect", Spec("offload_http_redirects", "Plain-HTTP requests redirected to HTTPS",
                      ("frontend",))),
    ("acme_challenge", Spec("offload_acme_challenges", "ACME validations answered",
                            ("frontend", "challenge"))),
    ("timeout", Spec("offload_timeouts", "Connections closed by a timeout", ("kind",))),
    ("security", Spec("offload_security_decisions", "Connections and requests refused, "
                      "limited or flagged", ("frontend", "kind", "cause"))),
    ("waf_rule", Spec("offload_waf_rule_matches", "WAF rule matches by rule id (outcome "
                      "denied: the request was refused; detected: logged only)",
                      ("frontend", "rule", "outcome"))),
    ("waf_check", Spec("offload_waf_checks", "Requests checked by the WAF, by result (allowed, "
                       "denied, detected, overload_allowed, overload_denied, error)",
                       ("frontend", "result"))),
    ("backend_connect_failed", Spec("offload_backend_connect_failures",
                                    "Failed connections to backend servers", ("backend",))),
    ("backend_unavailable", Spec("offload_backend_unavailable",
                                 "Requests or connections with no usable server",
                                 ("backend",))),
    ("backend_protocol_error", Spec("offload_backend_protocol_errors",
                                    "Backend connections closed because the server broke "
                                    "HTTP (malformed or extra responses)",
                                    ("backend", "reason"))),
    ("backend_reset", Spec("offload_backend_resets", "Backend connections reset mid-stream",
                           ("backend",))),
    ("backend_tls_error", Spec("offload_backend_tls_errors", "TLS handshakes with backend "
                               "servers that failed, by the check that failed (expired, "
                               "unknown_ca, name_mismatch, ...)", ("backend", "reason"))),
    ("backend_auth_failure", Spec("offload_backend_auth_failures",
                                  "401 and 403 answers from the backend", ("frontend",))),
    ("retry", Spec("offload_backend_retries", "Requests retried on another server",
                   ("backend",))),
    ("server_state", Spec("offload_backend_server_transitions",
                          "Server health changes (down, up, ejected, returned)",
                          ("backend", "transition"))),
    ("crl_fetch", Spec("offload_crl_fetches", "CRL downloads from distribution points",
                       ("result",))),
    ("client_crl_check", Spec("offload_client_crl_checks", "Client certificates checked "
                              "against a fetched CRL", ("frontend", "verdict"))),
    ("internal_error", Spec("offload_internal_errors", "Unexpected errors (bugs)",
                            ("where",))),
    ("h2_limit", Spec("offload_http2_limits", "HTTP/2 limits that fired (GOAWAY or a stream "
                      "reset): flood budgets, streams per connection, stalled streams",
                      ("frontend", "limit"))),
    ("access_log_dropped", Spec("offload_access_log_dropped", "Access log lines lost "
                                "(queue_full, write_error, format_error)", ("log", "reason"))),
    ("server_responses", Spec("offload_backend_server_responses", "Final responses from each "
                             "backend server, by status class", ("backend", "server",
                                                                 "status_class"))),
    ("icap", Spec("offload_icap_scans", "Bodies sent to the ICAP service, or not, by outcome "
                  "(clean, infected, error_allowed, error_denied, oversize_passed, "
                  "oversize_denied)", ("frontend", "direction", "result"))),
    ("fleet_round_trips", Spec("offload_fleet_limit_round_trips", "Redis round trips of "
                               "fleet rate limits, by where they were made: batch (the batch "
                               "task) or request (on the request path: must stay 0)",
                               ("path",))),
    ("fleet_limit_batches", Spec("offload_fleet_limit_batches", "Batches of fleet rate-limit "
                                 "counts sent to Redis", ())),
    ("fleet_limit_batch_keys", Spec("offload_fleet_limit_batch_keys", "Counters carried by "
                                    "those batches (divide by the batches for the mean size)",
                                    ())),
    ("fleet_limit_failures", Spec("offload_fleet_limit_store_failures", "Batches of fleet "
                                  "rate-limit counts that did not reach Redis", ())),
    ("fleet_limit_unsynced", Spec("offload_fleet_limit_unsynced_events", "Events admitted but "
                                  "never charged to the fleet (failed batches, full table)",
                                  ())),
    ("fleet_limit_local_decisions", Spec("offload_fleet_limit_local_decisions", "Events "
                                         "decided by per-instance limits alone while Redis "
                                         "was unreachable (on_store_failure = local)", ())),
    ("ticket", Spec("offload_fleet_tickets", "Session tickets under the fleet's keys: issued, "
                    "resumed (by the age of the key: current, previous, older), or under a key "
                    "no longer held (unknown)", ("result", "key_age"))),
    ("server_failures", Spec("offload_backend_server_failures", "Requests and connections to "
                             "each backend server that failed (connect_failed, timeout, reset, "
                             "bad_response)", ("backend", "server", "reason"))),
]}

HISTOGRAMS: dict[str, Spec] = {
    "handshake_seconds": Spec("offload_tls_handshake_duration_seconds",
                              "From accept to completed TLS handshake", ("frontend",)),
    "request_seconds": Spec("offload_http_request_duration_seconds",
                            "From request to end of response", ("frontend",)),
    "backend_response_seconds": Spec("offload_backend_response_duration_seconds",
                                     "From request sent to the backend to its response head",
                                     ("backend",)),
    "server_response_seconds": Spec("offload_backend_server_response_duration_seconds",
                                    "From request sent to a backend server to its final "
                                    "response head", ("backend", "server")),
}

GAUGES: dict[str, Spec] = {
    "connections_active": Spec("offload_connections_active", "Open client connections",
                               ("frontend",)),
}


@dataclass(frozen=True)
class CertificateExpiry:
    """One served certificate, for ``offload_certificate_expiry_timestamp_seconds``."""

    frontend: str
    name: str
    key: str
    source: str
    not_after: float


@dataclass(frozen=True)
class SupervisorFacts:
    """What the supervisor itself knows: its own counters and the certificates it loaded."""

    version: str
    start_time: float
    workers: int
    reloads: dict[str, int]
    worker_restarts: int
    certificates: tuple[CertificateExpiry, ...]
    bans: int = 0
    bans_active: int = 0
    fleet: FleetStatus | None = None


@dataclass(frozen=True)
class ServerView:
    """A backend server over all workers."""

    backend: str
    server: str
    address: str
    weight: int
    backup: bool
    admin: str
    healthy_workers: int
    workers: int
    active: int
    idle: int
    waiting: int = 0
    oldest_wait: float = 0.0
    """The longest wait on any worker."""
    tls: str = "off"
    """"off", "verified" or "unverified" (the configuration's, the same on every worker)."""
    check: str = ""
    """The last health check's result on the first worker that has one."""

    @property
    def health(self) -> str:
        if self.healthy_workers == self.workers:
            return "up"
        return "down" if self.healthy_workers == 0 else "partial"


def server_views(merged: Merged) -> list[ServerView]:
    """Each backend server with its counts summed over the live workers."""
    views: dict[tuple[str, str], ServerView] = {}
    for stats in merged.workers:
        for report in stats.servers:
            key = (report.backend, report.server)
            seen = views.get(key)
            healthy = int(report.healthy)
            if seen is None:
                views[key] = ServerView(
                    report.backend, report.server, report.address, report.weight,
                    report.backup, report.admin, healthy, 1, report.active, report.idle,
                    report.waiting, report.oldest_wait, report.tls, report.check)
            else:
                views[key] = ServerView(
                    seen.backend, seen.server, seen.address, seen.weight, seen.backup,
                    seen.admin, seen.healthy_workers + healthy, seen.workers + 1,
                    seen.active + report.active, seen.idle + report.idle,
                    seen.waiting + report.waiting, max(seen.oldest_wait, report.oldest_wait),
                    seen.tls, seen.check or report.check)
    return list(views.values())


def labelled(items: Iterable[tuple[tuple[str, ...], int]], name: str) -> dict[tuple[str, ...],
                                                                              int]:
    """The counters named ``name``, keyed by their labels."""
    return {key[1:]: value for key, value in items if key[0] == name}
