"""Inspection rules in HTTP mode, over real TLS to a real backend: every condition, the three
actions, dry-run, the body prefix (held, never more), the built-in sets on typical probes, and
the configuration errors `offload check` reports."""

from __future__ import annotations

import hashlib
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import http_config, tcp_config
from harness import TlsPipe, client_context
from http_backend import pattern
from http_client import get, https, read_responses

RULES = r'''
[frontends.inspect]
body_inspect_bytes = "16KiB"

[[frontends.inspect.rules]]
name = "private-from-loopback"
action = "deny"
client = ["127.0.0.0/8"]
path = "^/private(/|$)"

[[frontends.inspect.rules]]
name = "other-net-only"
action = "deny"
client = ["192.0.2.0/24"]
path = "^/other-net"

[[frontends.inspect.rules]]
name = "admin-from-office-only"
action = "deny"
not_client = ["10.0.0.0/8"]
path = "^/admin(/|$)"

[[frontends.inspect.rules]]
name = "common-methods-only"
action = "deny"
method_not_in = ["GET", "HEAD", "POST"]

[[frontends.inspect.rules]]
name = "no-bad-bots"
action = "deny"
header = { User-Agent = "(?i)badbot" }

[[frontends.inspect.rules]]
name = "no-admin-host"
action = "deny"
header = { Host = "(?i)^admin\\.example(:[0-9]+)?$" }

[[frontends.inspect.rules]]
name = "no-debug"
action = "deny"
query = "(^|&)debug=1(&|$)"

[[frontends.inspect.rules]]
name = "no-drop-table"
action = "deny"
methods = ["POST"]
body = "(?i)drop\\s+table"

[[frontends.inspect.rules]]
name = "api"
action = "tag"
tag = "api-call"
path = "^/api/"

[[frontends.inspect.rules]]
name = "watch-exports"
action = "log"
path = "^/export/"
'''

PREFIX = 16 * 1024


@pytest.fixture
def ruled(pki, localhost_bundle, http_backend, offload, port):
    server = http_backend()
    instance = offload(http_config(port, [localhost_bundle], [server.address], frontend=RULES))
    return server, instance


def _decision(instance, kind: str, rule: str, path: str | None = None):
    """The security decision line of ``kind`` by ``rule`` (for ``path``, if given)."""
    return instance.wait_for(lambda e: e.get("event") == kind and e.get("cause") == rule
                             and (path is None or e.get("path") == path))


def _access(instance, path: str, after: int = 0):
    return instance.wait_for(lambda e: e.get("path") == path and "status" in e, after=after)


def _raw(port, ca, data: bytes) -> bytes:
    pipe = TlsPipe(port, client_context(ca))
    try:
        pipe.send(data)
        return pipe.recv_all()
    finally:
        pipe.close()


def _answer_before_reset(pipe: TlsPipe) -> bytes:
    """What the server sent before it closed; offload closes a denied upload at once, and the
    body bytes it left unread make the kernel end the connection with a reset."""
    data = b""
    try:
        while chunk := pipe.recv():
            data += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass
    finally:
        pipe.close()
    return data


def _assert_denied(instance, server, path: str, rule: str, *, method: str = "GET") -> None:
    """A 403 was logged with the rule as its reason, the decision line names the client and
    the rule, and the backend never saw the request."""
    entry = _access(instance, path)
    assert entry["status"] == 403 and entry["method"] == method
    assert entry["reason"] == f"rule_denied:{rule}"
    line = _decision(instance, "rule_denied", rule, path)
    assert line["client"] == "127.0.0.1" and line["frontend"] == "web"
    assert line["msg"] == f"rule denied: {rule}" and line["action"] == "deny"
    assert line["dry_run"] is False and line["method"] == method
    assert line["request_id"] == entry["request_id"]
    assert all(r.target != path for r in server.requests)


# --- each condition ----------------------------------------------------------------------------

def test_deny_by_client_network(pki, ruled, port):
    server, instance = ruled
    conn = https(port, pki.ca)
    response, body = get(conn, "/private/report")
    assert response.status == 403
    assert body.startswith(b"403 Forbidden")
    assert response.getheader("Connection") == "close"
    _assert_denied(instance, server, "/private/report", "private-from-loopback")
    # the same kind of rule for a network the client is not in lets it through
    response, _ = get(conn, "/other-net/page")
    assert response.status == 200
    assert server.requests[-1].target == "/other-net/page"


