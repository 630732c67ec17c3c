"""The inspection rules engine (sans-IO): a compiled rule set answers "what to do with this
request?" from its head, then, for rules that also look at the body, from the body's prefix.

Theory of operation, for the request path:

1. ``verdict = rules.check_head(client, method, path, query, headers)`` (or
   :meth:`RuleSet.check_request`). Every rule is evaluated, so every match is logged and
   counted, not just the first. If ``verdict.deny``, answer 403 and do not read the body.
2. If ``verdict.needs_body`` (a rule's head conditions matched and it has a body condition),
   hold the head and the body's first ``rules.body_inspect_bytes`` bytes (or the whole body,
   if shorter; ``b""`` if there is none), then ``verdict = rules.check_body(prefix, verdict)``.
   That is all that is ever buffered; the rest of the body streams as usual.
3. Send the head with the headers ``rules.forward_headers(headers, verdict)`` returns, plus
   the tag field it returns written after the client's fields are filtered — always, even
   when no rule matched, because it also drops a tag header sent by the client, so the
   backend can trust it.

How values are matched, to defeat simple evasion without surprising the operator: a path is
matched as sent, percent-decoded once, and decoded with dot segments and empty segments
removed (``/a/./b//../c`` becomes ``/a/c``); a query as sent and decoded once with ``+`` as a
space (as application frameworks read it); a pattern matches when it matches any of these
forms. A body is matched as sent, and also decoded when the request says it is a form
(``application/x-www-form-urlencoded``). Header values are matched as sent. Bytes are read as
UTF-8, invalid bytes kept as lone surrogates (``\\udc80``-``\\udcff``), so nothing is lost and
nothing raises. Each value is cut at ``MAX_INSPECT`` characters; the HTTP parser's limits are
far lower, this only bounds the cost for callers that bypass it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from urllib.parse import unquote_to_bytes

from offload.proto.fingerprint import Fingerprints
from offload.proto.http_types import Headers, Request, header_value
from offload.security.builtin_rules import builtin_set
from offload.security.rules_config import RuleAction, RuleConfig, RuleSetConfig, ja4_regex

MAX_INSPECT = 64 * 1024
_FORM = b"application/x-www-form-urlencoded"

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network


def _text(raw: bytes) -> str:
    return raw[:MAX_INSPECT].decode("utf-8", "surrogateescape")


def _unique(*forms: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(forms))


def normalize_path(path: str) -> str:
    """Remove dot segments (RFC 3986 section 5.2.4) and empty segments, keeping a final "/"."""
    if "/." not in path and "//" not in path:
        return path
    out: list[str] = []
    for part in path.split("/"):
        if part == "..":
            if out:
                out.pop()
        elif part not in ("", "."):
            out.append(part)
    text = "/" + "/".join(out)
    return text + "/" if out and path.endswith(("/", "/.", "/..")) else text


def path_forms(raw: bytes) -> tuple[str, ...]:
    """The path as sent, decoded once, and decoded and normalised (duplicates dropped)."""
    sent = _text(raw)
    decoded = _text(unquote_to_bytes(raw[:MAX_INSPECT])) if b"%" in raw else sent
    return _unique(sent, decoded, normalize_path(decoded))


def query_forms(raw: bytes) -> tuple[str, ...]:
    """The query as sent and decoded once, ``+`` read as a space."""
    sent = _text(raw)
    if b"%" not in raw and b"+" not in raw:
        return (sent,)
    return _unique(sent, _text(unquote_to_bytes(raw[:MAX_INSPECT].replace(b"+", b" "))))


def client_address(client: str | Address | None) -> Address | None:
    """The client as an address (an IPv4-mapped IPv6 address as IPv4), None if not an IP."""
    if isinstance(client, str):
        try:
            client = ip_address(client)
        except ValueError:
            return None
    if isinstance(client, IPv6Address) and client.ipv4_mapped is not None:
        return client.ipv4_mapped
    return client


@dataclass(frozen=True, slots=True)
class _Head:
    address: Address | None
    method: bytes
    paths: tuple[str, ...]
    queries: tuple[str, ...]
    headers: dict[bytes, list[str]]
    ja4: str | None = None
    ja3: str | None = None


def _within(address: Address | None, networks: tuple[Network, ...]) -> bool:
    return address is not None and any(address in network for network in networks)


def _search(pattern: re.Pattern[str], forms: tuple[str, ...] | list[str]) -> bool:
    return any(pattern.search(form) for form in forms)


@dataclass(frozen=True, slots=True)
class Rule:
    """A rule ready to evaluate: patterns compiled, methods as bytes, header names lower-case."""

    name: str
    action: RuleAction
    tag: str
    client: tuple[Network, ...] | None = None
    not_client: tuple[Network, ...] | None = None
    methods: frozenset[bytes] | None = None
    method_not_in: frozenset[bytes] | None = None
    path: re.Pattern[str] | None = None
    query: re.Pattern[str] | None = None
    headers: tuple[tuple[bytes, re.Pattern[str]], ...] = ()
    body: re.Pattern[str] | None = None
    ja4: re.Pattern[str] | None = None
    not_ja4: re.Pattern[str] | None = None
    ja3: frozenset[str] | None = None
    not_ja3: frozenset[str] | None = None

    @property
    def needs_ja4(self) -> bool:
        return self.ja4 is not None or self.not_ja4 is not None

    @property
    def needs_ja3(self) -> bool:
        return self.ja3 is not None or self.not_ja3 is not None

    @classmethod
    def compile(cls, config: RuleConfig, action: RuleAction | None = None) -> Rule:
        """Compile a checked rule; ``action`` overrides the configured one (built-in sets)."""

        def methods(names: tuple[str, ...] | None) -> frozenset[bytes] | None:
            return None if names is None else frozenset(name.encode("ascii") for name in names)

        def pattern(text: str | None) -> re.Pattern[str] | None:
            return None if text is None else re.compile(text)

        def fingerprints(values: tuple[str, ...] | None) -> re.Pattern[str] | None:
            return None if values is None else re.compile(ja4_regex(values))

        def digests(values: tuple[str, ...] | None) -> frozenset[str] | None:
            return None if values is None else frozenset(values)

        return cls(
            name=config.name, action=action or config.action, tag=config.tag or config.name,
            client=config.client, not_client=config.not_client,
            methods=methods(config.methods), method_not_in=methods(config.method_not_in),
            path=pattern(config.path), query=pattern(config.query), body=pattern(config.body),
            headers=tuple((name.lower().encode("ascii"), re.compile(text))
                          for name, text in (config.header or {}).items()),
            ja4=fingerprints(config.ja4), not_ja4=fingerprints(config.not_ja4),
            ja3=digests(config.ja3), not_ja3=digests(config.not_ja3),
        )

    def head_matches(self, head: _Head) -> bool:
        """Whether every condition except the body's holds (cheap ones first)."""
        if self.methods is not None and head.method not in self.methods:
            return False
        if self.method_not_in is not None and head.method in self.method_not_in:
            return False
        if self.client is not None and not _within(head.address, self.client):
            return False
        if self.not_client is not None and _within(head.address, self.not_client):
            return False
        if self.ja4 is not None and (head.ja4 is None or not self.ja4.fullmatch(head.ja4)):
            return False
        if self.not_ja4 is not None and head.ja4 is not None and self.not_ja4.fullmatch(head.ja4):
            return False
        if self.ja3 is not None and head.ja3 not in self.ja3:
            return False
        if self.not_ja3 is not None and head.ja3 in self.not_ja3:
            return False
        if self.path is not None and not _search(self.path, head.paths):
            return False
        if self.query is not None and not _search(self.query, head.queries):
            return False
        return all(_search(pattern, head.headers.get(name, [])) for name, pattern in self.headers)


