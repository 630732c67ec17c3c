"""The web application firewall as an inspector of the gate (:mod:`offload.http.gate`).

Theory of operation. A request's WAF session answers the head at once with ``more``: with the
OWASP CRS, requests are scored in phase 1 and refused in phase 2 (after the body), so the
engine's work is one job per request — a new transaction, the head, the body prefix (empty
for a request without one) — run in the worker's :class:`WafPool` when the prefix is held.
The job's result comes back on the event loop; the session turns it into a decision:

    engine intervenes (mode block)            deny (the rule's status, 403), ban offence
    body unparsable, whole body given         deny 400 (a prefix is not refused for it)
    rules matched, no intervention / detect   allow, logged and counted as detected
    pool full, or no answer within timeout    on_overload: deny 503 or allow, counted

Every matched rule id is counted (``offload_waf_rule_matches``); a refusal or a detection is
one security decision (log line with the rule ids and the anomaly score). The anomaly score is
computed from the matched rules' severities with the CRS's default weights (critical 5, error
4, warning 3, notice 2), as the CRS itself adds it up.

A transaction is freed when the exchange ends, or, if a job on it is still running then, when
that job finishes (never under a running call).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from offload.http.gate import ALLOW, MORE, Decision, Reply, Subject, deny
from offload.observe.log import fields
from offload.proto.http_types import Response
from offload.security.waf_engine import Engine, Outcome, RuleMatch, Transaction
from offload.security.waf_rules import BODY_ERROR_RULE, MULTIPART_ERROR_RULE

if TYPE_CHECKING:
    from offload.observe.stats import Counters
    from offload.security.events import SecurityEvents
    from offload.security.waf_config import WafConfig

_log = logging.getLogger("offload.security")

SEVERITY_SCORE = {2: 5, 3: 4, 4: 3, 5: 2}
"""The CRS's default anomaly points per severity (critical, error, warning, notice)."""
MAX_LOGGED_PATH = 256
MAX_LOGGED_RULES = 20


def _evaluation(rule: int) -> bool:
    """The CRS's own bookkeeping rules (blocking evaluation, correlation): not scored."""
    return 949000 <= rule < 950000 or 959000 <= rule < 960000 or 980000 <= rule < 981000


def anomaly_score(matches: tuple[RuleMatch, ...]) -> int:
    return sum(SEVERITY_SCORE.get(m.severity, 0) for m in matches
               if not _evaluation(m.rule) and m.rule not in (BODY_ERROR_RULE,
                                                             MULTIPART_ERROR_RULE))


class WafPool:
    """The engine's threads in one worker, with a bounded queue: a job that would wait beyond
    ``threads + queue`` jobs is refused at once (the caller applies ``on_overload``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, threads: int, queue: int) -> None:
        self._loop = loop
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="offload-waf")
        self.capacity = threads + queue
        self.in_flight = 0
        self.closed = False

    def submit(self, job: Callable[[], Any], done: Callable[[Any, BaseException | None], None]
               ) -> bool:
        """Run ``job`` in a thread, then ``done(result, error)`` on the loop; False: full."""
        if self.closed or self.in_flight >= self.capacity:
            return False
        self.in_flight += 1
        future = self._executor.submit(job)
        future.add_done_callback(lambda f: self._hand_back(f, done))
        return True

    def _hand_back(self, future: Future[Any], done: Callable[[Any, BaseException | None], None]
                   ) -> None:
        try:
            self._loop.call_soon_threadsafe(self._finished, future, done)
        except RuntimeError:  # the loop is closed: the worker is gone
            pass

    def _finished(self, future: Future[Any],
                  done: Callable[[Any, BaseException | None], None]) -> None:
        self.in_flight -= 1
        if future.cancelled():
            done(None, asyncio.CancelledError())
            return
        error = future.exception()
        done(None if error is not None else future.result(), error)

    def close(self) -> None:
        self.closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)


class WafInspector:
    """One frontend's WAF in one worker: its loaded rules, its pool, its reports."""

    def __init__(self, engine: Engine, config: WafConfig, pool: WafPool, *,
                 events: SecurityEvents, counters: Counters, frontend: str) -> None:
        self.name = "waf"
        self.engine = engine
        self.config = config
        self.pool = pool
        self.events = events
        self.counters = counters
        self.frontend = frontend
        self.block = config.mode == "block"

    def begin(self, subject: Subject) -> WafSession:
        return WafSession(self, subject)

    def overload(self, subject: Subject, why: str) -> Decision:
        """The engine could not check this request in time: ``on_overload`` decides."""
        allow = self.config.on_overload == "allow"
        self.counters.inc("waf_check", self.frontend,
                          "overload_allowed" if allow else "overload_denied")
        self.events.decision("waf_overload", why, self.frontend, subject.client,
                             action=self.config.on_overload,
                             request_id=subject.request_id.decode("latin-1"))
        return ALLOW if allow else deny(503, f"waf_overload:{why}")

    def judge(self, subject: Subject, outcome: Outcome, matches: tuple[RuleMatch, ...],
              complete: bool) -> Decision:
        """The request's verdict from the engine's outcome (module docstring)."""
        frontend = self.frontend
        body_error = complete and any(m.rule in (BODY_ERROR_RULE, MULTIPART_ERROR_RULE)
                                      for m in matches)
        matches = tuple(m for m in matches
                        if complete or m.rule not in (BODY_ERROR_RULE, MULTIPART_ERROR_RULE))
        refuse = self.block and (outcome.intervene or body_error)
        if not matches and not refuse:
            self.counters.inc("waf_check", frontend, "allowed")
            return ALLOW
        ids = sorted({m.rule for m in matches if not _evaluation(m.rule)})
        outcome_label = "denied" if refuse else "detected"
        for rule in ids:
            self.counters.inc("waf_rule", frontend, str(rule), outcome_label)
        self.counters.inc("waf_check", frontend, outcome_label)
        score = anomaly_score(matches)
        cause = str(ids[0]) if ids else "engine"
        request = subject.request
        target = request.target.decode("latin-1")
        if len(target) > MAX_LOGGED_PATH:
            target = target[:MAX_LOGGED_PATH] + "..."
        self.events.decision(
            "waf_denied" if refuse else "waf_detected", cause, frontend, subject.client,
            offence="rule_denied" if refuse else None,
            rules=ids[:MAX_LOGGED_RULES], score=score, mode=self.config.mode,
            messages=[m.message for m in matches if not _evaluation(m.rule)][:5],
            method=request.method.decode("latin-1"), path=target,
            request_id=subject.request_id.decode("latin-1"))
        if not refuse:
            return ALLOW
        status = outcome.status if outcome.intervene and 400 <= outcome.status <= 599 else (
            400 if body_error else 403)
        return deny(status, f"waf_denied:{cause}", (("rules", ",".join(map(str, ids))),
                                                    ("score", str(score))))