def test_deny_outside_the_allowed_network(pki, ruled, port):
    server, instance = ruled
    response, _ = get(https(port, pki.ca), "/admin/users")
    assert response.status == 403
    _assert_denied(instance, server, "/admin/users", "admin-from-office-only")
    response, _ = get(https(port, pki.ca), "/administrator-guide")  # anchored: not /admin
    assert response.status == 200


def test_method_allow_list(pki, ruled, port):
    server, instance = ruled
    conn = https(port, pki.ca)
    for method in ("GET", "HEAD", "POST"):
        conn.request(method, "/methods", body=b"" if method == "POST" else None)
        response = conn.getresponse()
        response.read()
        assert response.status == 200, method
    conn.request("DELETE", "/methods-delete")
    response = conn.getresponse()
    response.read()
    assert response.status == 403
    _assert_denied(instance, server, "/methods-delete", "common-methods-only", method="DELETE")
    answer = _raw(port, pki.ca, b"PATCH /methods-patch HTTP/1.1\r\nHost: localhost\r\n"
                  b"Content-Length: 5\r\n\r\nhello")
    assert answer.startswith(b"HTTP/1.1 403 ")
    _assert_denied(instance, server, "/methods-patch", "common-methods-only", method="PATCH")


def test_path_regex_sees_encoded_and_dotted_forms(pki, ruled, port):
    server, instance = ruled
    conn = https(port, pki.ca)
    for path in ("/%70rivate/x", "/public/../private/x"):
        response, _ = get(conn, path)
        assert response.status == 403, path
        _assert_denied(instance, server, path, "private-from-loopback")
    response, _ = get(conn, "/privateer")
    assert response.status == 200


def test_header_regex(pki, ruled, port):
    server, instance = ruled
    conn = https(port, pki.ca)
    response, _ = get(conn, "/bot-page", **{"User-Agent": "Mozilla/5.0 (compatible; BadBot/2.1)"})
    assert response.status == 403
    _assert_denied(instance, server, "/bot-page", "no-bad-bots")
    response, _ = get(conn, "/good-page", **{"User-Agent": "Mozilla/5.0 (X11; Linux x86_64)"})
    assert response.status == 200


def test_query_pattern(pki, ruled, port):
    server, instance = ruled
    conn = https(port, pki.ca)
    response, _ = get(conn, "/page?a=2&debug=1")
    assert response.status == 403
    _assert_denied(instance, server, "/page?a=2&debug=1", "no-debug")
    response, _ = get(conn, "/page?a=2&debug=%31")  # decoded once before matching
    assert response.status == 403
    response, _ = get(conn, "/page?a=2&debug=10")
    assert response.status == 200
    assert server.requests[-1].target == "/page?a=2&debug=10"


# --- the body prefix ---------------------------------------------------------------------------

