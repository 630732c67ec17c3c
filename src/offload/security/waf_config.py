"""The web application firewall of a frontend as configured (``waf = { ... }``): typed, frozen,
checked before anything runs; :mod:`offload.security.waf_rules` turns it into the directives
libmodsecurity loads.

Standalone on purpose (it imports nothing from :mod:`offload.config.model`), like the
inspection rules' model.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, Strict, field_validator, model_validator

from offload.config.base import Invalid, Model, show
from offload.config.units import parse_duration, parse_size

MAX_BODY_LIMIT = 1024 * 1024
"""The request body prefix the WAF holds is bounded per request (memory per request)."""

_TARGET = re.compile(r"(?:ARGS|ARGS_GET|ARGS_POST|ARGS_NAMES|REQUEST_COOKIES|REQUEST_COOKIES_NAMES"
                     r"|REQUEST_HEADERS|XML|FILES|FILES_NAMES)(?::[A-Za-z0-9_.\-\[\]]{1,128})?")
_PATH = re.compile(r"/[\x21-\x7e]{0,1023}")


def _body_limit(value: object) -> int:
    size = parse_size(value)
    if not 1 <= size <= MAX_BODY_LIMIT:
        raise Invalid(f"{show(value)} is out of range",
                      "hold between 1 byte and 1MiB of a request body for the WAF")
    return size


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise Invalid(f"{show(value)} is not a positive duration", "write one like \"5s\"")
    return seconds


RuleId = Annotated[int, Strict(), Field(ge=1, le=9_999_999)]


class WafExclusion(Model):
    """One false positive tuned away: the ``rules`` do not fire (on ``target`` only, or only
    under ``path``, or both)."""

    rules: tuple[RuleId, ...]
    path: str | None = None
    """A path prefix (``/api/search``): the exclusion applies to requests under it only."""
    target: str | None = None
    """A variable the rules stop looking at, like ``ARGS:password`` or ``REQUEST_COOKIES``."""

    @field_validator("rules")
    @classmethod
    def _some(cls, rules: tuple[int, ...]) -> tuple[int, ...]:
        if not rules:
            raise Invalid("an exclusion names no rule", "list the rule ids, like [942100]")
        return rules

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and (not _PATH.fullmatch(value) or '"' in value or "\\" in value):
            raise Invalid(f"{show(value)} is not a path prefix",
                          "write one starting with / without quotes or backslashes, like "
                          "\"/api/search\"")
        return value

    @field_validator("target")
    @classmethod
    def _target(cls, value: str | None) -> str | None:
        if value is not None and not _TARGET.fullmatch(value):
            raise Invalid(f"{show(value)} is not a variable a rule can be excluded from",
                          "write ARGS:name, REQUEST_COOKIES:name, REQUEST_HEADERS:name (or the "
                          "collection alone, like ARGS_NAMES)")
        return value


class WafConfig(Model):
    """A frontend's web application firewall (OWASP CRS on libmodsecurity3; docs/inspection.md)."""

    mode: Literal["block", "detect"] = "block"
    """``block`` answers 403 to what the rules refuse; ``detect`` only logs and counts it."""
    crs: str = "auto"
    """Where the OWASP Core Rule Set is: ``"auto"`` (where Debian's ``modsecurity-crs`` puts
    it), a directory holding ``crs-setup.conf`` and ``rules/``, or ``"none"``."""
    rules: tuple[str, ...] = ()
    """More rule files (ModSecurity syntax; globs allowed), loaded after the CRS."""
    paranoia_level: Annotated[int, Strict(), Field(ge=1, le=4)] = 1
    anomaly_threshold: Annotated[int, Strict(), Field(ge=1, le=10_000)] = 5
    """The CRS inbound anomaly score at which a request is refused (a critical match is 5)."""
    request_body_limit: Annotated[int, BeforeValidator(_body_limit)] = 128 * 1024
    """How much of a request body is held and inspected; the rest streams on uninspected."""
    exclusions: tuple[WafExclusion, ...] = ()
    response_headers: Annotated[bool, Strict()] = False
    """Also evaluate the response status and header fields (CRS phase 3 rules)."""
    threads: Annotated[int, Strict(), Field(ge=1, le=64)] = 2
    """Engine threads per worker (the event loop never runs the rules itself)."""
    queue: Annotated[int, Strict(), Field(ge=0, le=100_000)] = 64
    """Checks that may wait for a thread per worker; beyond that, ``on_overload`` decides."""
    timeout: Annotated[float, BeforeValidator(_positive_duration)] = 5.0
    """How long one check may take (waiting for a thread included); then ``on_overload``."""
    on_overload: Literal["allow", "deny"] = "deny"
    """What happens to a request the engine cannot check in time: ``deny`` answers 503 (an
    attacker cannot slip through by loading the WAF first); ``allow`` forwards it unchecked.
    Counted either way."""

    @field_validator("crs")
    @classmethod
    def _crs(cls, value: str) -> str:
        if not value.strip():
            raise Invalid("crs is empty", "write \"auto\", \"none\" or the CRS directory")
        return value

    @model_validator(mode="after")
    def _something_to_load(self) -> WafConfig:
        if self.crs == "none" and not self.rules:
            raise Invalid("crs = \"none\" and no rules: the WAF would have nothing to check",
                          "name rule files in rules, or leave crs out to load the OWASP CRS")
        return self


__all__ = ["MAX_BODY_LIMIT", "WafConfig", "WafExclusion"]