class WafSession:
    """One request before the WAF (module docstring)."""

    __slots__ = ("_busy", "_closed", "_complete", "_inspector", "_subject", "_tx",
                 "body_limit", "response_body_limit", "timeout", "wants_response")

    def __init__(self, inspector: WafInspector, subject: Subject) -> None:
        self._inspector = inspector
        self._subject = subject
        self._tx: Transaction | None = None
        self._busy = False
        self._closed = False
        self._complete = True
        config = inspector.config
        self.body_limit = config.request_body_limit
        self.wants_response = config.response_headers
        self.response_body_limit = 0
        self.timeout = config.timeout

    def request_head(self, reply: Reply) -> None:
        reply(MORE)  # phase 1 and 2 run together, once the body prefix is held

    def request_body(self, prefix: bytes, complete: bool, reply: Reply) -> None:
        self._complete = complete
        subject = self._subject
        request = subject.request
        headers = list(request.headers)
        if not any(name.lower() == b"host" for name, _ in headers) and request.host:
            headers.insert(0, (b"Host", request.host))
        version = "2.0" if request.version == b"2" else request.version.decode("latin-1")
        engine = self._inspector.engine

        def job() -> tuple[Transaction, Outcome, tuple[RuleMatch, ...]]:
            tx = engine.transaction()
            try:
                head = tx.head((subject.client, subject.client_port),
                               ("127.0.0.1", subject.server_port), uri=request.target,
                               method=request.method, version=version, headers=headers)
                if head.intervene:
                    return tx, head, head.matches
                body = tx.body(prefix)
            except BaseException:
                tx.close()
                raise
            return tx, body, head.matches + body.matches

        self._run(job, reply)

    def response_head(self, response: Response, reply: Reply) -> None:
        tx = self._tx
        if tx is None:
            reply(ALLOW)
            return
        version = "2.0" if self._subject.request.version == b"2" else "1.1"
        headers = list(response.headers)

        def job() -> tuple[Transaction, Outcome, tuple[RuleMatch, ...]]:
            outcome = tx.response_head(response.status, f"HTTP/{version}", headers)
            return tx, outcome, outcome.matches

        self._run(job, reply)

    def response_body(self, prefix: bytes, complete: bool, reply: Reply) -> None:
        reply(ALLOW)  # response bodies are not given to the engine (SecResponseBodyAccess Off)

    def _run(self, job: Callable[[], tuple[Transaction, Outcome, tuple[RuleMatch, ...]]],
             reply: Reply) -> None:
        inspector = self._inspector

        def done(result: tuple[Transaction, Outcome, tuple[RuleMatch, ...]] | None,
                 error: BaseException | None) -> None:
            self._busy = False
            if result is not None:
                self._tx = result[0]
            if self._closed:
                self._free()
                return
            if result is None:
                inspector.counters.inc("waf_check", inspector.frontend, "error")
                _log.error("the WAF engine failed", extra=fields(
                    frontend=inspector.frontend, error=repr(error)))
                reply(inspector.overload(self._subject, "engine_error"))
                return
            _, outcome, matches = result
            reply(inspector.judge(self._subject, outcome, matches, self._complete))

        self._busy = True
        if not inspector.pool.submit(job, done):
            self._busy = False
            reply(inspector.overload(self._subject, "pool_full"))

    def on_timeout(self) -> Decision:
        return self._inspector.overload(self._subject, "timeout")

    def close(self) -> None:
        self._closed = True
        if not self._busy:
            self._free()

    def _free(self) -> None:
        tx, self._tx = self._tx, None
        if tx is not None:
            tx.close()


__all__ = ["SEVERITY_SCORE", "WafInspector", "WafPool", "WafSession", "anomaly_score"]
