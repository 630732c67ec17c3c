"""Inspection rules: config validation, each condition, AND semantics, actions, dry-run, the
body prefix, the built-in sets against probes and ordinary traffic, and properties
(offload.security.rules, rules_config, builtin_rules)."""

from __future__ import annotations

import re
import time
import tomllib
from ipaddress import ip_address
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from offload.proto.http_types import Headers, Request
from offload.security.builtin_rules import BUILTIN_SETS, builtin_set
from offload.security.rules import (
    ALLOW,
    Match,
    RuleSet,
    Verdict,
    compile_rules,
    normalize_path,
    path_forms,
    query_forms,
)
from offload.security.rules_config import BUILTIN_SET_NAMES, RuleConfig, RuleSetConfig

ALL_BUILTINS = ("path-traversal", "sqli", "xss", "scanners", "cookies")
BROWSER = b"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


def ruleset(*rules: dict[str, Any], **settings_: Any) -> RuleSet:
    return compile_rules(RuleSetConfig.model_validate({"rules": list(rules), **settings_}))


def check(rules: RuleSet, target: bytes = b"/", *, client: str = "192.0.2.10", method: bytes = b"GET",
          headers: Headers | None = None) -> Verdict:
    path, _, query = target.partition(b"?")
    return rules.check_head(client, method, path, query, headers or [(b"User-Agent", BROWSER)])


def fired(verdict: Verdict) -> list[str]:
    return [match.rule for match in verdict.matches]


