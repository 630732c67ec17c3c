"""The request path's side of the rules (offload.http.inspection): one decision per rule that
fired, with the right kind, offence and fields; the tag header; the forwarded client; backend
401/403 as offences."""

from __future__ import annotations

import logging
from ipaddress import ip_network
from typing import Any

import pytest

from offload.http.inspection import (
    MAX_LOGGED_PATH,
    Inspection,
    backend_auth_failure,
    denied_reason,
    forwarded_client,
)
from offload.observe.stats import Counters
from offload.proto.forwarding import ForwardPolicy
from offload.proto.http_types import Headers, Request
from offload.security.bans import BanEvent
from offload.security.events import SecurityEvents
from offload.security.rules import compile_rules
from offload.security.rules_config import RuleSetConfig

RULES = [
    {"name": "deny-admin", "action": "deny", "path": "^/admin"},
    {"name": "log-export", "action": "log", "path": "^/export"},
    {"name": "tag-api", "action": "tag", "tag": "api", "path": "^/api"},
    {"name": "tag-v2", "action": "tag", "path": "^/api/v2"},
    {"name": "deny-drop", "action": "deny", "methods": ["POST"], "body": "DROP TABLE"},
]


class Sink:
    def __init__(self) -> None:
        self.calls: list[tuple[str, BanEvent]] = []

    def __call__(self, client: str, event: BanEvent) -> None:
        self.calls.append((client, event))


def inspection(**settings: Any) -> tuple[Inspection, Counters, Sink]:
    counters, sink = Counters(), Sink()
    rules = compile_rules(RuleSetConfig.model_validate({"rules": RULES, **settings}))
    return Inspection(rules, SecurityEvents(counters, sink), "web"), counters, sink


def request(target: bytes, method: bytes = b"GET", headers: Headers | None = None) -> Request:
    return Request(method, target, b"1.1", headers or [(b"Host", b"example.test")],
                   b"example.test")


def lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [record.__dict__["fields"] for record in caplog.records
            if record.name == "offload.security"]


def test_deny_is_counted_logged_and_an_offence(caplog: pytest.LogCaptureFixture) -> None:
    checks, counters, sink = inspection()
    with caplog.at_level(logging.WARNING, logger="offload.security"):
        verdict = checks.head("192.0.2.7", request(b"/admin/users?x=1"), b"rid-1")
    assert verdict.deny and denied_reason(verdict) == "rule_denied:deny-admin"
    assert counters.get("security", "web", "rule_denied", "deny-admin") == 1
    assert sink.calls == [("192.0.2.7", "rule_denied")]
    assert lines(caplog) == [{
        "event": "rule_denied", "cause": "deny-admin", "frontend": "web", "client": "192.0.2.7",
        "action": "deny", "dry_run": False, "method": "GET", "path": "/admin/users?x=1",
        "request_id": "rid-1"}]
    assert caplog.records[0].getMessage() == "rule denied: deny-admin"


def test_log_and_tag_are_no_offences(caplog: pytest.LogCaptureFixture) -> None:
    checks, counters, sink = inspection()
    with caplog.at_level(logging.WARNING, logger="offload.security"):
        assert not checks.head("192.0.2.7", request(b"/export/all"), b"r").deny
        verdict = checks.head("192.0.2.7", request(b"/api/v2/x"), b"r")
    assert not verdict.deny and verdict.tags == ("api", "tag-v2")
    assert counters.get("security", "web", "rule_logged", "log-export") == 1
    assert counters.get("security", "web", "rule_tagged", "tag-api") == 1
    assert counters.get("security", "web", "rule_tagged", "tag-v2") == 1
    assert [line["event"] for line in lines(caplog)] == ["rule_logged", "rule_tagged", "rule_tagged"]
    assert sink.calls == []


def test_nothing_reported_when_no_rule_fires(caplog: pytest.LogCaptureFixture) -> None:
    checks, counters, sink = inspection()
    with caplog.at_level(logging.DEBUG, logger="offload.security"):
        verdict = checks.head("192.0.2.7", request(b"/index.html"), b"r")
    assert not verdict.matches and not verdict.deny
    assert not counters.values and not sink.calls and not lines(caplog)


