"""Configuration loading: a full valid config, a table of bad configs with their key paths,
``load_file`` on real files, and how :class:`ConfigError` renders (offload.config.loader)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from offload.config.loader import load_file, validate
from offload.config.model import CertificateRef, Config, FrontendLimits, UnixAddress
from offload.config.units import EventRate, HostPort
from offload.errors import ConfigError, Issue

Raw = dict[str, Any]


def minimal() -> Raw:
    """A small valid config: two frontends, two backends, no defaults."""
    return {
        "frontends": [
            {"name": "web", "bind": "127.0.0.1:8443", "backend": "api", "certificates": ["site.pem"]},
            {"name": "admin", "bind": ["127.0.0.1:9443"], "backend": "static",
             "certificates": ["admin.pem"]},
        ],
        "backends": [
            {"name": "api", "servers": ["127.0.0.1:8080"]},
            {"name": "static", "servers": ["127.0.0.1:8081", "127.0.0.1:8082"]},
        ],
    }


def full() -> Raw:
    """Every section, certificates and servers written both as strings and as tables."""
    return {
        "global": {"workers": 2, "max_connections": 500, "drain_timeout": "45s",
                   "log_level": "debug", "log_format": "text", "reuseport": False},
        "defaults": {"mode": "http", "idle_timeout": "2m", "alpn": ["h2", "http/1.1"],
                     "connect_timeout": "1500ms", "proxy_protocol": "v1"},
        "frontends": [
            {"name": "web", "bind": ["*:443", "[::]:443"], "backend": "api",
             "certificates": ["site.pem", {"cert": "chain.pem", "key": "chain.key"}],
             "idle_timeout": "30s", "tls_policy": "modern"},
            {"name": "admin", "bind": "127.0.0.1:9443", "backend": "static",
             "certificates": [{"cert": "/etc/offload/certs/"}], "mode": "tcp", "backlog": 64},
        ],
        "backends": [
            {"name": "api", "proxy_protocol": "v2", "server_timeout": "1m30s",
             "servers": ["10.0.0.1:8080", {"address": "[::1]:8081", "name": "v6"},
                         "unix:/run/app.sock"]},
            {"name": "static", "servers": [{"address": "static.internal:80"}]},
        ],
    }


def test_full_config_validates() -> None:
    config = validate(full(), "test.toml")

    assert config.global_.workers == 2
    assert config.global_.max_connections == 500
    assert config.global_.drain_timeout == 45.0
    assert config.global_.log_level == "debug"
    assert config.global_.log_format == "text"
    assert config.global_.reuseport is False

    web, admin = config.frontends
    assert web.bind == (HostPort("0.0.0.0", 443), HostPort("::", 443))
    assert admin.bind == (HostPort("127.0.0.1", 9443),)
    assert web.certificates == (CertificateRef(cert="site.pem"),
                                CertificateRef(cert="chain.pem", key="chain.key"))
    assert web.certificates[0].key is None
    assert admin.certificates == (CertificateRef(cert="/etc/offload/certs/"),)
    assert web.tls_policy == "modern"
    assert admin.backlog == 64

    api, static = config.backends
    assert [server.address for server in api.servers] == [
        HostPort("10.0.0.1", 8080), HostPort("::1", 8081), UnixAddress("/run/app.sock")]
    assert [server.label for server in api.servers] == ["10.0.0.1:8080", "v6", "unix:/run/app.sock"]
    assert static.servers[0].address == HostPort("static.internal", 80)
    assert config.backend("static") is static
    with pytest.raises(KeyError):
        config.backend("nope")


def test_defaults_fill_only_keys_a_section_leaves_out() -> None:
    config = validate(full(), "test.toml")
    web, admin = config.frontends
    api, static = config.backends

    # Set by the frontend itself: the default does not override it.
    assert web.idle_timeout == 30.0
    assert admin.mode == "tcp"
    assert api.proxy_protocol == "v2"
    # Left out: taken from defaults.
    assert web.mode == "http"
    assert admin.idle_timeout == 120.0
    assert web.alpn == admin.alpn == ("h2", "http/1.1")
    assert api.connect_timeout == static.connect_timeout == 1.5
    assert static.proxy_protocol == "v1"
    # Neither the section nor defaults: the built-in default.
    assert web.handshake_timeout == admin.handshake_timeout == 10.0
    assert admin.tls_policy == "intermediate"
    assert api.server_timeout == 90.0
    assert static.server_timeout == 60.0
    assert static.balance == "roundrobin"


def test_limits_and_slow_client_settings() -> None:
    raw = minimal()
    raw["frontends"][0].update(min_body_rate="1KiB/s", send_timeout="20s", limits={
        "max_connections": 1000, "max_connections_per_ip": 20, "connection_rate": "100/s",
        "handshake_rate_per_ip": "10/m burst 5", "request_rate_per_ip": "20/s burst 40",
        "ipv6_prefix": 56})
    web, admin = validate(raw, "test.toml").frontends
    limits = web.limits
    assert (limits.max_connections, limits.max_connections_per_ip) == (1000, 20)
    assert limits.connection_rate == EventRate(100.0, 100.0)
    assert limits.handshake_rate_per_ip == EventRate(10 / 60, 5.0)
    assert limits.request_rate_per_ip == EventRate(20.0, 40.0)
    assert limits.request_rate is limits.handshake_rate is limits.connection_rate_per_ip is None
    assert (limits.ipv4_prefix, limits.ipv6_prefix, limits.max_tracked_clients) == (32, 56, 65536)
    assert limits.any and not admin.limits.any
    assert (web.min_body_rate, web.send_timeout) == (1024.0, 20.0)
    # safe defaults for slow clients; no flood limit unless asked for
    assert (admin.min_body_rate, admin.send_timeout, admin.body_timeout) == (500.0, 60.0, 60.0)
    assert admin.limits == FrontendLimits()
    assert limits.model_dump()["request_rate_per_ip"] == "20/s burst 40"


def test_limits_in_defaults_merge_key_by_key() -> None:
    """A frontend's own limits table adds to [defaults] limits; "off" lifts one of them."""
    raw = minimal()
    raw["defaults"] = {"limits": {"max_connections_per_ip": 50, "request_rate_per_ip": "10/s"},
                       "min_body_rate": "off", "send_timeout": "15s"}
    raw["frontends"][0]["limits"] = {"request_rate_per_ip": "off", "handshake_rate": "50/s"}
    raw["frontends"][1]["min_body_rate"] = "2KiB/s"
    web, admin = validate(raw, "test.toml").frontends
    assert web.limits.max_connections_per_ip == 50
    assert web.limits.request_rate_per_ip is None
    assert web.limits.handshake_rate == EventRate(50.0, 50.0)
    assert admin.limits.max_connections_per_ip == 50
    assert admin.limits.request_rate_per_ip == EventRate(10.0, 10.0)
    assert (web.min_body_rate, admin.min_body_rate) == (0.0, 2048.0)
    assert web.send_timeout == admin.send_timeout == 15.0


