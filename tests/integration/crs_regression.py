"""The OWASP CRS's own regression tests against a live offload (detect mode, paranoia level 1)
in front of a recording backend: a bounded, deterministic subset of 300 cases, or the whole set
with ``OFFLOAD_CRS_CASES=all`` (``tools/crs-regression``), which also writes a report. Not named
``test_*.py``: ./dev test does not collect it, because the cases come from GitHub; run it by
naming the file (``tools/crs-regression`` does).

A case is sent on its own TLS connection exactly as written (offload's HTTP parser sees it
first), and judged by the rule ids offload's access log says the WAF matched (crs_cases.py).
"""

from __future__ import annotations

import json
import os
import socket
import ssl
from pathlib import Path

import pytest
from conftest import http_config
from crs_cases import (
    DEFAULT_TESTS,
    HOW_TO_GET,
    Case,
    Tally,
    applicable,
    judge,
    load_cases,
    rule_levels,
    yaml_dir,
)
from harness import client_context

from offload.security.waf_engine import binding_problem

CRS_RULES = Path("/usr/share/modsecurity-crs/rules")
SUBSET = 300
"""Cases run by default (spread evenly over every rule file)."""
MIN_PASS_RATE = 0.85
"""Below this, something in how offload feeds the engine broke (measured: see docs)."""


def _tests_root() -> Path:
    root = Path(os.environ.get("OFFLOAD_CRS_TESTS", DEFAULT_TESTS))
    if not yaml_dir(root).is_dir() or not any(yaml_dir(root).rglob("*.yaml")):
        pytest.fail(HOW_TO_GET)
    return root


def _send(port: int, context: ssl.SSLContext, request: bytes) -> None:
    """Send one request as written; the answer is awaited through the access log."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(request)
        try:
            tls.settimeout(10)
            while tls.recv(65536):
                pass
        except (OSError, ssl.SSLError):
            pass


def _run(instance, port: int, ca: Path, cases: list[Case], levels: dict[int, int],
         paranoia: int) -> Tally:
    tally = Tally()
    context = client_context(ca, alpn=["http/1.1"])
    for case in cases:
        if case.expect == "unsupported" or not case.request:
            tally.add(case, "unsupported")
            continue
        if not applicable(case, levels, paranoia):
            tally.add(case, "not_at_this_level")
            continue
        mark = len(instance.events)
        _send(port, context, case.request.replace(b"Connection: keep-alive", b"Connection: close")
              if b"Connection:" in case.request else _close(case.request))
        entry = instance.wait_for(lambda e: "tls_version" in e and "status" in e, timeout=15,
                                  after=mark)
        outcome, detail = judge(case, entry, levels, paranoia)
        tally.add(case, outcome, detail)
    return tally


def _close(request: bytes) -> bytes:
    """Ask for the connection to close after the answer (the request is otherwise as written)."""
    head, sep, body = request.partition(b"\r\n\r\n")
    if not sep or b"\r\n" not in head:
        return request
    return head + b"\r\nConnection: close" + sep + body


def _subset(cases: list[Case], size: int) -> list[Case]:
    usable = [case for case in cases if case.expect != "unsupported"]
    if size >= len(usable):
        return usable
    step = len(usable) / size
    return [usable[int(index * step)] for index in range(size)]


def test_crs_regression_at_paranoia_level_1(pki, localhost_bundle, http_backend, offload, port,
                                            tmp_path):
    problem = binding_problem()
    if problem is not None:
        pytest.fail("; ".join(problem))
    if not CRS_RULES.is_dir():
        pytest.fail("the OWASP CRS is not installed; install it with: "
                    "apt-get install -y modsecurity-crs")
    cases = load_cases(_tests_root())
    everything = os.environ.get("OFFLOAD_CRS_CASES") == "all"
    chosen = cases if everything else _subset(cases, SUBSET)
    server = http_backend()
    instance = offload(http_config(port, [localhost_bundle], [server.address], frontend=(
        '\n[frontends.waf]\nmode = "detect"\nparanoia_level = 1\n')))
    levels = rule_levels(CRS_RULES)
    tally = _run(instance, port, pki.ca, chosen, levels, 1)
    report = {"crs": "3.3.4 (Debian modsecurity-crs)", "paranoia_level": 1,
              "cases": len(chosen), "outcomes": dict(tally.outcomes),
              "pass_rate": round(tally.pass_rate, 4), "failures": tally.failures}
    out = Path(os.environ.get("OFFLOAD_CRS_REPORT", tmp_path / "crs-report.json"))
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nCRS regression: {json.dumps({k: v for k, v in report.items() if k != 'failures'})}"
          f"\nreport: {out}")
    assert tally.outcomes["pass"] > 0
    assert tally.pass_rate >= MIN_PASS_RATE, (tally.pass_rate, tally.failures[:20])