def test_body_prefix_match_is_denied(pki, ruled, port):
    server, instance = ruled
    conn = https(port, pki.ca)
    conn.request("POST", "/form", body=b"name=x&sql=1%3B+DROP+TABLE+users",
                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    response = conn.getresponse()
    response.read()
    assert response.status == 403
    _assert_denied(instance, server, "/form", "no-drop-table", method="POST")
    conn = https(port, pki.ca)
    conn.request("POST", "/sha", body=b"name=x&comment=tables+are+furniture")
    response = conn.getresponse()
    assert response.status == 200
    assert response.read() == hashlib.sha256(b"name=x&comment=tables+are+furniture").hexdigest().encode()


@pytest.mark.parametrize("chunked", [False, True])
def test_large_upload_whose_prefix_matches_never_reaches_the_backend(pki, ruled, port, chunked):
    server, instance = ruled
    declared = 4 * 1024 * 1024
    first = b"DROP TABLE accounts; " + pattern(2 * PREFIX)
    if chunked:
        head = b"POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        sent = head + b"%x\r\n%b\r\n" % (len(first), first)
    else:
        head = (b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n"
                % declared)
        sent = head + first
    pipe = TlsPipe(port, client_context(pki.ca))
    pipe.send(sent)  # only the beginning of the body: the answer comes before the rest
    answer = _answer_before_reset(pipe)
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert b"Connection: close" in answer
    _assert_denied(instance, server, "/upload", "no-drop-table", method="POST")
    assert server.connections == 0  # not even a connection was opened


@pytest.mark.parametrize("chunked", [False, True])
def test_large_streamed_upload_passes_byte_for_byte(pki, ruled, port, chunked):
    server, _ = ruled
    size = 6 * 1024 * 1024 + 123
    # the pattern only after the inspected prefix: not looked at, and passed on as it is
    body = pattern(PREFIX + 5) + b" drop table " + pattern(size)[: size - PREFIX - 17]
    assert len(body) == size
    conn = https(port, pki.ca)
    if chunked:
        pieces = (body[i : i + 100_000] for i in range(0, size, 100_000))
        conn.request("POST", "/sha", body=pieces, encode_chunked=True)
    else:
        conn.request("POST", "/sha", body=body)
    response = conn.getresponse()
    assert response.status == 200
    assert response.read() == hashlib.sha256(body).hexdigest().encode()
    received = server.requests[-1]
    assert received.body == body
    assert received.header("X-Offload-Tag") is None


def test_body_is_held_only_until_the_prefix_is_complete(pki, ruled, port):
    """Nothing goes to a backend before the prefix is in; once it is, the request goes on
    while the client is still sending: the rest of the body streams."""
    server, _ = ruled
    size = 1024 * 1024
    body = pattern(size)
    pipe = TlsPipe(port, client_context(pki.ca))
    pipe.send(b"POST /sha HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % size
              + body[: PREFIX - 100])
    time.sleep(0.3)
    assert server.connections == 0
    pipe.send(body[PREFIX - 100 : PREFIX + 100])
    deadline = time.monotonic() + 5
    while server.connections == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.connections == 1  # connected with most of the body still unsent
    pipe.send(body[PREFIX + 100 :])
    (response,) = read_responses(pipe, 1)
    pipe.close()
    assert response.startswith(b"HTTP/1.1 200 ")
    assert response.endswith(hashlib.sha256(body).hexdigest().encode())


def test_short_body_is_decided_at_its_end(pki, ruled, port):
    server, _ = ruled
    conn = https(port, pki.ca)
    conn.request("POST", "/sha", body=b"short")
    response = conn.getresponse()
    assert response.status == 200
    assert response.read() == hashlib.sha256(b"short").hexdigest().encode()
    conn.request("POST", "/sha", body=b"")  # no body at all
    response = conn.getresponse()
    assert response.status == 200
    assert response.read() == hashlib.sha256(b"").hexdigest().encode()
    assert len(server.requests) == 2


def test_expect_continue_is_answered_while_the_body_is_inspected(pki, ruled, port):
    server, _ = ruled
    pipe = TlsPipe(port, client_context(pki.ca))
    pipe.send(b"POST /sha HTTP/1.1\r\nHost: localhost\r\nContent-Length: 11\r\n"
              b"Expect: 100-continue\r\n\r\n")
    interim = pipe.recv()
    assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    pipe.send(b"hello world")
    (response,) = read_responses(pipe, 1)
    pipe.close()
    assert response.startswith(b"HTTP/1.1 200 ")
    assert response.endswith(hashlib.sha256(b"hello world").hexdigest().encode())
    assert server.requests[-1].header("Expect") is None


# --- tag and log -------------------------------------------------------------------------------

def test_tag_header_reaches_the_backend_and_cannot_be_forged(pki, ruled, port):
    server, instance = ruled
    conn = https(port, pki.ca)
    response, _ = get(conn, "/api/orders", **{"X-Offload-Tag": "forged"})
    assert response.status == 200
    assert server.requests[-1].headers_named("X-Offload-Tag") == ["api-call"]
    line = _decision(instance, "rule_tagged", "api")
    assert line["client"] == "127.0.0.1" and line["action"] == "tag"
    response, _ = get(conn, "/plain", **{"x-offload-tag": "forged"})
    assert response.status == 200
    assert server.requests[-1].headers_named("X-Offload-Tag") == []


@pytest.mark.parametrize("connection", [
    "X-Offload-Tag", "keep-alive, x-offload-tag", "X-Forwarded-For, X-Offload-Tag, X-Request-ID",
])
def test_a_clients_connection_field_cannot_remove_the_tag(pki, ruled, port, connection):
    """Hop-by-hop removal is applied to what the client sent, before offload adds its fields:
    naming the tag header in Connection must not strip the tag the backend relies on."""
    server, _ = ruled
    conn = https(port, pki.ca)
    response, _ = get(conn, "/api/orders", Connection=connection)
    assert response.status == 200
    seen = server.requests[-1]
    assert seen.headers_named("X-Offload-Tag") == ["api-call"]
    assert seen.headers_named("X-Forwarded-For") == ["127.0.0.1"]
    assert len(seen.headers_named("X-Request-ID")) == 1


@pytest.mark.parametrize("target", [
    b"https://admin.example/", b"HTTP://admin.example/x", b"https://ADMIN.example:443/",
    b"http://admin.example",
])
@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
def test_absolute_form_authority_is_the_host_rules_see(pki, ruled, port, target, version):
    """A rule on Host sees the authority of an absolute-form target, the one the backend would
    get, not a Host header that says something else."""
    server, instance = ruled
    answer = _raw(port, pki.ca, b"GET %b HTTP/%b\r\nHost: localhost\r\n\r\n" % (target, version))
    assert answer.startswith(b"HTTP/1.1 403 "), answer[:200]
    line = _decision(instance, "rule_denied", "no-admin-host")
    assert line["client"] == "127.0.0.1"
    assert not any((r.header("Host") or "").lower().startswith("admin.example")
                   for r in server.requests)


def test_absolute_form_authority_is_the_host_the_backend_gets(pki, ruled, port):
    server, _ = ruled
    answer = _raw(port, pki.ca, b"GET https://localhost:443/ok HTTP/1.1\r\nHost: admin.example\r\n"
                                b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    seen = server.requests[-1]
    assert seen.target == "/ok"
    assert seen.headers_named("Host") == ["localhost:443"]
    assert seen.headers_named("X-Forwarded-Host") == ["localhost:443"]


def test_log_action_forwards_and_logs(pki, ruled, port):
    server, instance = ruled
    response, _ = get(https(port, pki.ca), "/export/all.csv")
    assert response.status == 200
    assert server.requests[-1].target == "/export/all.csv"
    line = _decision(instance, "rule_logged", "watch-exports")
    assert line["msg"] == "rule logged: watch-exports"
    assert line["client"] == "127.0.0.1" and line["action"] == "log" and line["dry_run"] is False
    assert line["method"] == "GET" and line["path"] == "/export/all.csv"
    assert "reason" not in _access(instance, "/export/all.csv")


def test_several_rules_fire_on_one_request(pki, ruled, port):
    server, instance = ruled
    response, _ = get(https(port, pki.ca), "/api/x?debug=1")
    assert response.status == 403
    _decision(instance, "rule_denied", "no-debug")
    line = _decision(instance, "rule_tagged", "api")
    assert line["path"] == "/api/x?debug=1"
    assert all(not r.target.startswith("/api/x") for r in server.requests)


# --- dry-run -----------------------------------------------------------------------------------

def test_dry_run_forwards_and_logs_what_it_would_do(pki, localhost_bundle, http_backend, offload,
                                                    port):
    server = http_backend()
    instance = offload(http_config(port, [localhost_bundle], [server.address],
                                   frontend=RULES.replace('body_inspect_bytes = "16KiB"',
                                                          "dry_run = true")))
    conn = https(port, pki.ca)
    response, _ = get(conn, "/private/report")
    assert response.status == 200
    assert server.requests[-1].target == "/private/report"
    line = _decision(instance, "rule_logged", "private-from-loopback")
    assert line["dry_run"] is True and line["action"] == "deny"
    assert line["client"] == "127.0.0.1"
    assert "reason" not in _access(instance, "/private/report")
    conn.request("POST", "/sha", body=b"DROP TABLE users")  # a body rule: would deny, too
    response = conn.getresponse()
    assert response.status == 200
    assert response.read() == hashlib.sha256(b"DROP TABLE users").hexdigest().encode()
    line = _decision(instance, "rule_logged", "no-drop-table")
    assert line["dry_run"] is True and line["action"] == "deny"
    response, _ = get(conn, "/api/orders", **{"X-Offload-Tag": "forged"})
    assert response.status == 200
    assert server.requests[-1].headers_named("X-Offload-Tag") == []  # no tag, none forged
    line = _decision(instance, "rule_logged", "api")
    assert line["dry_run"] is True and line["action"] == "tag"
    assert not any(e.get("event") in ("rule_denied", "rule_tagged") for e in instance.events)


# --- built-in rules ----------------------------------------------------------------------------

BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


@pytest.fixture
def builtin(pki, localhost_bundle, http_backend, offload, port):
    server = http_backend()
    instance = offload(http_config(port, [localhost_bundle], [server.address], frontend=(
        '[frontends.inspect]\nbuiltin = ["path-traversal", "sqli", "xss", "scanners", '
        '"cookies"]\n')))
    return server, instance


@pytest.mark.parametrize(("path", "headers", "rule"), [
    ("/../../etc/passwd", {}, "builtin:path-traversal"),
    ("/static/%2e%2e/%2e%2e/etc/passwd", {}, "builtin:path-traversal"),
    ("/download?file=../../../etc/passwd", {}, "builtin:path-traversal-query"),
    ("/login?user=admin%27%20OR%201%3D1--", {}, "builtin:sqli-tautology"),
    ("/items?id=1%20UNION%20SELECT%20password%20FROM%20users", {}, "builtin:sqli-union"),
    ("/search?q=%3Cscript%3Ealert(1)%3C/script%3E", {}, "builtin:xss-tag"),
    ("/", {"User-Agent": "sqlmap/1.7.2#stable (https://sqlmap.org)"}, "builtin:scanner-user-agent"),
    ("/", {"Cookie": "session=" + "a" * 5000}, "builtin:cookie-oversized"),
])
def test_builtin_rules_deny_typical_probes(pki, builtin, port, path, headers, rule):
    server, instance = builtin
    answer = _raw(port, pki.ca, f"GET {path} HTTP/1.1\r\nHost: localhost\r\n".encode()
                  + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items()) + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 403 ")
    entry = _access(instance, path)
    assert entry["status"] == 403 and entry["reason"] == f"rule_denied:{rule}"
    assert _decision(instance, "rule_denied", rule)["client"] == "127.0.0.1"
    assert server.requests == []


def test_builtin_rules_let_ordinary_requests_through(pki, builtin, port):
    server, instance = builtin
    conn = https(port, pki.ca)
    paths = ["/", "/search?q=union+station", "/plans?choice=select+a+plan",
             "/people?name=O%27Brien&sort=asc", "/docs/javascript-the-good-parts",
             "/blog/2024/10/why-we-use-dots...-sometimes", "/img/logo.svg?v=3",
             "/search?q=how+to+write+%3C+and+%3E+in+html"]
    for path in paths:
        response, _ = get(conn, path, **{"User-Agent": BROWSER,
                                         "Cookie": "session=abc123; theme=dark; " + "x" * 900})
        assert response.status == 200, path
    assert [r.target for r in server.requests] == paths
    conn.request("POST", "/sha", body=b"comment=' OR 1=1 is a classic, <script> too")
    response = conn.getresponse()  # built-in rules never look at bodies
    assert response.status == 200
    response.read()
    assert not any(str(e.get("event", "")).startswith("rule_") for e in instance.events)


# --- configuration errors ----------------------------------------------------------------------

def _check(tmp_path: Path, config: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "offload.toml"
    path.write_text(config)
    return subprocess.run([sys.executable, "-m", "offload", "check", "-c", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_bad_regex_is_a_config_error_naming_the_rule(tmp_path, localhost_bundle):
    result = _check(tmp_path, http_config(8443, [localhost_bundle], ["127.0.0.1:8080"], frontend=(
        '[[frontends.inspect.rules]]\nname = "admin-only"\naction = "deny"\n'
        'path = "^/admin(("\n')))
    assert result.returncode == 1
    assert "frontends[0].inspect.rules[0].path:" in result.stderr
    assert 'rule "admin-only": path pattern' in result.stderr
    assert "not a valid regular expression" in result.stderr


def test_misspelled_rule_key_gets_a_suggestion(tmp_path, localhost_bundle):
    result = _check(tmp_path, http_config(8443, [localhost_bundle], ["127.0.0.1:8080"], frontend=(
        '[frontends.inspect]\ndry_rn = true\n[[frontends.inspect.rules]]\nname = "r"\n'
        'action = "deny"\npaht = "^/x"\n')))
    assert result.returncode == 1
    assert 'frontends[0].inspect.dry_rn: unknown key\n      fix: did you mean "dry_run"?' in (
        result.stderr)
    assert 'frontends[0].inspect.rules[0].paht: unknown key\n      fix: did you mean "path"?' in (
        result.stderr)


def test_rules_on_a_tcp_frontend_are_a_config_error(tmp_path, localhost_bundle):
    result = _check(tmp_path, tcp_config(8443, [localhost_bundle], ["127.0.0.1:8080"], frontend=(
        '[frontends.inspect]\nbuiltin = ["sqli"]\n')))
    assert result.returncode == 1
    assert ('frontends[0].inspect: inspect only applies to HTTP requests, and this frontend is '
            'in mode "tcp"') in result.stderr
    assert 'set mode = "http"' in result.stderr
