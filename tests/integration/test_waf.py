"""The WAF (OWASP CRS on libmodsecurity3) on a real offload in front of a recording backend:
classic attacks refused at paranoia level 1 over HTTP/1.1 and HTTP/2 and never forwarded,
ordinary requests passed untouched, detect mode, the body limit, the overload policy, the
metrics per rule, the ban jail, and what `offload check` says.

Needs Debian's libmodsecurity-dev (offload's binding is built against it) and modsecurity-crs.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import http_config
from h2_client import H2Client
from harness import free_port
from http_client import get, https
from test_admin import samples, value, with_admin

from offload.security.waf_engine import binding_problem

CRS_RULES = Path("/usr/share/modsecurity-crs/rules")


@pytest.fixture(autouse=True)
def _needs_the_waf() -> None:
    problem = binding_problem()
    if problem is not None:
        pytest.fail(problem)
    if not CRS_RULES.is_dir():
        pytest.fail("the OWASP CRS is not installed; install it with: "
                    "apt-get install -y modsecurity-crs")


def waf(extra: str = "") -> str:
    return f'\n[frontends.waf]\nmode = "block"\n{extra}\n'


@pytest.fixture
def guarded(pki, localhost_bundle, http_backend, offload, port):
    server = http_backend()
    instance = offload(http_config(port, [localhost_bundle], [server.address], frontend=waf()))
    return server, instance


def _access(instance, path: str) -> dict:
    return instance.wait_for(lambda e: e.get("path") == path and "status" in e)


def _refused(instance, server, path: str, response_id: str | None, *, body: bytes = b"") -> dict:
    """The request was answered 403 with its request id, logged with the rules that matched
    and the score, and never reached the backend."""
    entry = _access(instance, path)
    assert entry["status"] == 403 and entry["reason"].startswith("waf_denied:")
    assert response_id == entry["request_id"]
    if body:
        assert f"request id: {entry['request_id']}".encode() in body
    line = instance.wait_for(lambda e: e.get("event") == "waf_denied" and e.get("path") == path)
    assert line["request_id"] == entry["request_id"] and line["client"] == "127.0.0.1"
    assert line["rules"] and line["score"] >= 5 and line["mode"] == "block"
    assert str(line["rules"][0]) == entry["reason"].split(":", 1)[1]
    assert all(not r.target.startswith(path.split("?", maxsplit=1)[0]) for r in server.requests), \
        "a refused request never reaches the backend"
    return line


ATTACKS = [
    # (path, extra headers, body, a rule of the family expected to fire)
    ("/search?id=1%27%20OR%20%271%27=%271", {}, None, 942),
    ("/files/..%2f..%2f..%2fetc%2fpasswd", {}, None, 930),
    ("/scanner", {"User-Agent": "sqlmap/1.7.2#stable (https://sqlmap.org)"}, None, 913),
    ("/comment", {"Content-Type": "application/x-www-form-urlencoded"},
     b"name=joe&comment=%3Cscript%3Ealert(document.cookie)%3C%2Fscript%3E", 941),
]


@pytest.mark.parametrize(("path", "headers", "body", "family"), ATTACKS,
                         ids=["sqli-query", "path-traversal", "scanner-ua", "xss-form"])
def test_classic_attacks_are_refused_over_http1(pki, guarded, port, path, headers, body, family):
    server, instance = guarded
    conn = https(port, pki.ca)
    conn.request("POST" if body else "GET", path, body=body, headers=headers)
    response = conn.getresponse()
    answer = response.read()
    assert response.status == 403
    line = _refused(instance, server, path, response.getheader("X-Request-ID"), body=answer)
    assert any(rule // 1000 == family for rule in line["rules"]), line["rules"]


@pytest.mark.parametrize(("path", "headers", "body", "family"), [ATTACKS[0], ATTACKS[3]],
                         ids=["sqli-query", "xss-form"])
def test_classic_attacks_are_refused_over_http2(pki, guarded, port, path, headers, body, family):
    server, instance = guarded
    client = H2Client(port, pki.ca)
    extra = [(name.lower(), value_) for name, value_ in headers.items()]
    stream = client.request(path, method="POST" if body else "GET", body=body, extra=extra)
    fields, answer, _ = client.response(stream)
    assert fields[":status"] == "403"
    line = _refused(instance, server, path, fields.get("x-request-id"), body=answer)
    assert any(rule // 1000 == family for rule in line["rules"])


def _multipart(boundary: str, fields: dict[str, str], name: str, content: bytes) -> bytes:
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"{key}\"\r\n\r\n{text}\r\n"
             .encode() for key, text in fields.items()]
    parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                 f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                 .encode() + content + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def _ordinary() -> list[tuple[str, str, dict[str, str], bytes | None]]:
    boundary = "----offload" + uuid.uuid4().hex
    upload = bytes(range(256)) * 1024  # 256 KiB: beyond the body limit, streamed on
    return [
        ("GET", "/products?category=books&sort=price&page=2", {"Accept": "text/html"}, None),
        ("GET", "/static/app.3f2a1c.js", {"Accept-Encoding": "gzip, br"}, None),
        ("POST", "/api/orders", {"Content-Type": "application/json"},
         json.dumps({"item": "book", "quantity": 2, "note": "gift wrap, please",
                     "address": {"street": "1 Main St.", "city": "Springfield"}}).encode()),
        ("POST", "/login", {"Content-Type": "application/x-www-form-urlencoded"},
         b"username=alice&password=correct+horse+battery+staple&remember=on"),
        ("POST", "/upload", {"Content-Type": f"multipart/form-data; boundary={boundary}"},
         _multipart(boundary, {"title": "Holiday photos"}, "photo.jpg", upload[:4096])),
        ("POST", "/upload/big", {"Content-Type": f"multipart/form-data; boundary={boundary}"},
         _multipart(boundary, {"album": "2026"}, "archive.bin", upload)),
    ]


def test_ordinary_requests_pass_untouched_over_http1_and_http2(pki, guarded, port):
    server, instance = guarded
    conn = https(port, pki.ca)
    for method, path, headers, body in _ordinary():
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        assert response.status == 200, (method, path)
        seen = server.requests[-1]
        assert (seen.method, seen.target) == (method, path)
        assert seen.body == (body or b"")
    client = H2Client(port, pki.ca)
    for method, path, headers, body in _ordinary():
        if body is not None and len(body) > 60000:
            continue  # the test client sends a body as one DATA frame (the window is 64 KiB)
        extra = [(name.lower(), value_) for name, value_ in headers.items()]
        stream = client.request(path, method=method, body=body, extra=extra)
        fields, _, _ = client.response(stream)
        assert fields[":status"] == "200", (method, path)
        assert server.requests[-1].body == (body or b"")
    assert not [e for e in instance.events if e.get("event", "").startswith("waf_")], \
        "no false positive on ordinary requests"


def test_detect_mode_forwards_and_logs(pki, localhost_bundle, http_backend, offload, port):
    server = http_backend()
    instance = offload(http_config(port, [localhost_bundle], [server.address],
                                   frontend='\n[frontends.waf]\nmode = "detect"\n'))
    path = "/search?q=1%27%20UNION%20SELECT%20password%20FROM%20users--"
    response, _ = get(https(port, pki.ca), path)
    assert response.status == 200
    assert server.requests[-1].target == path
    line = instance.wait_for(lambda e: e.get("event") == "waf_detected" and e.get("path") == path)
    assert line["mode"] == "detect" and line["score"] >= 5
    assert any(rule // 1000 == 942 for rule in line["rules"])
    assert not [e for e in instance.events if e.get("event") == "waf_denied"]


def test_the_body_limit_is_respected(pki, localhost_bundle, http_backend, offload, port):
    server = http_backend()
    instance = offload(http_config(port, [localhost_bundle], [server.address],
                                   frontend=waf('request_body_limit = "1KiB"')))
    conn = https(port, pki.ca)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    attack = b"&comment=%3Cscript%3Ealert(1)%3C%2Fscript%3E"
    # within the first KiB: inspected and refused
    conn.request("POST", "/early", body=b"a=1" + attack, headers=form)
    response = conn.getresponse()
    response.read()
    assert response.status == 403
    # beyond it: never held, never inspected (the documented trade-off), forwarded whole
    late = b"a=" + b"x" * 2048 + attack
    conn = https(port, pki.ca)
    conn.request("POST", "/late", body=late, headers=form)
    response = conn.getresponse()
    response.read()
    assert response.status == 200 and server.requests[-1].body == late
    # a JSON body longer than the limit is cut mid-document: not refused as unparsable...
    long_json = json.dumps({"items": [f"entry {n}" for n in range(400)]}).encode()
    conn.request("POST", "/long-json", body=long_json,
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    assert response.status == 200 and server.requests[-1].body == long_json
    # ...while a whole body the engine cannot parse is (a parser bypass otherwise)
    conn.request("POST", "/broken-json", body=b'{"a": "x" "b"',
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    assert response.status == 400
    assert _access(instance, "/broken-json")["reason"].startswith("waf_denied:")


SLOW_SCRIPT = """#!/bin/sh
touch "{marker}"
sleep 3
echo 1 clean
"""


def _slow_rules(tmp_path: Path) -> tuple[Path, Path]:
    """A rule that holds the engine's thread for 3 s on ``?slow=``, and the marker file it
    creates once it runs."""
    marker = tmp_path / "engine-busy"
    script = tmp_path / "slow.sh"
    script.write_text(SLOW_SCRIPT.format(marker=marker))
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    rules = tmp_path / "slow.conf"
    rules.write_text(f'SecRule ARGS:slow "@inspectFile {script}" '
                     '"id:190001,phase:2,deny,status:403,log,msg:\'slow\'"\n')
    return rules, marker


def _wait_for_file(path: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.mark.parametrize("policy", ["deny", "allow"])
def test_a_saturated_engine_follows_on_overload(pki, localhost_bundle, http_backend, offload,
                                               port, tmp_path, policy):
    server = http_backend()
    rules, marker = _slow_rules(tmp_path)
    admin_port = free_port()
    instance = offload(with_admin(http_config(
        port, [localhost_bundle], [server.address],
        frontend=waf(f'crs = "none"\nrules = ["{rules}"]\nthreads = 1\nqueue = 0\n'
                     f'on_overload = "{policy}"')), admin_port))
    slow: list[int] = []

    def occupy() -> None:
        response, _ = get(https(port, pki.ca), "/busy?slow=1")
        slow.append(response.status)

    worker = threading.Thread(target=occupy)
    worker.start()
    _wait_for_file(marker)  # the only engine thread is busy now
    response, _ = get(https(port, pki.ca), "/while-busy")
    worker.join(timeout=20)
    assert slow == [200]
    if policy == "deny":
        assert response.status == 503
        assert all(r.target != "/while-busy" for r in server.requests)
    else:
        assert response.status == 200, "forwarded unchecked"
        assert any(r.target == "/while-busy" for r in server.requests)
    line = instance.wait_for(lambda e: e.get("event") == "waf_overload")
    assert line["cause"] == "pool_full" and line["action"] == policy
    metrics = samples(admin_port)
    result = "overload_allowed" if policy == "allow" else "overload_denied"
    assert value(metrics, "offload_waf_checks_total", frontend="web", result=result) == 1


def test_refusals_are_counted_per_rule_and_ban_the_client(pki, localhost_bundle, http_backend,
                                                          offload, port):
    server = http_backend()
    admin_port = free_port()
    instance = offload(with_admin(
        http_config(port, [localhost_bundle], [server.address], frontend=waf()), admin_port)
        + '\n[bans]\nthreshold = 2\nwindow = "1m"\nban_time = "10m"\n')
    for number in range(2):
        response, _ = get(https(port, pki.ca), f"/item?id={number}%27%20OR%201=1--")
        assert response.status == 403
    metrics = samples(admin_port)
    assert value(metrics, "offload_waf_rule_matches_total", frontend="web", rule="942100",
                 outcome="denied") == 2
    assert value(metrics, "offload_waf_checks_total", frontend="web", result="denied") == 2
    assert value(metrics, "offload_security_decisions_total", kind="waf_denied") == 2
    instance.wait_msg("client banned", client="127.0.0.1", reason="rule_denied")
    assert not server.requests


# --- offload check -------------------------------------------------------------------------

def _check(tmp_path: Path, config: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "offload.toml"
    path.write_text(config)
    return subprocess.run([sys.executable, "-m", "offload", "check", "-c", str(path)],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_check_describes_the_waf_and_names_what_is_wrong(tmp_path, localhost_bundle):
    ok = _check(tmp_path, http_config(8443, [localhost_bundle], ["127.0.0.1:8080"], frontend=waf(
        "paranoia_level = 2\nexclusions = [{ rules = [942100], path = \"/api/search\" }]")))
    assert ok.returncode == 0, ok.stderr
    assert ("waf: block mode, OWASP CRS from /usr/share/modsecurity-crs, paranoia level 2, "
            "anomaly threshold 5, 1 exclusion(s)") in ok.stdout

    missing = _check(tmp_path, http_config(8443, [localhost_bundle], ["127.0.0.1:8080"],
                                           frontend=waf(f'crs = "{tmp_path / "nowhere"}"')))
    assert missing.returncode == 1
    assert "frontends[0].waf.crs:" in missing.stderr
    assert "does not hold the OWASP Core Rule Set" in missing.stderr
    assert "apt-get install modsecurity-crs" in missing.stderr

    broken = tmp_path / "broken.conf"
    broken.write_text('SecRule ARGS "@rx x" "id:190002,phase:2,nosuchaction"\n')
    result = _check(tmp_path, http_config(8443, [localhost_bundle], ["127.0.0.1:8080"],
                                          frontend=waf(f'rules = ["{broken}"]')))
    assert result.returncode == 1
    assert "frontends[0].waf: the WAF rules do not load:" in result.stderr
    assert str(broken) in result.stderr

    bad = _check(tmp_path, http_config(8443, [localhost_bundle], ["127.0.0.1:8080"],
                                       frontend='\n[frontends.waf]\nparanoia_level = 5\n'
                                       'mode = "log"\nexclusions = [{ rules = [942100], '
                                       'target = "ARGS:q\\" x" }]\n'))
    assert bad.returncode == 1
    assert "frontends[0].waf.paranoia_level:" in bad.stderr
    assert "frontends[0].waf.mode:" in bad.stderr
    assert "frontends[0].waf.exclusions[0].target:" in bad.stderr