def test_dry_run_reports_what_would_have_happened(caplog: pytest.LogCaptureFixture) -> None:
    checks, counters, sink = inspection(dry_run=True)
    with caplog.at_level(logging.WARNING, logger="offload.security"):
        denied = checks.head("192.0.2.7", request(b"/admin"), b"r")
        tagged = checks.head("192.0.2.7", request(b"/api/x"), b"r")
    assert not denied.deny and tagged.tags == ()
    assert counters.get("security", "web", "rule_logged", "deny-admin") == 1
    assert counters.get("security", "web", "rule_logged", "tag-api") == 1
    assert counters.get("security", "web", "rule_denied", "deny-admin") == 0
    assert sink.calls == []
    first, second = lines(caplog)
    assert (first["event"], first["action"], first["dry_run"]) == ("rule_logged", "deny", True)
    assert (second["event"], second["action"], second["dry_run"]) == ("rule_logged", "tag", True)


def test_body_reports_only_the_body_rules() -> None:
    checks, counters, sink = inspection()
    post = request(b"/admin/import", b"POST")
    head = checks.head("192.0.2.7", post, b"r")
    assert head.deny and not head.needs_body  # denied by the head: the body is never read
    post = request(b"/api/import", b"POST")
    head = checks.head("192.0.2.7", post, b"r")
    assert head.needs_body and checks.body_bytes == 8192
    done = checks.body(b"x; DROP TABLE users", head, "192.0.2.7", post, b"r")
    assert done.deny and denied_reason(done) == "rule_denied:deny-drop"
    assert counters.get("security", "web", "rule_tagged", "tag-api") == 1  # not again by body()
    assert counters.get("security", "web", "rule_denied", "deny-drop") == 1
    assert sink.calls == [("192.0.2.7", "rule_denied")] * 2
    clean = checks.body(b"x", checks.head("192.0.2.7", post, b"r"), "192.0.2.7", post, b"r")
    assert not clean.deny and clean.tags == ("api",)


def test_forward_replaces_the_clients_tag_header() -> None:
    checks, _, _ = inspection()
    forged = [(b"Host", b"example.test"), (b"x-offload-TAG", b"admin"), (b"Accept", b"*/*")]
    api = request(b"/api/x", headers=list(forged))
    checks.forward(api, checks.head("192.0.2.7", api, b"r"))
    assert api.headers == [(b"Host", b"example.test"), (b"Accept", b"*/*")]
    assert api.added == ((b"X-Offload-Tag", b"api"),)
    plain = request(b"/plain", headers=list(forged))
    checks.forward(plain, checks.head("192.0.2.7", plain, b"r"))
    assert plain.headers == [(b"Host", b"example.test"), (b"Accept", b"*/*")]
    assert plain.added == ()


def test_long_targets_are_cut_in_the_log_line(caplog: pytest.LogCaptureFixture) -> None:
    checks, _, _ = inspection()
    with caplog.at_level(logging.WARNING, logger="offload.security"):
        checks.head("192.0.2.7", request(b"/admin/" + b"a" * 5000), b"r")
    (line,) = lines(caplog)
    assert line["path"] == "/admin/" + "a" * (MAX_LOGGED_PATH - 7) + "..."


TRUSTED = ForwardPolicy(trusted_proxies=(ip_network("10.0.0.0/8"),))


@pytest.mark.parametrize(("values", "expected"), [
    ([], "10.0.0.1"),  # nothing forwarded: the proxy itself
    ([b"203.0.113.7"], "203.0.113.7"),
    ([b"198.51.100.1, 203.0.113.7"], "203.0.113.7"),  # the last hop the proxy added
    ([b"203.0.113.7, 10.1.1.1, 10.2.2.2"], "203.0.113.7"),  # trusted hops skipped
    ([b"203.0.113.7", b"10.1.1.1"], "203.0.113.7"),  # several fields are one list
    ([b"10.1.1.1, 10.2.2.2"], "10.1.1.1"),  # all trusted: the first
    ([b"2001:db8::5"], "2001:db8::5"),
    ([b"unknown"], "10.0.0.1"),  # not an address: nothing to match or ban but the peer
    ([b"203.0.113.7, garbage, 10.1.1.1"], "10.0.0.1"),
])
def test_forwarded_client(values: list[bytes], expected: str) -> None:
    headers = [(b"X-Forwarded-For", value) for value in values] + [(b"Host", b"h")]
    assert forwarded_client(headers, TRUSTED, "10.0.0.1") == expected


def test_backend_auth_failure_counts_and_reports() -> None:
    counters, sink = Counters(), Sink()
    backend_auth_failure(SecurityEvents(counters, sink), "web", "192.0.2.7")
    assert counters.get("backend_auth_failure", "web") == 1
    assert sink.calls == [("192.0.2.7", "backend_auth_failure")]
    quiet = Counters()
    backend_auth_failure(SecurityEvents(quiet), "web", "192.0.2.7")  # no jail: only counted
    assert quiet.get("backend_auth_failure", "web") == 1