@dataclass(frozen=True, slots=True)
class Match:
    """One rule that fired: what the logs and counters record."""

    rule: str
    action: RuleAction
    enforced: bool
    """False in dry-run: the action was only logged."""

    @property
    def outcome(self) -> str:
        """A counter label: the action taken, or ``dry-run``."""
        return self.action if self.enforced else "dry-run"

    def log_fields(self, client: str) -> dict[str, object]:
        """The fields of the one structured line for this decision:
        ``log.warning("rule matched", extra=fields(**match.log_fields(client)))``."""
        return {"client": client, "rule": self.rule, "action": self.action,
                "dry_run": not self.enforced}


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with a request: deny it (403), tag it, or let it through."""

    matches: tuple[Match, ...] = ()
    deny: bool = False
    tags: tuple[str, ...] = ()
    pending: tuple[Rule, ...] = ()
    """Rules whose head conditions matched and that wait for the body prefix."""
    form_body: bool = False

    @property
    def needs_body(self) -> bool:
        return bool(self.pending) and not self.deny

    @property
    def denied_by(self) -> str | None:
        """The first rule that denied the request, for the 403's log line."""
        return next((m.rule for m in self.matches if m.enforced and m.action == "deny"), None)


ALLOW = Verdict()


class RuleSet:
    """A frontend's compiled rules; immutable, shared by every request."""

    __slots__ = ("_header_names", "_needs_ja3", "_needs_ja4", "_needs_path", "_needs_query",
                 "_tag_key", "body_inspect_bytes", "dry_run", "needs_body", "rules", "tag_header")

    def __init__(self, rules: tuple[Rule, ...], *, dry_run: bool = False,
                 body_inspect_bytes: int = 8 * 1024, tag_header: str = "X-Offload-Tag") -> None:
        self.rules = rules
        self.dry_run = dry_run
        self.body_inspect_bytes = body_inspect_bytes
        self.tag_header = tag_header.encode("ascii")
        self._tag_key = self.tag_header.lower()
        self.needs_body = any(rule.body is not None for rule in rules)
        """Whether any request may have to hold back its body prefix."""
        self._needs_path = any(rule.path is not None for rule in rules)
        self._needs_query = any(rule.query is not None for rule in rules)
        self._header_names = frozenset(name for rule in rules for name, _ in rule.headers)
        self._needs_ja4 = any(rule.needs_ja4 for rule in rules)
        self._needs_ja3 = any(rule.needs_ja3 for rule in rules)

    @property
    def needs_fingerprints(self) -> bool:
        """Whether a rule looks at the client's TLS fingerprints."""
        return self._needs_ja4 or self._needs_ja3

    def check_head(self, client: str | Address | None, method: bytes, path: bytes, query: bytes,
                   headers: Headers, *, ja4: str | None = None, ja3: str | None = None
                   ) -> Verdict:
        """Evaluate every rule against the request head; ``client`` is the address the caller
        trusts as the client's (after any trusted proxies), ``ja4``/``ja3`` the fingerprints
        of the connection's TLS handshake (None: unknown)."""
        if not self.rules:
            return ALLOW
        found: dict[bytes, list[str]] = {}
        for name, value in headers:
            key = name.lower()
            if key in self._header_names:
                found.setdefault(key, []).append(_text(value))
        head = _Head(client_address(client), method,
                     path_forms(path) if self._needs_path else (),
                     query_forms(query) if self._needs_query else (), found, ja4, ja3)
        fired: list[Rule] = []
        pending: list[Rule] = []
        for rule in self.rules:
            if rule.head_matches(head):
                (pending if rule.body is not None else fired).append(rule)
        form = bool(pending) and (header_value(headers, b"content-type") or b"").lower().startswith(_FORM)
        return self._verdict(ALLOW, fired, tuple(pending), form)

    def check_request(self, client: str | Address | None, request: Request,
                      fingerprints: Fingerprints | None = None) -> Verdict:
        """:meth:`check_head` for a parsed request head; ``fingerprints`` are the TLS
        connection's, asked for their values only when a rule looks at them."""
        path, _, query = request.target.partition(b"?")
        ja4 = ja3 = None
        if fingerprints is not None:
            ja4 = fingerprints.ja4 if self._needs_ja4 else None
            ja3 = fingerprints.ja3 if self._needs_ja3 else None
        return self.check_head(client, request.method, path, query, request.headers,
                               ja4=ja4, ja3=ja3)

    def check_body(self, prefix: bytes, head: Verdict) -> Verdict:
        """Finish ``head`` (from :meth:`check_head`) with the body's first bytes; only the first
        ``body_inspect_bytes`` of ``prefix`` are looked at."""
        if not head.pending:
            return head
        raw = prefix[: self.body_inspect_bytes]
        forms = [_text(raw)]
        if head.form_body and (b"%" in raw or b"+" in raw):
            forms.append(_text(unquote_to_bytes(raw.replace(b"+", b" "))))
        fired = [rule for rule in head.pending if rule.body is not None and _search(rule.body, forms)]
        return self._verdict(head, fired, (), False)

    def forward_headers(self, headers: Headers, verdict: Verdict
                        ) -> tuple[Headers, tuple[tuple[bytes, bytes], ...]]:
        """The client's headers without its own tag header, and the tag field to add (none
        when no tag rule fired)."""
        kept = [(name, value) for name, value in headers if name.lower() != self._tag_key]
        if not verdict.tags:
            return kept, ()
        return kept, ((self.tag_header, ", ".join(verdict.tags).encode("ascii")),)

    def _verdict(self, before: Verdict, fired: list[Rule], pending: tuple[Rule, ...],
                 form: bool) -> Verdict:
        if not fired and not pending and before is ALLOW:
            return ALLOW
        enforce = not self.dry_run
        new = tuple(Match(rule.name, rule.action, enforce) for rule in fired)
        tags = before.tags
        if enforce:
            tags = tuple(dict.fromkeys(tags + tuple(r.tag for r in fired if r.action == "tag")))
        deny = before.deny or (enforce and any(rule.action == "deny" for rule in fired))
        return Verdict(before.matches + new, deny, tags, pending, form)


def compile_rules(config: RuleSetConfig) -> RuleSet:
    """Compile a checked rule set once, at load: the operator's rules, then the built-ins."""
    rules = [Rule.compile(rule) for rule in config.rules]
    for name in config.builtin:
        rules.extend(Rule.compile(rule, config.builtin_action) for rule in builtin_set(name))
    return RuleSet(tuple(rules), dry_run=config.dry_run,
                   body_inspect_bytes=config.body_inspect_bytes, tag_header=config.tag_header)


__all__ = ["ALLOW", "MAX_INSPECT", "Match", "Rule", "RuleSet", "Verdict", "compile_rules"]
