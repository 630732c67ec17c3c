"""The inspection rules as configured: typed, frozen models checked before anything runs.

A rule matches when every condition it gives matches (AND); a rule set adds the built-in sets
to enable, dry-run, the body prefix size and the tag header. Every pattern is compiled here
once, so a bad one is a configuration error naming the rule; :mod:`offload.security.rules`
compiles the checked config into the form the request path evaluates.

Standalone on purpose (it imports nothing from :mod:`offload.config.model`), so the frontend
model can embed :class:`RuleSetConfig` without an import cycle.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from ipaddress import IPv4Network, IPv6Network
from typing import Annotated, Literal

from pydantic import (
    BeforeValidator,
    Field,
    PlainValidator,
    Strict,
    ValidationInfo,
    field_validator,
    model_validator,
)

from offload.config.base import Invalid, Model, form, show
from offload.config.units import parse_network, parse_size

RuleAction = Literal["deny", "log", "tag"]
BuiltinSet = Literal["path-traversal", "sqli", "xss", "scanners", "cookies"]
BUILTIN_SET_NAMES: tuple[str, ...] = ("path-traversal", "sqli", "xss", "scanners", "cookies")
BUILTIN_PREFIX = "builtin:"
"""Reserved for the built-in rules' names, so a log line always says whose rule fired."""

MAX_BODY_INSPECT = 128 * 1024
"""The body prefix is held back from the backend while it is checked: bounded per request."""

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TAG_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")
_RESERVED_HEADERS = frozenset({
    "connection", "content-length", "transfer-encoding", "host", "te", "trailer", "upgrade",
    "keep-alive", "proxy-connection", "expect", "content-type", "cookie",
})
"""Framing, hop-by-hop and content fields: tagging with one of these would change how the
backend reads the request (a smuggling vector), so they cannot be the tag header."""


def _method(value: object) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise Invalid(f"{show(value)} is not an HTTP method", "write a method like \"GET\"")
    if value != value.upper():
        raise Invalid(f"{show(value)}: methods are case-sensitive", f"write \"{value.upper()}\"")
    return value


def _body_size(value: object) -> int:
    size = parse_size(value)
    if not 1 <= size <= MAX_BODY_INSPECT:
        raise Invalid(f"{show(value)} is out of range", "inspect between 1 byte and 128KiB of a body")
    return size


def check_pattern(rule: str, key: str, pattern: str) -> str:
    """Compile ``pattern`` or raise a ValueError naming the rule, the pattern and the fix."""
    try:
        re.compile(pattern)
    except re.error as error:
        raise Invalid(
            f"rule \"{rule}\": {key} pattern {pattern!r} is not a valid regular expression "
            f"({error})", "fix the pattern (Python re syntax) or escape special characters "
            "with a backslash") from None
    return pattern


_JA4 = re.compile(r"[tqd](13|12|11|10|s3|s2|d1|d2|d3|00)[di][0-9]{4}[0-9A-Za-z]{2}"
                  r"_[0-9a-f]{12}_[0-9a-f]{12}")
_JA4_PATTERN = re.compile(r"[0-9A-Za-z_*]{1,64}")
_JA3 = re.compile(r"[0-9a-f]{32}")
JA4_EXAMPLE = "t13d1516h2_8daaf6152771_e5627efa2ab1"


def _ja4(value: object) -> str:
    """A JA4 fingerprint, or a pattern of one with ``*`` standing for any characters."""
    if isinstance(value, str) and (("*" in value and _JA4_PATTERN.fullmatch(value))
                                   or _JA4.fullmatch(value)):
        return value
    raise Invalid(f"{show(value)} is not a JA4 fingerprint",
                  f"write one like \"{JA4_EXAMPLE}\", or a pattern with * for any characters, "
                  "like \"t13d*_8daaf6152771_*\"")