def test_built_in_defaults_without_a_defaults_table() -> None:
    config = validate(minimal(), "test.toml")
    frontend, backend = config.frontends[0], config.backends[0]
    assert (frontend.mode, frontend.tls_policy, frontend.alpn) == ("tcp", "intermediate", ())
    assert (frontend.handshake_timeout, frontend.idle_timeout, frontend.backlog) == (10.0, 300.0, 1024)
    assert (backend.balance, backend.proxy_protocol) == ("roundrobin", "none")
    assert (backend.connect_timeout, backend.server_timeout) == (5.0, 60.0)
    assert config.global_.workers >= 1
    assert config.global_.max_connections == 10_000
    assert config.global_.drain_timeout == 30.0
    assert (config.global_.log_level, config.global_.log_format) == ("info", "json")


def test_validate_does_not_change_the_raw_mapping() -> None:
    raw = full()
    before = copy.deepcopy(raw)
    validate(raw, "test.toml")
    assert raw == before
    assert "mode" not in raw["frontends"][0]


def test_models_are_frozen() -> None:
    config = validate(full(), "test.toml")
    with pytest.raises(ValidationError, match="frozen"):
        config.frontends[0].mode = "tcp"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        config.global_.workers = 8  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        config.backends[0].servers[0].name = "x"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        config.frontends[0].certificates[1].key = "other.key"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.frontends[0].bind[0] = HostPort("1.2.3.4", 1)  # type: ignore[index]
    assert config.frontends[0].mode == "http"
    assert config.global_.workers == 2


# --- bad configurations -------------------------------------------------------------------------

Edit = Callable[[Raw], None]


