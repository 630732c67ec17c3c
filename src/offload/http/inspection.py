"""A frontend's inspection rules on the request path, and the security events requests raise.

:class:`Inspection` puts a compiled :class:`~offload.security.rules.RuleSet` between the parsed
request and the backend: it evaluates the head (and, when a rule asks for it, the body's first
bytes), reports every rule that fired as one security decision (counted, logged with the
client and the rule, a ban offence on deny), and rewrites the head's tag header. It does no
I/O. :class:`RulesInspector` makes it one of the frontend's inspectors behind the exchange's
inspection gate (:mod:`offload.http.gate`), which holds the body prefix and answers 403.

Decisions, by what the rule says and whether the rule set is in dry-run::

    action   enforced                       dry_run (the line says dry_run = true)
    deny     rule_denied (403, offence)     rule_logged (forwarded)
    log      rule_logged                    rule_logged
    tag      rule_tagged (header added)     rule_logged (no header added)

The client a rule and a ban see is the connection's peer, or, when the peer is one of
``trusted_proxies``, the address it forwarded (:func:`forwarded_client`).
"""

from __future__ import annotations

from ipaddress import ip_address

from offload.http.gate import ALLOW, MORE, Decision, Reply, Subject, deny
from offload.proto.fingerprint import Fingerprints
from offload.proto.forwarding import ForwardPolicy
from offload.proto.http_types import Headers, Request, Response
from offload.security.events import SecurityEvents
from offload.security.rules import Match, RuleSet, Verdict

MAX_LOGGED_PATH = 256
"""The request target is cut to this many characters in a decision's log line."""

_KINDS = {"deny": "rule_denied", "log": "rule_logged", "tag": "rule_tagged"}


def forwarded_client(headers: Headers, policy: ForwardPolicy, peer: str) -> str:
    """The client a trusted proxy speaks for: the last X-Forwarded-For hop that is not itself a
    trusted proxy (as nginx's ``real_ip_recursive``), else the first hop; ``peer`` when there
    is none, or when the hop to use is not an IP address (nothing to match or ban)."""
    hops = [hop.strip() for name, value in headers if name.lower() == b"x-forwarded-for"
            for hop in value.split(b",")]
    chosen = peer
    for hop in reversed(hops):
        text = hop.decode("latin-1")
        try:
            ip_address(text)
        except ValueError:
            return peer
        chosen = text
        if not policy.trusts(text):
            break
    return chosen


def denied_reason(verdict: Verdict) -> str:
    """The access log's reason for a request a rule denied."""
    return f"rule_denied:{verdict.denied_by}"


class Inspection:
    """The rules of one frontend, shared by its connections in one worker."""

    __slots__ = ("events", "frontend", "rules")

    def __init__(self, rules: RuleSet, events: SecurityEvents, frontend: str) -> None:
        self.rules = rules
        self.events = events
        self.frontend = frontend

    @property
    def body_bytes(self) -> int:
        """How much of a body is held back while the body rules decide."""
        return self.rules.body_inspect_bytes

    def head(self, client: str, request: Request, request_id: bytes,
             fingerprints: Fingerprints | None = None) -> Verdict:
        """Evaluate the head; if ``needs_body``, call :meth:`body` with the body's prefix."""
        verdict = self.rules.check_request(client, request, fingerprints)
        if verdict.matches:
            self._report(verdict.matches, client, request, request_id)
        return verdict

    def body(self, prefix: bytes, verdict: Verdict, client: str, request: Request,
             request_id: bytes) -> Verdict:
        """Finish a verdict with the body's first ``body_bytes`` (all of it if shorter)."""
        done = self.rules.check_body(prefix, verdict)
        new = done.matches[len(verdict.matches):]
        if new:
            self._report(new, client, request, request_id)
        return done

    def forward(self, request: Request, verdict: Verdict) -> None:
        """Rewrite the request's tag header for the backend: the client's own is dropped, so the
        backend can trust it, and the tags of the rules that fired are added."""
        request.headers, added = self.rules.forward_headers(request.headers, verdict)
        request.added += added

    def _report(self, matches: tuple[Match, ...], client: str, request: Request,
                request_id: bytes) -> None:
        target = request.target.decode("latin-1")
        if len(target) > MAX_LOGGED_PATH:
            target = target[:MAX_LOGGED_PATH] + "..."
        for match in matches:
            enforced = match.enforced
            self.events.decision(
                _KINDS[match.action] if enforced else "rule_logged", match.rule, self.frontend,
                client, offence="rule_denied" if enforced and match.action == "deny" else None,
                action=match.action, dry_run=not enforced,
                method=request.method.decode("latin-1"), path=target,
                request_id=request_id.decode("latin-1"))


class RulesInspector:
    """The rules as an inspector of the gate: answered at once, on the event loop."""

    __slots__ = ("inspection", "name")

    def __init__(self, inspection: Inspection) -> None:
        self.inspection = inspection
        self.name = "rules"

    def begin(self, subject: Subject) -> RulesSession:
        return RulesSession(self.inspection, subject)


class RulesSession:
    """One request before the rules: the head's verdict, finished with the body if a rule
    looks at it; the tag header is rewritten once the rules are done."""

    __slots__ = ("_inspection", "_subject", "_verdict", "body_limit")

    wants_response = False
    response_body_limit = 0
    timeout = 3600.0
    """Never reached: the rules answer before the check returns."""

    def __init__(self, inspection: Inspection, subject: Subject) -> None:
        self._inspection = inspection
        self._subject = subject
        self._verdict: Verdict | None = None
        self.body_limit = inspection.body_bytes

    def request_head(self, reply: Reply) -> None:
        subject = self._subject
        verdict = self._inspection.head(subject.client, subject.request, subject.request_id,
                                        subject.fingerprints)
        if verdict.deny:
            reply(deny(403, denied_reason(verdict)))
        elif verdict.needs_body:
            self._verdict = verdict
            reply(MORE)
        else:
            self._inspection.forward(subject.request, verdict)
            reply(ALLOW)

    def request_body(self, prefix: bytes, complete: bool, reply: Reply) -> None:
        subject = self._subject
        verdict = self._verdict
        assert verdict is not None
        self._verdict = None
        verdict = self._inspection.body(prefix, verdict, subject.client, subject.request,
                                        subject.request_id)
        if verdict.deny:
            reply(deny(403, denied_reason(verdict)))
        else:
            self._inspection.forward(subject.request, verdict)
            reply(ALLOW)

    def response_head(self, response: Response, reply: Reply) -> None:
        reply(ALLOW)

    def response_body(self, prefix: bytes, complete: bool, reply: Reply) -> None:
        reply(ALLOW)

    def on_timeout(self) -> Decision:
        return ALLOW

    def close(self) -> None:
        self._verdict = None


def backend_auth_failure(events: SecurityEvents, frontend: str, client: str) -> None:
    """The backend answered 401 or 403: count it and tell the ban jail (a login being guessed
    shows up as a run of these). No log line: the access log already has the status."""
    events.counters.inc("backend_auth_failure", frontend)
    if events.offence is not None:
        events.offence(client, "backend_auth_failure")


__all__ = ["Inspection", "RulesInspector", "RulesSession", "backend_auth_failure",
           "denied_reason", "forwarded_client"]
