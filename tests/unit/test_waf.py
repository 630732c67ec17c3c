"""The WAF below the request path: its configuration (offload's words), the directives it turns
into, the engine through offload's binding with the CRS (exclusions, a client that forges a
rule id in its data, a body cut at the limit), the verdicts, and the pool's bound."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from offload.http import gate
from offload.http.waf import WafInspector, WafPool, anomaly_score
from offload.observe.stats import Counters
from offload.proto.http_types import Request
from offload.security.bans import BanEvent
from offload.security.events import SecurityEvents
from offload.security.waf_config import WafConfig
from offload.security.waf_engine import Engine, Outcome, RuleMatch, binding_problem
from offload.security.waf_rules import BODY_ERROR_RULE, engine_directives, plan_waf

CRS = Path("/usr/share/modsecurity-crs/rules")


def needs_engine() -> None:
    problem = binding_problem()
    if problem is not None:
        pytest.fail(problem)
    if not CRS.is_dir():
        pytest.fail("the OWASP CRS is not installed; install it with: "
                    "apt-get install -y modsecurity-crs")


# --- configuration ----------------------------------------------------------------------------

@pytest.mark.parametrize(("settings", "words"), [
    ({"crs": "none"}, "the WAF would have nothing to check"),
    ({"paranoia_level": 0}, "paranoia_level"),
    ({"request_body_limit": "2MiB"}, "hold between 1 byte and 1MiB"),
    ({"exclusions": [{"rules": []}]}, "an exclusion names no rule"),
    ({"exclusions": [{"rules": [942100], "path": "/a\" ,ctl:ruleEngine=Off"}]},
     "is not a path prefix"),
    ({"exclusions": [{"rules": [942100], "target": "ARGS:q,ctl:ruleEngine=Off"}]},
     "is not a variable a rule can be excluded from"),
    ({"on_overload": "maybe"}, "on_overload"),
])
def test_bad_settings_are_refused_in_offloads_words(settings, words):
    with pytest.raises(ValidationError) as error:
        WafConfig.model_validate(settings)
    assert words in str(error.value)


def test_the_mode_and_body_limit_become_engine_settings():
    text = engine_directives(WafConfig(mode="detect", request_body_limit="8KiB"))
    assert "SecRuleEngine DetectionOnly\n" in text
    assert "SecRequestBodyLimit 8192\n" in text
    assert "SecRequestBodyLimitAction ProcessPartial\n" in text
    assert "SecRuleEngine On\n" in engine_directives(WafConfig())


def test_exclusions_become_directives_around_the_crs(tmp_path):
    needs_engine()
    config = WafConfig(exclusions=[{"rules": [942100, 942190], "path": "/api/search"},
                                   {"rules": [941100], "target": "ARGS:html"},
                                   {"rules": [920350]}])
    plan, issues = plan_waf(config, tmp_path, "frontends[0].waf")
    assert plan is not None and issues == []
    text = [value for kind, value in plan.sources if kind == "text"]
    files = [value for kind, value in plan.sources if kind == "file"]
    before = next(t for t in text if "@beginsWith /api/search" in t)
    assert "ctl:ruleRemoveById=942100,ctl:ruleRemoveById=942190" in before
    after = text[-1]
    assert 'SecRuleUpdateTargetById 941100 "!ARGS:html"' in after
    assert "SecRuleRemoveById 920350" in after
    crs_files = [f for f in files if f.startswith(str(CRS))]
    assert plan.sources.index(("text", before)) < plan.sources.index(("file", crs_files[0]))
    assert plan.sources.index(("text", after)) > plan.sources.index(("file", crs_files[-1]))


def test_missing_rule_files_are_named(tmp_path):
    plan, issues = plan_waf(WafConfig(crs="none", rules=["waf/*.conf", "local.conf"]),
                            tmp_path, "frontends[0].waf")
    assert plan is None
    assert [issue.where for issue in issues] == ["frontends[0].waf.rules[0]",
                                                 "frontends[0].waf.rules[1]"]


def test_a_missing_binding_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "offload.security._modsecurity", None)
    problem = binding_problem()
    assert problem is not None
    assert "apt-get install libmodsecurity-dev modsecurity-crs" in problem


# --- the engine with the CRS -------------------------------------------------------------------

_ENGINES: dict[str, Engine] = {}


def engine(**settings: Any) -> Engine:
    needs_engine()
    key = repr(sorted(settings.items()))
    if key not in _ENGINES:
        plan, issues = plan_waf(WafConfig.model_validate(settings), Path("."), "waf")
        assert plan is not None, issues
        _ENGINES[key] = Engine(list(plan.sources))
    return _ENGINES[key]


def run(target: bytes, body: bytes = b"", content_type: bytes = b"", **settings: Any
        ) -> tuple[Outcome, tuple[RuleMatch, ...]]:
    tx = engine(**settings).transaction()
    try:
        headers = [(b"Host", b"shop.example"), (b"User-Agent", b"Mozilla/5.0"),
                   (b"Accept", b"*/*")]
        if body:
            headers += [(b"Content-Type", content_type),
                        (b"Content-Length", b"%d" % len(body))]
        head = tx.head(("192.0.2.9", 50000), ("127.0.0.1", 443), uri=target,
                       method=b"POST" if body else b"GET", version="1.1", headers=headers)
        outcome = tx.body(body)
        return outcome, head.matches + outcome.matches
    finally:
        tx.close()


def test_an_exclusion_lets_one_parameter_through_and_no_other():
    outcome, _ = run(b"/search?q=1%27%20OR%20%271%27=%271")
    assert outcome.intervene and outcome.status == 403
    tuned = {"exclusions": [{"rules": [942100], "target": "ARGS:q"}]}
    outcome, matches = run(b"/search?q=1%27%20OR%20%271%27=%271", **tuned)
    assert 942100 not in [m.rule for m in matches]
    outcome, matches = run(b"/search?id=1%27%20OR%20%271%27=%271", **tuned)
    assert outcome.intervene and 942100 in [m.rule for m in matches]


def test_a_client_cannot_forge_a_rule_id_in_its_data():
    # the engine's text log quotes matched data: a parser of that line would believe the
    # client's [id "..."]; offload reads the rule's own id
    forged = b'/x?a=%3Cscript%3E%5Bid%20%22123456%22%5D%20%5Bmsg%20%22x%22%5D'
    _, matches = run(forged)
    ids = {m.rule for m in matches}
    assert ids and 123456 not in ids
    assert all(900000 <= rule < 1000000 for rule in ids), "only the CRS's own rules"


def test_a_body_cut_at_the_limit_is_marked_not_refused_by_itself():
    whole = b'{"a": "x" "b"'
    outcome, matches = run(b"/api", whole, b"application/json")
    assert BODY_ERROR_RULE in [m.rule for m in matches]
    assert not outcome.intervene, "offload decides on a body error, knowing if it is whole"


def test_the_threshold_reaches_the_crs():
    sqli = b"/q?id=1%27%20OR%20%271%27=%271"
    assert run(sqli)[0].intervene
    assert not run(sqli, anomaly_threshold=1000)[0].intervene, "the threshold is the frontend's"


# --- verdicts ----------------------------------------------------------------------------------

class Sink:
    def __init__(self) -> None:
        self.offences: list[tuple[str, BanEvent]] = []

    def __call__(self, client: str, event: BanEvent) -> None:
        self.offences.append((client, event))


def inspector(mode: str = "block") -> tuple[WafInspector, Counters, Sink]:
    counters, sink = Counters(), Sink()
    config = WafConfig.model_validate({"mode": mode})
    pool: Any = None
    return (WafInspector(Any, config, pool, events=SecurityEvents(counters, sink),  # type: ignore[arg-type]
                         counters=counters, frontend="web"), counters, sink)


def subject() -> gate.Subject:
    request = Request(method=b"GET", target=b"/x?id=1", version=b"1.1",
                      headers=[(b"Host", b"a")], host=b"a")
    return gate.Subject("web", "192.0.2.9", 5000, 443, request, b"rid-9")


SQLI = (RuleMatch(942100, 2, False, 2, "SQL Injection Attack Detected via libinjection"),
        RuleMatch(949110, 2, True, 2, "Inbound Anomaly Score Exceeded (Total Score: 5)"))


def test_a_refusal_is_counted_per_rule_and_is_an_offence():
    waf, counters, sink = inspector()
    decision = waf.judge(subject(), Outcome(True, 403, SQLI), SQLI, complete=True)
    assert (decision.action, decision.status, decision.reason) == ("deny", 403,
                                                                   "waf_denied:942100")
    assert dict(decision.details) == {"rules": "942100", "score": "5"}
    assert counters.get("waf_rule", "web", "942100", "denied") == 1
    assert counters.get("waf_rule", "web", "949110", "denied") == 0, "bookkeeping not counted"
    assert sink.offences == [("192.0.2.9", "rule_denied")]


def test_detect_mode_allows_and_counts():
    waf, counters, sink = inspector("detect")
    decision = waf.judge(subject(), Outcome(False, 200, SQLI), SQLI, complete=True)
    assert decision is gate.ALLOW
    assert counters.get("waf_rule", "web", "942100", "detected") == 1
    assert sink.offences == []


def test_a_body_error_refuses_only_a_whole_body():
    waf, _, _ = inspector()
    error = (RuleMatch(BODY_ERROR_RULE, 0, False, 2, "offload: the request body could not be "
                       "parsed"),)
    assert waf.judge(subject(), Outcome(False, 200, error), error, complete=False) is gate.ALLOW
    decision = waf.judge(subject(), Outcome(False, 200, error), error, complete=True)
    assert (decision.action, decision.status) == ("deny", 400)


def test_the_anomaly_score_uses_the_crs_weights():
    matches = (RuleMatch(1, 2, False, 2, ""), RuleMatch(2, 4, False, 2, ""),
               RuleMatch(3, 5, False, 2, ""), RuleMatch(949110, 2, True, 2, ""))
    assert anomaly_score(matches) == 5 + 3 + 2


# --- the pool ---------------------------------------------------------------------------------

def test_the_pool_refuses_beyond_its_bound_and_hands_results_back_on_the_loop():
    loop = asyncio.new_event_loop()
    try:
        pool = WafPool(loop, threads=1, queue=1)
        release = threading.Event()
        results: list[tuple[Any, BaseException | None, bool]] = []
        arrived = asyncio.Event()

        def done(result: Any, error: BaseException | None) -> None:
            results.append((result, error, threading.current_thread() is main))
            arrived.set()

        main = threading.current_thread()
        assert pool.submit(lambda: release.wait(10) and "first", done)
        assert pool.submit(lambda: "second", done)
        assert not pool.submit(lambda: "third", done), "threads + queue jobs at most"
        release.set()
        loop.run_until_complete(_until(arrived, results, 2))
        assert results == [("first", None, True), ("second", None, True)]
        assert pool.in_flight == 0
        assert pool.submit(lambda: 1 / 0, done)
        loop.run_until_complete(_until(arrived, results, 3))
        assert isinstance(results[-1][1], ZeroDivisionError)
        pool.close()
    finally:
        loop.close()


async def _until(arrived: asyncio.Event, results: list[Any], count: int) -> None:
    """Wait (10 s at most) until ``count`` results were handed back."""
    async with asyncio.timeout(10):
        while len(results) < count:
            await arrived.wait()
            arrived.clear()