def _walk(raw: Raw, path: str) -> tuple[Any, str | int]:
    """The container holding the last part of a dotted path ("frontends.0.bind") and that part."""
    *parents, last = path.split(".")
    node: Any = raw
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    return node, int(last) if last.isdigit() else last


def put(path: str, value: object) -> Edit:
    def edit(raw: Raw) -> None:
        node, key = _walk(raw, path)
        node[key] = value
    return edit


def drop(path: str) -> Edit:
    def edit(raw: Raw) -> None:
        node, key = _walk(raw, path)
        del node[key]
    return edit


def rename(path: str, new: str) -> Edit:
    def edit(raw: Raw) -> None:
        node, key = _walk(raw, path)
        node[new] = node.pop(key)
    return edit


def issues_of(raw: Raw) -> list[Issue]:
    with pytest.raises(ConfigError) as caught:
        validate(raw, "test.toml")
    assert caught.value.source == "test.toml"
    return caught.value.issues


BAD = [
    # Misspelled keys, at every level, with a "did you mean".
    ("top-level key", put("frontend", []), "frontend", ['unknown key', 'did you mean "frontends"?']),
    ("global key", put("global.worker", 4), "global.worker", ['did you mean "workers"?']),
    ("defaults key", put("defaults.idle_timout", "5s"), "defaults.idle_timout",
     ['unknown key', 'did you mean "idle_timeout"?']),
    ("frontend key", rename("frontends.0.bind", "bnd"), "frontends[0].bnd",
     ['unknown key', 'did you mean "bind"?']),
    ("certificate table key", put("frontends.0.certificates", ["a.pem", {"cert": "b.pem", "kye": "b.key"}]),
     "frontends[0].certificates[1].kye", ['did you mean "key"?']),
    ("backend key", rename("backends.1.servers", "server"), "backends[1].server",
     ['did you mean "servers"?']),
    ("server table key", put("backends.1.servers", ["127.0.0.1:80", {"adress": "127.0.0.1:81"}]),
     "backends[1].servers[1].adress", ['did you mean "address"?']),
    # Missing keys.
    ("missing bind", drop("frontends.0.bind"), "frontends[0].bind", ["required key is missing"]),
    ("missing frontends", drop("frontends"), "frontends", ["required key is missing", "add this key"]),
    ("missing certificate file", put("frontends.0.certificates", [{"key": "k.pem"}]),
     "frontends[0].certificates[0].cert", ["required key is missing"]),
    # Wrong types.
    ("workers not a number", put("global.workers", "many"), "global.workers",
     ["write a whole number, without quotes"]),
    ("workers zero", put("global.workers", 0), "global.workers", ["greater than or equal to 1"]),
    ("reuseport not a bool", put("global.reuseport", [1]), "global.reuseport",
     ["write true or false"]),
    ("name not a string", put("frontends.1.name", 5), "frontends[1].name", ["write a quoted string"]),
    ("certificate key not a string", put("frontends.0.certificates", ["a.pem", {"cert": "b.pem", "key": 5}]),
     "frontends[0].certificates[1].key", ["write a quoted string"]),
    ("alpn not a list", put("frontends.0.alpn", "h2"), "frontends[0].alpn", ["valid tuple"]),
    # Durations.
    ("bare-number duration", put("frontends.0.idle_timeout", 30), "frontends[0].idle_timeout",
     ["needs a unit", '"10s"']),
    ("bare-number default", put("defaults.idle_timeout", 30), "defaults.idle_timeout", ["needs a unit"]),
    ("duration in words", put("backends.0.connect_timeout", "5 seconds"), "backends[0].connect_timeout",
     ["not a duration", "ms, s, m, h, d"]),
    # Literals.
    ("bad mode", put("frontends.0.mode", "https"), "frontends[0].mode",
     ["'tcp' or 'http'", "use one of the values listed"]),
    ("bad tls_policy", put("frontends.1.tls_policy", "strict"), "frontends[1].tls_policy",
     ["use one of the values listed"]),
    ("bad proxy_protocol", put("backends.1.proxy_protocol", "v3"), "backends[1].proxy_protocol",
     ["use one of the values listed"]),
    ("bad balance", put("backends.0.balance", "fastest"), "backends[0].balance",
     ["use one of the values listed"]),
    ("bad default literal", put("defaults.mode", "udp"), "defaults.mode", ["use one of the values listed"]),
    ("bad log_level", put("global.log_level", "loud"), "global.log_level", ["use one of the values listed"]),
    # Empty lists.
    ("empty servers", put("backends.0.servers", []), "backends[0].servers", ["give at least one entry"]),
    ("empty bind", put("frontends.1.bind", []), "frontends[1].bind", ["give at least one entry"]),
    # Addresses.
    ("listen without port", put("frontends.0.bind", "localhost"), "frontends[0].bind[0]", ["has no port"]),
    ("listen port out of range", put("frontends.1.bind", ["127.0.0.1:9444", "0.0.0.0:70000"]),
     "frontends[1].bind[1]", ["port must be a number from 1 to 65535"]),
    ("listen not a string", put("frontends.0.bind", [443]), "frontends[0].bind[0]", ["not an address"]),
    ("server unbracketed IPv6", put("backends.1.servers", ["127.0.0.1:80", "::1:80"]),
     "backends[1].servers[1].address", ["in brackets"]),
    ("server address wildcard", put("backends.0.servers", ["*:80", "127.0.0.1:81"]),
     "backends[0].servers[0].address", ["has no host"]),
    ("relative unix path", put("backends.0.servers", ["unix:run/app.sock", "127.0.0.1:81"]),
     "backends[0].servers[0].address", ["must be absolute"]),
    # Cross-section checks.
    ("unknown backend, close match", put("frontends.1.backend", "statc"), "frontends[1].backend",
     ['no backend is called "statc"', 'did you mean "static"?']),
    ("unknown backend, no match", put("frontends.1.backend", "zzzz"), "frontends[1].backend",
     ['no backend is called "zzzz"', "name one of: api, static"]),
    ("duplicate frontend", put("frontends.1.name", "web"), "frontends[1].name",
     ['frontend "web" is defined twice']),
    ("duplicate backend", put("backends.1.name", "api"), "backends[1].name",
     ['backend "api" is defined twice']),
    ("duplicate server address", put("backends.0.servers", ["127.0.0.1:80", "127.0.0.1:080"]),
     "backends[0].servers[1]", ['server "127.0.0.1:80" appears twice']),
    ("duplicate server name", put("backends.0.servers", [{"address": "10.0.0.1:80", "name": "a"},
                                                        {"address": "10.0.0.2:80", "name": "a"}]),
     "backends[0].servers[1]", ['server "a" appears twice']),
    ("same bind twice", put("frontends.1.bind", "127.0.0.1:8443"), "frontends[1].bind[0]",
     ["127.0.0.1:8443 is already bound by frontends[0].bind[0]"]),
    ("same wildcard bind twice", lambda raw: (put("frontends.0.bind", "0.0.0.0:443")(raw),
                                              put("frontends.1.bind", "*:443")(raw)),
     "frontends[1].bind[0]", ["already bound"]),
    # Client certificates.
    ("client_auth without a CA", put("frontends.0.client_auth", "required"),
     "frontends[0].client_ca", ["needs the CA", "set client_ca"]),
    ("client CA without client_auth", put("frontends.0.client_ca", "ca.pem"),
     "frontends[0].client_ca", ["not asked for", 'client_auth = "required"']),
    ("client_auth misspelled", put("frontends.0.client_auth", "yes"),
     "frontends[0].client_auth", ["none", "optional", "required"]),
    ("CRL fetching without client_auth", put("frontends.0.client_crl_fetch", True),
     "frontends[0].client_crl_fetch", ["not asked for", 'client_auth = "required"']),
    ("CRL failure policy without fetching", put("frontends.0.client_crl_failure", "soft-fail"),
     "frontends[0].client_crl_failure", ["only matters when CRLs are fetched",
                                         "client_crl_fetch = true"]),
    ("CRL failure policy misspelled", put("frontends.0.client_crl_failure", "soft"),
     "frontends[0].client_crl_failure", ["hard-fail", "soft-fail"]),
    ("CRL fetch timeout without unit", put("frontends.0.client_crl_timeout", 5),
     "frontends[0].client_crl_timeout", ["needs a unit"]),
    # Certificates and ACME.
    ("no certificates and no acme", put("frontends.0.certificates", []),
     "frontends[0].certificates", ["has no certificates", "[acme]"]),
    ("acme terms not agreed", put("acme", {"certificates": [{"names": ["a.example.com"]}]}),
     "acme.agree_to_terms", ["terms of service", "agree_to_terms = true"]),
    ("acme wildcard name", put("acme", {"agree_to_terms": True,
                                        "certificates": [{"names": ["*.example.com"]}]}),
     "acme.certificates[0].names[0]", ["should match pattern"]),
    ("acme unknown frontend", put("acme", {"agree_to_terms": True, "frontends": ["wbe"],
                                           "certificates": [{"names": ["a.example.com"]}]}),
     "acme.frontends[0]", ['no frontend is called "wbe"', "web"]),
    ("acme http-01 without a plain listener",
     put("acme", {"agree_to_terms": True, "challenges": ["http-01"],
                  "certificates": [{"names": ["a.example.com"]}]}),
     "acme.challenges", ["http-01 needs a plain-HTTP listener", "redirect_http"]),
    ("acme name twice", put("acme", {"agree_to_terms": True, "certificates": [
        {"names": ["a.example.com"]}, {"names": ["b.example.com", "a.example.com"]}]}),
     "acme.certificates[1].names[1]", ["already in acme.certificates[0].names[0]"]),
    ("acme misspelled key", put("acme", {"agree_to_terms": True, "certificates": [
        {"nmes": ["a.example.com"]}]}), "acme.certificates[0].nmes", ['did you mean "names"?']),
    # Inspection rules.
    ("rules on a tcp frontend", put("frontends.0.inspect", {"builtin": ["sqli"]}),
     "frontends[0].inspect", ["read HTTP requests", 'mode "tcp"', 'set mode = "http"']),
    ("bad rule regex", put("frontends.0.inspect", {"rules": [
        {"name": "admin-only", "action": "deny", "path": "^/admin(("}]}),
     "frontends[0].inspect.rules[0].path", ['rule "admin-only"', "not a valid regular expression"]),
    ("misspelled inspect key", put("frontends.0.inspect", {"dry_rn": True}),
     "frontends[0].inspect.dry_rn", ['did you mean "dry_run"?']),
    ("misspelled rule key", put("frontends.0.inspect", {"rules": [
        {"name": "r", "action": "deny", "paht": "^/x"}]}),
     "frontends[0].inspect.rules[0].paht", ['did you mean "path"?']),
    # Flood limits and slow clients.
    ("limits misspelled key", put("frontends.0.limits", {"request_rate_per_addr": "5/s"}),
     "frontends[0].limits.request_rate_per_addr", ['did you mean "request_rate_per_ip"?']),
    ("rate without a unit", put("frontends.0.limits", {"request_rate": "20"}),
     "frontends[0].limits.request_rate", ["not a rate", '"20/s burst 40"']),
    ("rate of zero", put("frontends.0.limits", {"handshake_rate_per_ip": "0/s"}),
     "frontends[0].limits.handshake_rate_per_ip", ["above zero", '"off"']),
    ("rate per day", put("frontends.0.limits", {"connection_rate": "100/d"}),
     "frontends[0].limits.connection_rate", ["per second, minute or hour"]),
    ("rate as a number", put("frontends.0.limits", {"connection_rate": 100}),
     "frontends[0].limits.connection_rate", ["not a rate"]),
    ("burst of zero", put("frontends.0.limits", {"request_rate": "5/s burst 0"}),
     "frontends[0].limits.request_rate", ["burst must be at least 1"]),
    ("connections of zero", put("frontends.0.limits", {"max_connections_per_ip": 0}),
     "frontends[0].limits.max_connections_per_ip", ["greater than or equal to 1"]),
    ("connections quoted", put("frontends.0.limits", {"max_connections": "10"}),
     "frontends[0].limits.max_connections", ["write a whole number"]),
    ("prefix out of range", put("frontends.0.limits", {"ipv6_prefix": 129}),
     "frontends[0].limits.ipv6_prefix", ["less than or equal to 128"]),
    ("bad default limit", put("defaults.limits", {"request_rate": "fast"}),
     "defaults.limits.request_rate", ["not a rate"]),
    ("min_body_rate without per second", put("frontends.0.min_body_rate", "500B"),
     "frontends[0].min_body_rate", ["not a byte rate", '"500B/s"']),
    ("send_timeout without a unit", put("frontends.0.send_timeout", 30),
     "frontends[0].send_timeout", ["needs a unit"]),
]