def _ja3(value: object) -> str:
    """A JA3 fingerprint: 32 hex digits (the MD5), any case, kept lower-case."""
    if isinstance(value, str) and _JA3.fullmatch(value.lower()):
        return value.lower()
    raise Invalid(f"{show(value)} is not a JA3 fingerprint",
                  "write its 32 hex digits, like \"ada70206e40642a3e4461f35503241d5\"")


def ja4_regex(patterns: tuple[str, ...]) -> str:
    """One regular expression matching (whole) any of ``patterns`` (``*``: any characters)."""
    return "|".join(".*".join(re.escape(part) for part in pattern.split("*"))
                    for pattern in patterns)


Network = Annotated[IPv4Network | IPv6Network, PlainValidator(parse_network)]
Method = Annotated[str, PlainValidator(_method)]
Ja4 = Annotated[str, PlainValidator(_ja4)]
Ja3 = Annotated[str, PlainValidator(_ja3)]
Pattern = Annotated[str, Strict(), Field(min_length=1, max_length=4096)]


class RuleConfig(Model):
    """One rule: conditions (all must match) and what to do when they do.

    Patterns are Python regular expressions, searched anywhere in the value (anchor with ``^``
    and ``$``), case-sensitive unless they start with ``(?i)``."""

    name: Annotated[str, Field(min_length=1, max_length=64),
                    form(r"[A-Za-z0-9][A-Za-z0-9_.:-]*", "a rule name (letters, digits, _ . : -)",
                         "block-admin")]
    action: RuleAction
    tag: str | None = None
    """The tag header's value (action ``tag``); the rule's name when not given."""
    description: str = ""
    client: Annotated[tuple[Network, ...], Field(min_length=1)] | None = None
    """Matches when the client address is in one of these networks."""
    not_client: Annotated[tuple[Network, ...], Field(min_length=1)] | None = None
    """Matches when the client address is in none of these (or is unknown)."""
    methods: Annotated[tuple[Method, ...], Field(min_length=1)] | None = None
    """Matches when the method is one of these."""
    method_not_in: Annotated[tuple[Method, ...], Field(min_length=1)] | None = None
    """Matches when the method is not one of these: a deny rule with this is an allow-list."""
    path: Pattern | None = None
    header: Annotated[dict[str, Pattern], Field(min_length=1)] | None = None
    """Field name (any case) to pattern; matches when some field of that name matches. An
    absent field never matches: ``".*"`` means "present"."""
    query: Pattern | None = None
    body: Pattern | None = None
    """Searched in the first ``body_inspect_bytes`` of the body only."""
    ja4: Annotated[tuple[Ja4, ...], Field(min_length=1)] | None = None
    """Matches when the client's JA4 fingerprint is one of these (``*``: any characters)."""
    not_ja4: Annotated[tuple[Ja4, ...], Field(min_length=1)] | None = None
    """Matches when it is none of these (or unknown): a deny rule with this is an allow-list."""
    ja3: Annotated[tuple[Ja3, ...], Field(min_length=1)] | None = None
    not_ja3: Annotated[tuple[Ja3, ...], Field(min_length=1)] | None = None

    @field_validator("path", "query", "body")
    @classmethod
    def _compile(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        return check_pattern(str(info.data.get("name", "?")), str(info.field_name), value)

    @field_validator("header")
    @classmethod
    def _compile_headers(cls, value: dict[str, str] | None, info: ValidationInfo) -> dict[str, str] | None:
        if value is None:
            return None
        rule = str(info.data.get("name", "?"))
        seen: set[str] = set()
        for name, pattern in value.items():
            if not _TOKEN.fullmatch(name):
                raise Invalid(f"rule \"{rule}\": {show(name)} is not a header field name",
                              "write a field name like \"User-Agent\"")
            if name.lower() in seen:
                raise Invalid(f"rule \"{rule}\": header {name!r} is given twice (names ignore "
                              "case)", "merge the patterns with |")
            seen.add(name.lower())
            check_pattern(rule, f"header {name!r}", pattern)
        return value

    @field_validator("tag")
    @classmethod
    def _tag_value(cls, value: str | None) -> str | None:
        if value is not None and not _TAG_VALUE.fullmatch(value):
            raise Invalid(f"{show(value)} cannot be a header value", "use visible ASCII characters")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RuleConfig:
        if self.tag is not None and self.action != "tag":
            raise Invalid(f"rule \"{self.name}\": tag is only used with action = \"tag\"",
                          "remove it or change the action")
        if not self.conditions:
            raise Invalid(f"rule \"{self.name}\" has no condition and would match every "
                          "request", "add one of client, not_client, methods, method_not_in, "
                          "path, header, query, body, ja4, not_ja4, ja3, not_ja3")
        return self

    @property
    def fingerprint_conditions(self) -> tuple[str, ...]:
        """The conditions on the TLS fingerprints (they need the frontend's fingerprints)."""
        return tuple(key for key in ("ja4", "not_ja4", "ja3", "not_ja3")
                     if getattr(self, key) is not None)

    @property
    def conditions(self) -> tuple[str, ...]:
        """The condition keys this rule sets."""
        keys = ("client", "not_client", "methods", "method_not_in", "path", "header", "query",
                "body", "ja4", "not_ja4", "ja3", "not_ja3")
        return tuple(key for key in keys if getattr(self, key) is not None)


class RuleSetConfig(Model):
    """The inspection settings of one frontend (``[frontends.inspect]``)."""

    rules: tuple[RuleConfig, ...] = ()
    builtin: tuple[BuiltinSet, ...] = ()
    """Built-in rule sets to enable (see :mod:`offload.security.builtin_rules`)."""
    builtin_action: RuleAction = "deny"
    dry_run: Annotated[bool, Strict()] = False
    """Log what would happen; deny nothing and add no tag."""
    body_inspect_bytes: Annotated[int, BeforeValidator(_body_size)] = 8 * 1024
    tag_header: str = "X-Offload-Tag"

    @field_validator("rules")
    @classmethod
    def _unique(cls, rules: tuple[RuleConfig, ...]) -> tuple[RuleConfig, ...]:
        first: dict[str, int] = {}
        for index, rule in enumerate(rules):
            if rule.name.startswith(BUILTIN_PREFIX):
                raise Invalid(f"rule \"{rule.name}\" (entry {index}): names starting with "
                              f"\"{BUILTIN_PREFIX}\" are reserved", "rename it")
            if rule.name in first:
                raise Invalid(f"rule \"{rule.name}\" is defined twice (entries {first[rule.name]} "
                              f"and {index})", "give every rule its own name")
            first[rule.name] = index
        return rules

    @field_validator("builtin")
    @classmethod
    def _once(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for index, name in enumerate(names):
            if name in names[:index]:
                raise Invalid(f"built-in set \"{name}\" is listed twice", "list it once")
        return names

    @field_validator("tag_header")
    @classmethod
    def _header_name(cls, value: str) -> str:
        if not _TOKEN.fullmatch(value):
            raise Invalid(f"{show(value)} is not a header field name",
                          "write one like \"X-Offload-Tag\"")
        if value.lower() in _RESERVED_HEADERS:
            raise Invalid(f"{show(value)} controls how the request is read and cannot carry tags",
                          "use a name of your own like \"X-Offload-Tag\"")
        return value


def header_patterns(rule: RuleConfig) -> Mapping[str, str]:
    """The rule's header conditions with lower-case names (names ignore case)."""
    return {name.lower(): pattern for name, pattern in (rule.header or {}).items()}


__all__ = [
    "BUILTIN_SET_NAMES",
    "MAX_BODY_INSPECT",
    "BuiltinSet",
    "RuleAction",
    "RuleConfig",
    "RuleSetConfig",
]
