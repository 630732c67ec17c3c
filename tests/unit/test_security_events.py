"""SecurityEvents: exact counters, capped log lines, offences passed on."""

from __future__ import annotations

import logging

import pytest

from offload.observe.stats import Counters
from offload.security.bans import BanEvent
from offload.security.events import LOG_LINES_PER_SECOND, SecurityEvents


def fields_of(record: logging.LogRecord) -> dict[str, object]:
    value: dict[str, object] = record.__dict__["fields"]
    return value


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_counts_every_decision_and_caps_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    counters = Counters()
    events = SecurityEvents(counters, clock=clock)
    with caplog.at_level(logging.WARNING, logger="offload.security"):
        for _ in range(100):
            events.decision("rate_limited", "per_ip_request_rate", "web", "192.0.2.1")
    assert counters.get("security", "web", "rate_limited", "per_ip_request_rate") == 100
    assert len(caplog.records) == 2 * LOG_LINES_PER_SECOND
    first = caplog.records[0]
    assert fields_of(first) == {"event": "rate_limited", "cause": "per_ip_request_rate",
                                        "frontend": "web", "client": "192.0.2.1"}
    caplog.clear()
    clock.now += 1.0
    with caplog.at_level(logging.WARNING, logger="offload.security"):
        events.decision("rate_limited", "per_ip_request_rate", "web", "192.0.2.1")
    assert fields_of(caplog.records[0])["suppressed"] == 80


def test_causes_are_capped_separately(caplog: pytest.LogCaptureFixture) -> None:
    events = SecurityEvents(Counters(), clock=Clock())
    with caplog.at_level(logging.WARNING, logger="offload.security"):
        for _ in range(50):
            events.decision("rule_denied", "sqli", "web", "192.0.2.1")
        events.decision("rule_denied", "xss", "web", "192.0.2.1", rule_action="deny")
    assert fields_of(caplog.records[-1])["cause"] == "xss"
    assert fields_of(caplog.records[-1])["rule_action"] == "deny"


def test_offences_reach_the_sink() -> None:
    seen: list[tuple[str, BanEvent]] = []
    events = SecurityEvents(Counters(), lambda client, event: seen.append((client, event)))
    events.decision("handshake_failed", "bad_client_hello", "web", "192.0.2.7",
                    offence="handshake_failure")
    events.decision("rule_logged", "scanner", "web", "192.0.2.8")
    assert seen == [("192.0.2.7", "handshake_failure")]
