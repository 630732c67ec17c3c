"""The OWASP CRS regression tests (the YAML files of the coreruleset repository, ftw format) as
requests for a live offload, and the verdict on what offload's access log says it matched.

Each test stage gives a request (method, URI, version, headers, data; or a raw or base64
request) and an expectation on the WAF's log: ``log_contains: id "942100"`` (the rule must
match) or ``no_log_contains`` (it must not). offload logs the rule ids it matched in the
access log's ``waf`` field, so a stage passes when that field agrees. Stages that expect
something else (a status, a response text) are counted as unsupported, and rules above the
paranoia level under test as not applicable; a request offload's HTTP parser refused before
the WAF saw it is reported apart (the rule could not run, and the request got no further).
"""

from __future__ import annotations

import base64
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CRS_VERSION = "v3.3.4"
"""The tests must match the rules: Debian 12's modsecurity-crs is 3.3.4."""
DEFAULT_TESTS = Path.home() / ".cache" / "offload" / f"coreruleset-{CRS_VERSION}"
HOW_TO_GET = (f"the CRS regression tests are needed in $OFFLOAD_CRS_TESTS or {DEFAULT_TESTS}; "
              f"get them with: tools/crs-regression --fetch (a git clone of "
              f"https://github.com/coreruleset/coreruleset at {CRS_VERSION})")

_ID = re.compile(r'^id "(\d+)"$')


@dataclass(frozen=True)
class Case:
    """One stage of one CRS test."""

    title: str
    rule: int
    """The rule the test file is about (its name)."""
    request: bytes
    expect: str
    """``match``, ``no_match`` or ``unsupported``."""
    expected_rule: int = 0


@dataclass
class Tally:
    """Outcomes of a run."""

    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)

    def add(self, case: Case, outcome: str, detail: str = "") -> None:
        self.outcomes[outcome] += 1
        if outcome == "fail":
            self.failures.append((case.title, detail))

    @property
    def pass_rate(self) -> float:
        decided = self.outcomes["pass"] + self.outcomes["fail"]
        return self.outcomes["pass"] / decided if decided else 0.0


def yaml_dir(root: Path) -> Path:
    """The directory of YAML files inside a checkout (or the directory itself)."""
    nested = root / "tests" / "regression" / "tests"
    return nested if nested.is_dir() else root


def _bytes(text: str) -> bytes:
    try:
        return text.encode("latin-1")  # YAML's \xNN escapes stand for bytes
    except UnicodeEncodeError:
        return text.encode("utf-8")


def build_request(stage: dict[str, Any]) -> bytes:
    """The bytes ftw would send for a stage's ``input`` (with its Content-Length magic)."""
    if stage.get("encoded_request"):
        return base64.b64decode(stage["encoded_request"])
    if stage.get("raw_request"):
        raw = stage["raw_request"]
        return _bytes("".join(raw) if isinstance(raw, list) else raw)
    method = str(stage.get("method", "GET"))
    uri = str(stage.get("uri", "/"))
    version = str(stage.get("version", "HTTP/1.1"))
    headers = {str(k): str(v) for k, v in (stage.get("headers") or {}).items()}
    data = stage.get("data")
    if isinstance(data, list):
        data = "\r\n".join(str(line) for line in data)
    body = _bytes(str(data)) if data is not None else b""
    if body and not stage.get("stop_magic") and not any(
            name.lower() == "content-length" for name in headers):
        headers["Content-Length"] = str(len(body))
    head = f"{method} {uri} {version}\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    return _bytes(head) + body


def load_cases(root: Path) -> list[Case]:
    """Every stage of every test under ``root``, in file order."""
    cases = []
    for path in sorted(yaml_dir(root).rglob("*.yaml")):
        document = yaml.safe_load(path.read_text(encoding="utf-8", errors="replace"))
        if not isinstance(document, dict) or not document.get("meta", {}).get("enabled", True):
            continue
        try:
            rule = int(path.stem)
        except ValueError:
            continue
        for test in document.get("tests") or []:
            for number, item in enumerate(test.get("stages") or []):
                stage = item.get("stage", item)
                title = str(test.get("test_title", path.stem)) + (f"/{number}" if number else "")
                output = stage.get("output") or {}
                expect, expected = "unsupported", 0
                for key, kind in (("log_contains", "match"), ("no_log_contains", "no_match")):
                    found = _ID.match(str(output.get(key, "")))
                    if found:
                        expect, expected = kind, int(found.group(1))
                try:
                    request = build_request(stage.get("input") or {})
                except (ValueError, TypeError):
                    expect, request = "unsupported", b""
                cases.append(Case(title, rule, request, expect, expected))
    return cases


def rule_levels(rules_dir: Path) -> dict[int, int]:
    """Each CRS rule's paranoia level (its ``paranoia-level/N`` tag; 1 without one)."""
    levels = {}
    for path in rules_dir.glob("*.conf"):
        text = path.read_text(encoding="utf-8", errors="replace").replace("\\\n", " ")
        for directive in re.split(r"\n(?=\s*Sec)", text):
            rule_id = re.search(r"\bid:(\d+)", directive)
            if rule_id:
                level = re.search(r"paranoia-level/(\d)", directive)
                levels[int(rule_id.group(1))] = int(level.group(1)) if level else 1
    return levels


def judge(case: Case, entry: dict[str, Any], levels: dict[int, int], paranoia: int
          ) -> tuple[str, str]:
    """The outcome of one case from its access-log line: pass, fail, refused_by_offload."""
    rules = set((entry.get("waf") or {}).get("rules") or [])
    if "waf" not in entry and entry.get("status", 0) >= 400 and not entry.get("method"):
        return "refused_by_offload", str(entry.get("reason", entry.get("status")))
    if case.expect == "match":
        if case.expected_rule in rules:
            return "pass", ""
        return "fail", f"expected {case.expected_rule}, matched {sorted(rules)}"
    if case.expected_rule in rules:
        return "fail", f"{case.expected_rule} matched, it should not have"
    return "pass", ""


def applicable(case: Case, levels: dict[int, int], paranoia: int) -> bool:
    return levels.get(case.expected_rule or case.rule, 1) <= paranoia