def test_inspect_defaults_to_no_rules_and_takes_rules_in_http_mode() -> None:
    raw = minimal()
    raw["frontends"][0]["mode"] = "http"
    raw["frontends"][0]["inspect"] = {"builtin": ["xss"], "dry_run": True, "rules": [
        {"name": "r", "action": "tag", "path": "^/api"}]}
    config = validate(raw, "test.toml")
    assert config.frontends[0].inspect.dry_run
    assert config.frontends[0].inspect.rules[0].name == "r"
    assert config.frontends[1].inspect.rules == () and config.frontends[1].inspect.builtin == ()


def test_acme_lets_a_frontend_go_without_certificates() -> None:
    raw = minimal()
    raw["frontends"][0]["certificates"] = []
    raw["acme"] = {"agree_to_terms": True, "frontends": ["web"],
                   "certificates": [{"names": ["a.example.com", "www.a.example.com"]}]}
    config = validate(raw, "test.toml")
    assert config.acme is not None
    assert config.acme.directory == "https://acme-v02.api.letsencrypt.org/directory"
    assert config.acme.challenges == ("tls-alpn-01", "http-01")
    assert config.acme.serves("web") and not config.acme.serves("admin")


@pytest.mark.parametrize(("edit", "where", "texts"), [pytest.param(*case[1:], id=case[0]) for case in BAD])
def test_bad_config_names_the_key_and_the_problem(edit: Edit, where: str, texts: list[str]) -> None:
    raw = minimal()
    edit(raw)
    issues = issues_of(raw)
    matching = [issue for issue in issues if issue.where == where]
    assert matching, f"no issue at {where!r}; got {[issue.where for issue in issues]}"
    rendered = "\n".join(issue.render() for issue in matching)
    for text in texts:
        assert text in rendered