def invalid(raw: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        RuleSetConfig.model_validate(raw)
    return str(caught.value)


# --- configuration ---------------------------------------------------------------------------

def test_bad_regex_names_the_rule_the_pattern_and_the_fix() -> None:
    text = invalid({"rules": [{"name": "admin-only", "action": "deny", "path": "^/admin(("}]})
    assert 'rule "admin-only"' in text
    assert "'^/admin(('" in text
    assert "not a valid regular expression" in text
    assert "escape special characters" in text


@pytest.mark.parametrize("key", ["query", "body"])
def test_bad_regex_in_query_and_body(key: str) -> None:
    text = invalid({"rules": [{"name": "r1", "action": "log", key: "[a-"}]})
    assert f'rule "r1": {key} pattern' in text


def test_bad_header_regex_names_rule_and_header() -> None:
    text = invalid({"rules": [{"name": "ua", "action": "deny", "header": {"User-Agent": "*bot"}}]})
    assert 'rule "ua"' in text
    assert "header 'User-Agent'" in text


@pytest.mark.parametrize(("rule", "expected"), [
    ({"name": "r", "action": "deny", "client": ["10.0.0.300/8"]}, "not an IP address or CIDR"),
    ({"name": "r", "action": "deny", "not_client": ["example.com"]}, "not an IP address or CIDR"),
    ({"name": "r", "action": "deny", "client": []}, "at least 1 item"),
    ({"name": "r", "action": "deny", "methods": ["get"]}, 'write "GET"'),
    ({"name": "r", "action": "deny", "method_not_in": ["GE T"]}, "not an HTTP method"),
    ({"name": "r", "action": "deny"}, "has no condition"),
    ({"name": "r", "action": "log", "tag": "x", "path": "/"}, 'tag is only used with action = "tag"'),
    ({"name": "r", "action": "tag", "tag": "bad\nvalue", "path": "/"}, "cannot be a header value"),
    ({"name": "r", "action": "block", "path": "/"}, "'deny', 'log' or 'tag'"),
    ({"name": "r", "action": "deny", "path": ""}, "at least 1 character"),
    ({"name": "r", "action": "deny", "header": {"X-A": ".", "x-a": "."}}, "given twice"),
    ({"name": "r", "action": "deny", "header": {"bad name": "."}}, "not a header field name"),
    ({"name": "has space", "action": "deny", "path": "/"}, "is not a rule name"),
    ({"name": "r", "action": "deny", "path": "/", "paht": "/"}, "Extra inputs are not permitted"),
    ({"action": "deny", "path": "/"}, "Field required"),
])
def test_invalid_rules(rule: dict[str, Any], expected: str) -> None:
    assert expected in invalid({"rules": [rule]})


def test_duplicate_rule_names() -> None:
    rule = {"name": "twice", "action": "log", "path": "/"}
    text = invalid({"rules": [rule, {"name": "other", "action": "log", "path": "/"}, rule]})
    assert 'rule "twice" is defined twice (entries 0 and 2)' in text


def test_builtin_prefix_is_reserved() -> None:
    assert "reserved" in invalid({"rules": [{"name": "builtin:sqli-union", "action": "log", "path": "/"}]})


@pytest.mark.parametrize(("raw", "expected"), [
    ({"builtin": ["sql-injection"]}, "'path-traversal', 'sqli', 'xss', 'scanners' or 'cookies'"),
    ({"builtin": ["xss", "xss"]}, "listed twice"),
    ({"body_inspect_bytes": "1MiB"}, "out of range"),
    ({"body_inspect_bytes": 0}, "out of range"),
    ({"body_inspect_bytes": "lots"}, "not a size"),
    ({"tag_header": "Content-Length"}, "controls how the request is read"),
    ({"tag_header": "X Tag"}, "not a header field name"),
    ({"dry_run": "yes"}, "valid boolean"),
    ({"rule": []}, "Extra inputs are not permitted"),
])
def test_invalid_rule_sets(raw: dict[str, Any], expected: str) -> None:
    assert expected in invalid(raw)


def test_defaults_and_sizes() -> None:
    config = RuleSetConfig()
    assert (config.rules, config.builtin, config.dry_run) == ((), (), False)
    assert config.body_inspect_bytes == 8192
    assert config.tag_header == "X-Offload-Tag"
    assert RuleSetConfig.model_validate({"body_inspect_bytes": "16KiB"}).body_inspect_bytes == 16384
    with pytest.raises(ValidationError):
        config.dry_run = True  # type: ignore[misc]


TOML_EXAMPLE = r'''
builtin = ["path-traversal", "sqli", "xss", "scanners", "cookies"]
builtin_action = "deny"
dry_run = false
body_inspect_bytes = "8KiB"
tag_header = "X-Offload-Tag"

[[rules]]
name = "admin-from-office-only"
action = "deny"
path = "^/admin(/|$)"
not_client = ["10.0.0.0/8", "2001:db8::/32"]

[[rules]]
name = "common-methods-only"
action = "deny"
method_not_in = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"]

[[rules]]
name = "old-browser"
action = "tag"
tag = "legacy"
header = { "User-Agent" = '(?i)msie [5-8]\.' }

[[rules]]
name = "php-upload"
action = "log"
methods = ["POST"]
path = "^/upload"
body = '(?i)<\?php'
'''


def test_toml_example_loads_and_compiles() -> None:
    config = RuleSetConfig.model_validate(tomllib.loads(TOML_EXAMPLE))
    rules = compile_rules(config)
    assert [rule.name for rule in rules.rules[:4]] == [
        "admin-from-office-only", "common-methods-only", "old-browser", "php-upload"]
    assert len(rules.rules) == 4 + sum(len(builtin_set(name)) for name in ALL_BUILTINS)
    assert rules.needs_body
    assert fired(check(rules, b"/admin/users", client="10.1.2.3")) == []
    assert check(rules, b"/admin/users", client="203.0.113.9").denied_by == "admin-from-office-only"


def test_builtin_sets_match_their_names() -> None:
    assert tuple(name for name, _ in BUILTIN_SETS) == BUILTIN_SET_NAMES == ALL_BUILTINS
    for name, rules in BUILTIN_SETS:
        assert rules
        assert builtin_set(name) is rules
        for rule in rules:
            assert rule.name.startswith("builtin:")
            assert rule.description
            assert rule.body is None  # built-ins never hold a body back
    with pytest.raises(KeyError):
        builtin_set("nope")


# --- conditions -----------------------------------------------------------------------------

def test_client_and_not_client() -> None:
    rules = ruleset({"name": "lan", "action": "log", "client": ["10.0.0.0/8", "2001:db8::/32"]},
                    {"name": "outside", "action": "log", "not_client": ["10.0.0.0/8"]})
    assert fired(check(rules, client="10.9.8.7")) == ["lan"]
    assert fired(check(rules, client="::ffff:10.9.8.7")) == ["lan"]  # IPv4-mapped
    assert fired(check(rules, client="2001:db8::1")) == ["lan", "outside"]
    assert fired(check(rules, client="192.0.2.1")) == ["outside"]
    # An unknown address is in no network: fail closed for allow-lists.
    assert fired(check(rules, client="")) == ["outside"]
    assert fired(rules.check_head(ip_address("10.0.0.1"), b"GET", b"/", b"", [])) == ["lan"]


def test_methods_and_method_not_in() -> None:
    rules = ruleset({"name": "writes", "action": "log", "methods": ["POST", "PUT"]},
                    {"name": "allow-list", "action": "deny", "method_not_in": ["GET", "HEAD", "POST"]})
    assert fired(check(rules, method=b"GET")) == []
    assert fired(check(rules, method=b"POST")) == ["writes"]
    assert fired(check(rules, method=b"PUT")) == ["writes", "allow-list"]
    assert fired(check(rules, method=b"get")) == ["allow-list"]  # methods are case-sensitive
    assert check(rules, method=b"TRACE").deny


def test_path_matches_sent_decoded_and_normalised_forms() -> None:
    rules = ruleset({"name": "admin", "action": "deny", "path": "^/admin(/|$)"})
    for target in (b"/admin", b"/admin/x", b"//admin", b"/x/../admin/", b"/./admin", b"/%61dmin",
                   b"/static/..%2fadmin", b"/admin?x=1"):
        assert check(rules, target).deny, target
    for target in (b"/administrator", b"/static/admin", b"/x?/admin", b"/"):
        assert not check(rules, target).deny, target
    raw = ruleset({"name": "encoded", "action": "log", "path": "(?i)%2f"})
    assert fired(check(raw, b"/a%2Fb")) == ["encoded"]


def test_path_forms_and_normalisation() -> None:
    assert path_forms(b"/a/b") == ("/a/b",)
    assert path_forms(b"/a/%2e%2e/b") == ("/a/%2e%2e/b", "/a/../b", "/b")
    assert path_forms(b"/%ff") == ("/%ff", "/\udcff")
    assert normalize_path("/../../etc/passwd") == "/etc/passwd"
    assert normalize_path("/a/./b//c/") == "/a/b/c/"
    assert normalize_path("/a/b/..") == "/a/"
    assert normalize_path("/..") == "/"
    assert normalize_path("*") == "*"
    assert query_forms(b"q=a+b%26c") == ("q=a+b%26c", "q=a b&c")
    assert query_forms(b"q=plain") == ("q=plain",)


def test_query_condition() -> None:
    rules = ruleset({"name": "debug", "action": "deny", "query": "(^|&)debug=1(&|$)"})
    assert check(rules, b"/x?debug=1").deny
    assert check(rules, b"/x?a=2&debug=1").deny
    assert check(rules, b"/x?debug%3D1").deny  # decoded once
    assert not check(rules, b"/x?nodebug=1").deny
    assert not check(rules, b"/x").deny
    has_query = ruleset({"name": "any-query", "action": "log", "query": "."})
    assert fired(check(has_query, b"/x")) == []
    assert fired(check(has_query, b"/x?a")) == ["any-query"]


def test_header_condition() -> None:
    rules = ruleset({"name": "curl", "action": "log", "header": {"User-Agent": "^curl/"}},
                    {"name": "has-debug", "action": "log", "header": {"x-debug": ".*"}},
                    {"name": "both", "action": "log", "header": {"x-a": "1", "X-B": "2"}})
    assert fired(check(rules, headers=[(b"user-agent", b"curl/8.5")])) == ["curl"]
    assert fired(check(rules, headers=[(b"USER-AGENT", b"Wget curl/1")])) == []
    assert fired(check(rules, headers=[(b"X-Debug", b"")])) == ["has-debug"]  # present, empty
    assert fired(check(rules, headers=[])) == []  # an absent field never matches
    # Any field of that name may match; every named header must match (AND).
    assert fired(check(rules, headers=[(b"X-A", b"0"), (b"x-a", b"1"), (b"x-b", b"2")])) == ["both"]
    assert fired(check(rules, headers=[(b"X-A", b"1")])) == []


def test_conditions_are_anded() -> None:
    rules = ruleset({"name": "login-post-from-outside", "action": "deny", "methods": ["POST"],
                     "path": "^/login$", "not_client": ["10.0.0.0/8"],
                     "header": {"content-type": "json"}, "query": "next="})
    hit: dict[str, Any] = {"target": b"/login?next=/", "method": b"POST", "client": "192.0.2.1",
           "headers": [(b"Content-Type", b"application/json")]}
    assert check(rules, **hit).deny
    for change in ({"target": b"/logout?next=/"}, {"method": b"GET"}, {"client": "10.0.0.1"},
                   {"headers": [(b"Content-Type", b"text/plain")]}, {"target": b"/login"}):
        assert not check(rules, **{**hit, **change}).deny, change


# --- actions and dry-run ----------------------------------------------------------------------

def test_actions() -> None:
    rules = ruleset({"name": "no-php", "action": "deny", "path": r"\.php$"},
                    {"name": "watch", "action": "log", "path": "^/api/"},
                    {"name": "beta", "action": "tag", "tag": "beta", "path": "^/api/v2/"},
                    {"name": "v2", "action": "tag", "path": "^/api/v2/"})
    assert check(rules, b"/") is ALLOW
    verdict = check(rules, b"/api/v2/x.php")
    assert verdict.deny
    assert verdict.denied_by == "no-php"
    assert fired(verdict) == ["no-php", "watch", "beta", "v2"]  # every match is recorded
    logged = check(rules, b"/api/v1/users")
    assert (logged.deny, logged.tags, fired(logged)) == (False, (), ["watch"])
    assert logged.matches == (Match("watch", "log", enforced=True),)
    tagged = check(rules, b"/api/v2/users")
    assert tagged.tags == ("beta", "v2")  # the tag defaults to the rule's name
    assert not tagged.deny


def test_forward_headers_adds_tags_and_drops_the_clients_own() -> None:
    rules = ruleset({"name": "t", "action": "tag", "tag": "flagged", "path": "^/t"},
                    {"name": "u", "action": "tag", "path": "^/t"}, tag_header="X-Edge-Tag")
    sent = [(b"Host", b"a"), (b"x-edge-tag", b"spoofed"), (b"Accept", b"*/*")]
    verdict = check(rules, b"/t", headers=sent)
    assert rules.forward_headers(sent, verdict) == (
        [(b"Host", b"a"), (b"Accept", b"*/*")], ((b"X-Edge-Tag", b"flagged, u"),))
    assert rules.forward_headers(sent, check(rules, b"/other", headers=sent)) == (
        [(b"Host", b"a"), (b"Accept", b"*/*")], ())


def test_dry_run_logs_only() -> None:
    rules = ruleset({"name": "deny-all-php", "action": "deny", "path": r"\.php"},
                    {"name": "tag-it", "action": "tag", "path": r"\.php"}, dry_run=True)
    verdict = check(rules, b"/index.php")
    assert not verdict.deny
    assert verdict.tags == ()
    assert verdict.denied_by is None
    assert [(m.rule, m.action, m.enforced, m.outcome) for m in verdict.matches] == [
        ("deny-all-php", "deny", False, "dry-run"), ("tag-it", "tag", False, "dry-run")]
    assert verdict.matches[0].log_fields("192.0.2.10") == {
        "client": "192.0.2.10", "rule": "deny-all-php", "action": "deny", "dry_run": True}


@pytest.mark.parametrize(("action", "deny", "tags"), [
    ("deny", True, ()), ("log", False, ()), ("tag", False, ("builtin:sqli-union",))])
def test_builtin_action(action: str, deny: bool, tags: tuple[str, ...]) -> None:
    rules = compile_rules(RuleSetConfig.model_validate({"builtin": ["sqli"], "builtin_action": action}))
    verdict = check(rules, b"/p?id=1+union+select+password+from+users")
    assert (verdict.deny, verdict.tags, fired(verdict)) == (deny, tags, ["builtin:sqli-union"])
    assert verdict.matches[0].outcome == action


def test_check_request_splits_the_target() -> None:
    rules = ruleset({"name": "q", "action": "deny", "path": "^/a$", "query": "^b=1$"})
    request = Request(method=b"GET", target=b"/a?b=1", version=b"1.1", headers=[], host=b"h")
    assert rules.check_request("192.0.2.1", request).deny


def test_no_rules_allows_everything() -> None:
    rules = compile_rules(RuleSetConfig())
    assert check(rules, b"/../etc/passwd") is ALLOW
    assert not rules.needs_body
    assert rules.check_body(b"anything", ALLOW) is ALLOW


# --- the body prefix -------------------------------------------------------------------------

BODY_RULES: tuple[dict[str, Any], ...] = (
    {"name": "php-upload", "action": "deny", "methods": ["POST"], "path": "^/upload", "body": r"<\?php"},
    {"name": "head-only", "action": "log", "path": "^/upload"},
)


def test_body_rule_fires_only_when_head_and_body_match() -> None:
    rules = ruleset(*BODY_RULES)
    assert rules.needs_body
    head = check(rules, b"/upload", method=b"POST")
    assert head.needs_body
    assert fired(head) == ["head-only"]  # the body rule waits
    assert not head.deny
    done = rules.check_body(b"GIF89a <?php system($_GET[1]);", head)
    assert done.deny
    assert fired(done) == ["head-only", "php-upload"]
    assert not done.needs_body
    clean = rules.check_body(b"GIF89a plain image", head)
    assert (clean.deny, fired(clean)) == (False, ["head-only"])
    # Head conditions fail: the body is never needed, whatever it holds.
    other = check(rules, b"/upload", method=b"PUT")
    assert not other.needs_body
    assert rules.check_body(b"<?php", other) is other


def test_body_is_inspected_up_to_the_limit_only() -> None:
    rules = ruleset(*BODY_RULES, body_inspect_bytes=16)
    head = check(rules, b"/upload", method=b"POST")
    assert rules.check_body(b"x" * 11 + b"<?php", head).deny  # ends at byte 16
    assert not rules.check_body(b"x" * 12 + b"<?php", head).deny  # cut at 16: "<?ph"
    assert rules.body_inspect_bytes == 16


def test_empty_body_and_denied_head() -> None:
    rules = ruleset(*BODY_RULES, {"name": "no-admin", "action": "deny", "path": "^/upload/admin"})
    assert not rules.check_body(b"", check(rules, b"/upload", method=b"POST")).deny
    denied = check(rules, b"/upload/admin", method=b"POST")
    assert denied.deny
    assert not denied.needs_body  # answer 403 without reading the body


def test_form_bodies_are_also_decoded() -> None:
    rules = ruleset({"name": "or-1", "action": "deny", "methods": ["POST"], "body": "' or 1=1"})
    form = [(b"Content-Type", b"application/x-www-form-urlencoded; charset=UTF-8")]
    body = b"user=admin%27+or+1%3D1--&pass=x"
    assert rules.check_body(body, check(rules, method=b"POST", headers=form)).deny
    json = [(b"Content-Type", b"application/json")]
    assert not rules.check_body(body, check(rules, method=b"POST", headers=json)).deny
    assert rules.check_body(b"{\"u\": \"' or 1=1\"}", check(rules, method=b"POST", headers=json)).deny


def test_body_dry_run() -> None:
    rules = ruleset(*BODY_RULES, dry_run=True)
    done = rules.check_body(b"<?php", check(rules, b"/upload", method=b"POST"))
    assert not done.deny
    assert [m.outcome for m in done.matches] == ["dry-run", "dry-run"]


# --- the built-in sets -----------------------------------------------------------------------

ATTACKS = [
    (b"/../../etc/passwd", None, "builtin:path-traversal"),
    (b"/static/%2e%2e%2f%2e%2e%2fetc/passwd", None, "builtin:path-traversal"),
    (b"/static/..%2F..%2Fwin.ini", None, "builtin:path-traversal"),
    (b"/a/%252e%252e%252fetc/passwd", None, "builtin:path-traversal"),  # double-encoded
    (b"/scripts/..%5c..%5cwinnt/system32/cmd.exe", None, "builtin:path-traversal"),
    (b"/app/..;/manager/html", None, "builtin:path-traversal"),
    (b"/view?file=../../../../etc/passwd", None, "builtin:path-traversal-query"),
    (b"/view?file=%2e%2e%2f%2e%2e%2fboot.ini", None, "builtin:path-traversal-query"),
    (b"/view?page=/etc/passwd", None, "builtin:path-sensitive-file"),
    (b"/view?page=/proc/self/environ", None, "builtin:path-sensitive-file"),
    (b"/image%00.php", None, "builtin:path-nul"),
    (b"/login?user=%27%20OR%201%3D1--", None, "builtin:sqli-tautology"),
    (b"/login?user=admin'+or+'a'='a", None, "builtin:sqli-tautology"),
    (b"/login?user=x%22)%20or%20(%221%22=%221", None, "builtin:sqli-tautology"),
    (b"/item?id=1+UNION+SELECT+username,password+FROM+users", None, "builtin:sqli-union"),
    (b"/item?id=1%20union%20all%20select%20null", None, "builtin:sqli-union"),
    (b"/item?id=1/**/UnIoN/**/SeLeCt/**/1", None, "builtin:sqli-union"),
    (b"/item?id=-1+union(select+1)", None, "builtin:sqli-union"),
    (b"/item?id=1+AND+SLEEP(5)", None, "builtin:sqli-probe"),
    (b"/item?id=1;waitfor+delay+'0:0:5'", None, "builtin:sqli-probe"),
    (b"/item?id=1+and+(select+1+from+information_schema.tables)", None, "builtin:sqli-probe"),
    (b"/item?id=@@version", None, "builtin:sqli-probe"),
    (b"/item?id=1;DROP+TABLE+users", None, "builtin:sqli-probe"),
    (b"/search?q=<script>alert(1)</script>", None, "builtin:xss-tag"),
    (b"/search?q=%3CScRiPt%3Ealert(document.cookie)%3C/script%3E", None, "builtin:xss-tag"),
    (b"/search?q=%3Csvg/onload=alert(1)%3E", None, "builtin:xss-tag"),
    (b"/<script>alert(1)</script>", None, "builtin:xss-tag-path"),
    (b"/search?q=%3Cimg%20src=x%20onerror=alert(1)%3E", None, "builtin:xss-handler"),
    (b"/search?q=%22%20onmouseover=%22alert(1)", None, "builtin:xss-handler"),
    (b"/go?to=javascript:alert(1)", None, "builtin:xss-script-uri"),
    (b"/go?to=JaVaScRiPt%3Aeval(atob('YQ'))", None, "builtin:xss-script-uri"),
    (b"/", [(b"User-Agent", b"sqlmap/1.7.2#stable (https://sqlmap.org)")], "builtin:scanner-user-agent"),
    (b"/", [(b"User-Agent", b"Mozilla/5.00 (Nikto/2.1.6) (Evasions:None) (Test:000001)")],
     "builtin:scanner-user-agent"),
    (b"/", [(b"User-Agent", b"Mozilla/5.0 (compatible; Nmap Scripting Engine; https://nmap.org)")],
     "builtin:scanner-user-agent"),
    (b"/", [(b"user-agent", b"masscan/1.3 (https://github.com/robertdavidgraham/masscan)")],
     "builtin:scanner-user-agent"),
    (b"/", [(b"Cookie", b"session=" + b"A" * 5000)], "builtin:cookie-oversized"),
    (b"/", [(b"Cookie", b"a=1; big=" + b"B" * 4200 + b"; c=2")], "builtin:cookie-oversized"),
    (b"/", [(b"Cookie", b"; ".join(b"c%d=1" % i for i in range(400)))], "builtin:cookie-too-many"),
    (b"/", [(b"Cookie", b"a=1\x01; b=2")], "builtin:cookie-control-chars"),
]

BENIGN_TARGETS = [
    b"/", b"/index.html", b"/search?q=union+station", b"/search?q=Union%20Square%20select%20bakery",
    b"/search?q=select+a+plan", b"/search?q=O%27Reilly+or+Packt", b"/search?q=it%27s+1%3D1+or+not",
    b"/search?q=rock+%27n%27+roll", b"/search?q=javascript%3A+the+good+parts",
    b"/search?q=how+to+sleep+better", b"/search?q=a+%3C+b+and+c+%3E+d",
    b"/search?q=%3Cb%3Ebold%3C%2Fb%3E", b"/search?q=scripting+languages",
    b"/docs/v1.2/release..notes", b"/files/archive..tar.gz", b"/a/.../b", b"/.well-known/acme-challenge/x",
    b"/static/app.min.js?v=1.2.3", b"/api/v1/users/42?fields=name,email&sort=-created",
    b"/redirect?next=/account/settings", b"/redirect?next=../settings",
    b"/api/items?filter=price%3E10%26price%3C20", b"/wiki/Union_(set_theory)",
    b"/wiki/SELECT_(SQL)", b"/blog/2024/05/12/onload-events-explained", b"/search?q=onerror+handler",
    b"/search?q=%22online%22+shop", b"/search?q=you%27re+on+time",
    b"/tracker/announce?info_hash=%00%12%34%ab&peer_id=-qB4620-", b"/path/with%20space",
    b"/emoji/%F0%9F%98%80", b"/search?q=caf%C3%A9", b"/search?email=a%2Bb%40example.com",
    b"/login?next=%2Fdashboard%3Ftab%3D1", b"/calc?expr=1%3D1", b"/search?q=etc%2Fpasswd+file+format",
    b"/search?q=%2Fetc%2Fpasswd+permissions", b"/search?q=c%3A%5Cboot.ini+missing",
]

BENIGN_AGENTS = [
    BROWSER,
    b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 "
    b"Safari/537.36",
    b"Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    b"Version/17.5 Mobile/15E148 Safari/604.1",
    b"curl/8.5.0", b"python-requests/2.32.3", b"Go-http-client/1.1", b"kube-probe/1.30",
    b"Googlebot/2.1 (+http://www.google.com/bot.html)", b"Prometheus/2.53.0",
]

BENIGN_COOKIES = [
    b"session=abc123; theme=dark",
    b"_ga=GA1.2.1234567890.1700000000; _gid=GA1.2.987654321.1700000000; consent={\"ads\":false}",
    b"jwt=" + b"e" * 3000 + b"; csrf=" + b"c" * 64,
    b"; ".join(b"pref%d=%d" % (i, i) for i in range(150)),
    b"",
]


@pytest.fixture(scope="module")
def stock() -> RuleSet:
    return compile_rules(RuleSetConfig.model_validate({"builtin": list(ALL_BUILTINS)}))


@pytest.mark.parametrize(("target", "headers", "rule"), ATTACKS)
def test_builtins_catch_probes(stock: RuleSet, target: bytes, headers: Headers | None, rule: str) -> None:
    verdict = check(stock, target, headers=headers)
    assert rule in fired(verdict)
    assert verdict.deny


@pytest.mark.parametrize("target", BENIGN_TARGETS)
def test_builtins_leave_ordinary_targets_alone(stock: RuleSet, target: bytes) -> None:
    assert fired(check(stock, target)) == []


@pytest.mark.parametrize("agent", BENIGN_AGENTS)
def test_builtins_leave_ordinary_agents_alone(stock: RuleSet, agent: bytes) -> None:
    assert fired(check(stock, b"/", headers=[(b"User-Agent", agent)])) == []


@pytest.mark.parametrize("cookie", BENIGN_COOKIES)
def test_builtins_leave_ordinary_cookies_alone(stock: RuleSet, cookie: bytes) -> None:
    assert fired(check(stock, b"/", headers=[(b"Cookie", cookie), (b"User-Agent", BROWSER)])) == []


HOSTILE = ["<" * 8000, "'" + " " * 8000, "union" + "/*" * 4000, "..;" * 2700, "' or " + "(" * 8000,
           "=javascript:" + "x" * 8000, "<a" + " " * 8000, "%2e" * 2700, "/" * 8000, "'or " * 2000,
           "\" on" * 2000, ";" * 8000, "a=" + "b" * 8000]


@pytest.mark.parametrize("text", HOSTILE, ids=lambda text: repr(text[:8]))
def test_builtins_stay_linear_on_hostile_input(stock: RuleSet, text: str) -> None:
    raw = text.encode()
    started = time.perf_counter()
    check(stock, b"/" + raw + b"?" + raw, headers=[(b"User-Agent", raw), (b"Cookie", raw)])
    assert time.perf_counter() - started < 0.25  # a backtracking pattern takes seconds here


# --- properties ------------------------------------------------------------------------------

PATH_CHARS = st.sampled_from([*"abz09-._~/%?&=+;:'\"<>()*@! ", "%2e", "%2f", "..", "%00", "%ff"])
paths = st.lists(PATH_CHARS, max_size=60).map(lambda parts: ("/" + "".join(parts)).encode())
RULES_FOR_PROPERTIES = (
    {"name": "d", "action": "deny", "path": "a"},
    {"name": "t", "action": "tag", "query": "="},
    {"name": "b", "action": "deny", "methods": ["POST"], "body": "x"},
    {"name": "c", "action": "deny", "not_client": ["10.0.0.0/8"], "header": {"x": "."}},
)


@given(paths, st.binary(max_size=200), st.sampled_from([b"GET", b"POST", b"PATCH"]))
@settings(max_examples=300, deadline=None)
def test_random_requests_never_crash(stock: RuleSet, target: bytes, body: bytes, method: bytes) -> None:
    for rules in (stock, ruleset(*RULES_FOR_PROPERTIES)):
        verdict = check(rules, target, method=method, headers=[(b"Cookie", body), (b"x", body)])
        final = rules.check_body(body, verdict) if verdict.needs_body else verdict
        assert final.deny == (final.denied_by is not None)
        assert not final.needs_body


@given(st.binary(max_size=300), st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes_never_crash(stock: RuleSet, path: bytes, query: bytes) -> None:
    check(stock, b"/" + path.replace(b"?", b"") + b"?" + query,
          headers=[(b"User-Agent", query), (b"Cookie", path)])


@given(paths)
@settings(max_examples=200, deadline=None)
def test_compile_is_deterministic(target: bytes) -> None:
    config = RuleSetConfig.model_validate(
        {"rules": list(RULES_FOR_PROPERTIES), "builtin": list(ALL_BUILTINS)})
    first, second = compile_rules(config), compile_rules(config)
    assert first.rules == second.rules  # same names, actions, networks and compiled patterns
    assert check(first, target) == check(second, target)


@given(paths, st.binary(max_size=100), st.sampled_from([b"GET", b"POST"]),
       st.sampled_from(["10.0.0.1", "192.0.2.1"]))
@settings(max_examples=300, deadline=None)
def test_dry_run_never_denies_or_tags(target: bytes, body: bytes, method: bytes, client: str) -> None:
    rules = ruleset(*RULES_FOR_PROPERTIES, dry_run=True, builtin=list(ALL_BUILTINS), builtin_action="tag")
    verdict = check(rules, target, method=method, client=client, headers=[(b"x", b"1")])
    verdict = rules.check_body(body, verdict)
    assert not verdict.deny
    assert verdict.tags == ()
    assert all(not match.enforced for match in verdict.matches)


@given(paths)
def test_normalised_paths_have_no_dot_segments(target: bytes) -> None:
    path = target.partition(b"?")[0].decode()
    normal = normalize_path(path)
    assert normalize_path(normal) == normal
    assert not re.search(r"(^|/)\.{1,2}(/|$)", normal)
    assert "//" not in normal


def test_rule_config_is_reusable_standalone() -> None:
    rule = RuleConfig(name="r", action="deny", path="^/x")
    assert rule.conditions == ("path",)


# --- TLS fingerprints ---------------------------------------------------------------------------

CHROME = "t13d1516h2_8daaf6152771_e5627efa2ab1"
CURL = "t13d3112h2_e8f1e7e78f70_b26ce05bbdd6"
SCANNER = "t12i190800_d83cc789557e_7af1ed941c26"


class StubFingerprints:
    """What check_request asks of a connection's fingerprints, counting the asks."""

    def __init__(self, ja4: str | None, ja3: str | None = None) -> None:
        self._ja4, self._ja3, self.asked = ja4, ja3, 0

    @property
    def ja4(self) -> str | None:
        self.asked += 1
        return self._ja4

    @property
    def ja3(self) -> str | None:
        self.asked += 1
        return self._ja3


def test_ja4_lists_and_patterns() -> None:
    rules = ruleset({"name": "known-bot", "action": "deny", "ja4": [SCANNER, "t13d31*_e8f1e7e78f70_*"]},
                    {"name": "browsers-only", "action": "log", "not_ja4": ["t13d15*"]})
    head: tuple[bytes, bytes, bytes, Headers] = (b"GET", b"/", b"", [])
    assert fired(rules.check_head("192.0.2.1", *head, ja4=CHROME)) == []
    assert fired(rules.check_head("192.0.2.1", *head, ja4=SCANNER)) == ["known-bot", "browsers-only"]
    assert rules.check_head("192.0.2.1", *head, ja4=CURL).deny
    # A pattern matches the whole fingerprint, not a part of it; "*" is the only wildcard.
    assert fired(rules.check_head("192.0.2.1", *head, ja4="x" + CURL)) == ["browsers-only"]
    assert fired(rules.check_head("192.0.2.1", *head, ja4=CURL.replace("_", "."))) == ["browsers-only"]
    # Unknown (no fingerprint): never in a list, so an allow-list fails closed.
    assert fired(rules.check_head("192.0.2.1", *head, ja4=None)) == ["browsers-only"]


def test_ja3_lists() -> None:
    digest = "ada70206e40642a3e4461f35503241d5"
    rules = ruleset({"name": "old-tool", "action": "deny", "ja3": [digest.upper()]},
                    {"name": "not-it", "action": "log", "not_ja3": [digest]})
    head: tuple[bytes, bytes, bytes, Headers] = (b"GET", b"/", b"", [])
    assert fired(rules.check_head("192.0.2.1", *head, ja3=digest)) == ["old-tool"]
    assert fired(rules.check_head("192.0.2.1", *head, ja3="0" * 32)) == ["not-it"]
    assert fired(rules.check_head("192.0.2.1", *head)) == ["not-it"]


def test_check_request_asks_for_fingerprints_only_when_a_rule_needs_them() -> None:
    request = Request(method=b"GET", target=b"/x", version=b"1.1", headers=[], host=b"a")
    plain = ruleset({"name": "p", "action": "log", "path": "^/x"})
    stub = StubFingerprints(SCANNER, "0" * 32)
    assert fired(plain.check_request("192.0.2.1", request, stub)) == ["p"]  # type: ignore[arg-type]
    assert stub.asked == 0 and not plain.needs_fingerprints
    bots = ruleset({"name": "b", "action": "deny", "ja4": [SCANNER]})
    assert bots.needs_fingerprints
    assert bots.check_request("192.0.2.1", request, stub).deny  # type: ignore[arg-type]
    assert stub.asked == 1  # JA4 only: JA3 is not computed for a rule that does not read it
    assert not bots.check_request("192.0.2.1", request).deny  # no fingerprints at all


@pytest.mark.parametrize(("rule", "expected"), [
    ({"ja4": ["t13d1516h2"]}, "is not a JA4 fingerprint"),
    ({"ja4": ["t13d1516h2_8daaf6152771_E5627EFA2AB1"]}, "is not a JA4 fingerprint"),
    ({"ja4": ["t13d.*"]}, "is not a JA4 fingerprint"),
    ({"ja4": []}, "at least 1"),
    ({"ja3": ["xyz"]}, "is not a JA3 fingerprint"),
    ({"not_ja3": [5]}, "is not a JA3 fingerprint"),
])
def test_invalid_fingerprint_conditions(rule: dict[str, Any], expected: str) -> None:
    assert expected in invalid({"rules": [{"name": "r", "action": "deny", **rule}]})


def test_a_fingerprint_alone_is_a_condition() -> None:
    config = RuleConfig.model_validate({"name": "r", "action": "deny", "not_ja4": [CHROME]})
    assert config.conditions == ("not_ja4",)
    assert config.fingerprint_conditions == ("not_ja4",)