def test_bad_default_is_reported_once_at_defaults() -> None:
    raw = minimal()
    raw["defaults"] = {"idle_timeout": 30, "connect_timeout": "soon"}
    issues = issues_of(raw)
    assert sorted(issue.where for issue in issues) == ["defaults.connect_timeout", "defaults.idle_timeout"]


def test_every_problem_in_one_config_is_reported() -> None:
    raw = minimal()
    raw["global"] = {"worker": 2}
    raw["defaults"] = {"handshake_timeout": 5}
    raw["frontends"][0]["mode"] = "udp"
    raw["backends"][1]["servers"] = ["127.0.0.1:8081", "localhost"]
    issues = issues_of(raw)
    assert [issue.where for issue in issues] == [
        "defaults.handshake_timeout",
        "global.worker",
        "frontends[0].mode",
        "backends[1].servers[1].address",
    ]


def test_every_cross_section_problem_is_reported() -> None:
    raw = minimal()
    raw["frontends"][1]["name"] = "web"
    raw["frontends"][1]["bind"] = "127.0.0.1:8443"
    raw["frontends"][0]["backend"] = "apis"
    raw["backends"][1]["servers"] = ["127.0.0.1:8081", "127.0.0.1:8081"]
    with pytest.raises(ConfigError) as caught:
        validate(raw, "test.toml")
    assert sorted(issue.where for issue in caught.value.issues) == [
        "backends[1].servers[1]", "frontends[0].backend", "frontends[1].bind[0]", "frontends[1].name"]
    assert caught.value.render().startswith("test.toml: 4 errors\n")


# --- known bugs ---------------------------------------------------------------------------------


def test_one_mistake_gives_one_issue() -> None:
    raw = minimal()
    del raw["frontends"][1]
    raw["backends"] = [raw["backends"][0]]
    raw["frontends"][0]["mode"] = "udp"
    assert [issue.where for issue in issues_of(raw)] == ["frontends[0].mode"]


@pytest.mark.parametrize("defaults", [{"idle_timeout": "0s"}, {"connect_timeout": "0ms"}, {"alpn": [""]}])
def test_default_invalid_for_its_sections_is_reported_at_defaults(defaults: Raw) -> None:
    raw = minimal()
    raw["defaults"] = defaults
    key = next(iter(defaults))
    wheres = [issue.where for issue in issues_of(raw)]
    assert len(wheres) == 1
    assert wheres[0].startswith(f"defaults.{key}")


@pytest.mark.parametrize("value", [5, "none", ["mode"]])
def test_defaults_that_is_not_a_table_is_reported(value: object) -> None:
    raw = minimal()
    raw["defaults"] = value
    issues = issues_of(raw)
    assert [issue.where for issue in issues] == ["defaults"]


def test_unknown_top_level_key_starting_with_defaults_is_reported() -> None:
    raw = minimal()
    raw["defaultss"] = {"mode": "http"}
    issues = issues_of(raw)
    assert [(issue.where, issue.fix) for issue in issues] == [("defaultss", 'did you mean "defaults"?')]


# --- load_file ----------------------------------------------------------------------------------

VALID_TOML = """\
[global]
workers = 3

[defaults]
idle_timeout = "1m"

[[frontends]]
name = "web"
bind = "*:8443"
backend = "app"
certificates = ["site.pem", { cert = "chain.pem", key = "chain.key" }]

[[backends]]
name = "app"
servers = ["127.0.0.1:8080", { address = "unix:/run/app.sock", name = "local" }]
"""


@pytest.mark.parametrize("as_string", [False, True])
def test_load_file_reads_a_valid_file(tmp_path: Path, as_string: bool) -> None:
    path = tmp_path / "offload.toml"
    path.write_text(VALID_TOML, encoding="utf-8")
    config = load_file(str(path) if as_string else path)
    assert isinstance(config, Config)
    assert config.global_.workers == 3
    assert config.frontends[0].idle_timeout == 60.0
    assert config.frontends[0].bind == (HostPort("0.0.0.0", 8443),)
    assert config.frontends[0].certificates[1] == CertificateRef(cert="chain.pem", key="chain.key")
    assert config.backends[0].servers[1].address == UnixAddress("/run/app.sock")
    assert config.backends[0].servers[1].label == "local"


def test_load_file_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_file(path)
    assert caught.value.source == str(path)
    [issue] = caught.value.issues
    assert issue.what == "cannot read the file: No such file or directory"
    assert issue.fix == "check the path and its permissions"


def test_load_file_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file: Is a directory"):
        load_file(tmp_path)


def test_load_file_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('[global]\nworkers = \n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_file(path)
    [issue] = caught.value.issues
    assert issue.what.startswith("not valid TOML: ")
    assert "line 2" in issue.what
    assert issue.fix == "fix the syntax at the position shown"


def test_load_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[global]\nuser = "jos\u00e9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_file(path)
    [issue] = caught.value.issues
    assert issue.what == "the file is not UTF-8 text"
    assert issue.fix == "save the configuration as UTF-8"


def test_load_file_reports_validation_errors_with_the_path_as_source(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text(VALID_TOML.replace('bind = "*:8443"', 'bnd = "*:8443"'), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_file(path)
    assert caught.value.source == str(path)
    wheres = {issue.where for issue in caught.value.issues}
    assert {"frontends[0].bnd", "frontends[0].bind"} <= wheres


# --- ConfigError.render -------------------------------------------------------------------------


def test_render_shows_source_count_and_fixes() -> None:
    error = ConfigError("site.toml", [
        Issue("frontends[0].bnd", "unknown key", 'did you mean "bind"?'),
        Issue("global.workers", "Input should be greater than or equal to 1"),
    ])
    assert error.render() == (
        "site.toml: 2 errors\n"
        "  frontends[0].bnd: unknown key\n"
        '      fix: did you mean "bind"?\n'
        "  global.workers: Input should be greater than or equal to 1"
    )
    assert str(error) == error.render()


def test_render_singular_and_issue_without_a_path() -> None:
    error = ConfigError("x.toml", [Issue("", "the file is not UTF-8 text", "save it as UTF-8")])
    lines = error.render().splitlines()
    assert lines == ["x.toml: 1 error", "  the file is not UTF-8 text", "      fix: save it as UTF-8"]


def test_render_of_a_real_validation_error() -> None:
    raw = minimal()
    raw["global"] = {"worker": 2}
    raw["frontends"][1]["backend"] = "statik"
    raw["frontends"][1]["name"] = "web"
    with pytest.raises(ConfigError) as caught:
        validate(raw, "real.toml")
    text = caught.value.render()
    assert text.splitlines()[0] == "real.toml: 1 error"
    assert "  global.worker: unknown key\n" in text
    assert text.count("fix: ") == 1
    assert 'fix: did you mean "workers"?' in text
