"""Configuration loading: a full valid config, a table of bad configs with their key paths,
``load_file`` on real files, and how :class:`ConfigError` renders (offload.config.loader)."""

from __future__ import annotations

import copy
import tomllib
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from offload.config.base import takes_a_list
from offload.config.checks import http_only_keys
from offload.config.loader import load_file, validate
from offload.config.model import (
    CertificateRef,
    Config,
    FrontendConfig,
    FrontendLimits,
    UnixAddress,
)
from offload.config.translate import path_of
from offload.config.units import ALL_ADDRESSES, EventRate, HostPort
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
    assert (frontend.mode, frontend.tls_policy, frontend.alpn) == ("http", "intermediate", ())
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
     ['"many" is not a whole number', "write a whole number without quotes"]),
    ("workers zero", put("global.workers", 0), "global.workers",
     ["0 is out of range: it must be from 1 to 1024", "fix: write a whole number from 1 to 1024"]),
    ("workers too many", put("global.workers", 5000), "global.workers",
     ["5000 is out of range", "from 1 to 1024"]),
    ("reuseport not a bool", put("global.reuseport", [1]), "global.reuseport",
     ["write true or false"]),
    ("name not a string", put("frontends.1.name", 5), "frontends[1].name",
     ["5 is not text", "write it in quotes"]),
    ("certificate key not a string", put("frontends.0.certificates", ["a.pem", {"cert": "b.pem", "key": 5}]),
     "frontends[0].certificates[1].key", ["write it in quotes"]),
    ("alpn entry not text", put("frontends.0.alpn", 5), "frontends[0].alpn[0]", ["5 is not text"]),
    ("limits not a table", put("frontends.0.limits", "strict"), "frontends[0].limits",
     ['"strict" is not a table', "{ key = "]),
    # Durations.
    ("bare-number duration", put("frontends.0.idle_timeout", 30), "frontends[0].idle_timeout",
     ["needs a unit", '"10s"']),
    ("bare-number default", put("defaults.idle_timeout", 30), "defaults.idle_timeout", ["needs a unit"]),
    ("duration in words", put("backends.0.connect_timeout", "5 seconds"), "backends[0].connect_timeout",
     ["not a duration", "ms, s, m, h, d"]),
    # Literals.
    ("bad mode", put("frontends.0.mode", "https"), "frontends[0].mode",
     ['"https" is not one of the accepted values', 'use one of: "tcp", "http"']),
    ("bad tls_policy", put("frontends.1.tls_policy", "strict"), "frontends[1].tls_policy",
     ['use one of: "modern", "intermediate", "legacy"']),
    ("bad proxy_protocol", put("backends.1.proxy_protocol", "v3"), "backends[1].proxy_protocol",
     ['use one of: "none", "v1", "v2"']),
    ("bad balance", put("backends.0.balance", "fastest"), "backends[0].balance",
     ['use one of: "roundrobin"']),
    ("bad default literal", put("defaults.mode", "udp"), "defaults.mode", ['use one of: "tcp", "http"']),
    ("bad log_level", put("global.log_level", "loud"), "global.log_level", ['"debug", "info"']),
    # Empty lists.
    ("empty servers", put("backends.0.servers", []), "backends[0].servers", ["give at least one entry"]),
    ("empty bind", put("frontends.1.bind", []), "frontends[1].bind", ["give at least one entry"]),
    # Addresses.
    ("listen without port", put("frontends.0.bind", "localhost"), "frontends[0].bind[0]",
     ["has no port", '"localhost:8443"']),
    ("listen without host", put("frontends.0.bind", "8443"), "frontends[0].bind[0]",
     ['"8443" is a port without a host', 'write ":8443" to listen on every address']),
    ("redirect port alone", put("frontends.0.redirect_http", 8080), "frontends[0].redirect_http[0]",
     ["8080 is a port without a host", '":8080"']),
    ("listen port out of range", put("frontends.1.bind", ["127.0.0.1:9444", "0.0.0.0:70000"]),
     "frontends[1].bind[1]", ["port must be a number from 1 to 65535"]),
    ("listen not a string", put("frontends.0.bind", [True]), "frontends[0].bind[0]",
     ["true is not an address"]),
    ("server unbracketed IPv6", put("backends.1.servers", ["127.0.0.1:80", "::1:80"]),
     "backends[1].servers[1].address", ["needs brackets", '"[::1]:443"']),
    ("server port alone", put("backends.1.servers", [8080]), "backends[1].servers[0].address",
     ["8080 is a port without a host", '"127.0.0.1:8080"']),
    ("server address wildcard", put("backends.0.servers", ["*:80", "127.0.0.1:81"]),
     "backends[0].servers[0].address", ["has no host", "only for listening"]),
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
     "acme.certificates[0].names[0]", ['"*.example.com" is not a lower-case DNS name without a '
                                       "wildcard"]),
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
    ("rules on a tcp frontend", lambda raw: (put("frontends.0.inspect", {"builtin": ["sqli"]})(raw),
                                             put("frontends.0.mode", "tcp")(raw)),
     "frontends[0].inspect", ["inspect only applies to HTTP requests", 'mode "tcp"',
                              'set mode = "http"']),
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
     "frontends[0].limits.max_connections_per_ip", ["0 is out of range: it must be at least 1"]),
    ("connections quoted", put("frontends.0.limits", {"max_connections": "10"}),
     "frontends[0].limits.max_connections", ["write a whole number"]),
    ("prefix out of range", put("frontends.0.limits", {"ipv6_prefix": 129}),
     "frontends[0].limits.ipv6_prefix", ["129 is out of range", "from 0 to 128"]),
    ("bad default limit", put("defaults.limits", {"request_rate": "fast"}),
     "defaults.limits.request_rate", ["not a rate"]),
    ("min_body_rate without per second", put("frontends.0.min_body_rate", "500B"),
     "frontends[0].min_body_rate", ["not a byte rate", '"500B/s"']),
    ("send_timeout without a unit", put("frontends.0.send_timeout", 30),
     "frontends[0].send_timeout", ["needs a unit"]),
    # PROXY protocol from a balancer: only from the balancers.
    ("accept_proxy without sources", put("frontends.0.accept_proxy", True),
     "frontends[0].proxy_sources", ["accept_proxy is on but no proxy_sources are listed",
                                    'fix: list the addresses of the balancers in front, like '
                                    'proxy_sources = ["10.0.0.0/24"]']),
    ("proxy_sources without accept_proxy", put("frontends.0.proxy_sources", ["10.0.0.0/24"]),
     "frontends[0].proxy_sources", ["does nothing without accept_proxy = true",
                                    "fix: set accept_proxy = true"]),
    ("proxy source not a network", put("frontends.0.proxy_sources", ["balancer"]),
     "frontends[0].proxy_sources[0]", ['"balancer"']),
    ("accept_proxy quoted", put("frontends.0.accept_proxy", "yes"),
     "frontends[0].accept_proxy", ["write true or false"]),
    # TLS fingerprints: what looks at them needs them kept; their fields are offload's own.
    ("ja4 rule without fingerprints", put("frontends.0.inspect", {"rules": [
        {"name": "bots", "action": "deny", "ja4": ["t13d*"]}]}),
     "frontends[0].inspect.rules[0].ja4", ['rule "bots" looks at the client\'s TLS fingerprint',
                                           "fix: set fingerprints = true on this frontend"]),
    ("fingerprint limit without fingerprints",
     put("frontends.0.limits", {"handshake_rate_per_fingerprint": "10/s"}),
     "frontends[0].limits.handshake_rate_per_fingerprint",
     ["limits.handshake_rate_per_fingerprint looks at the client's TLS fingerprint",
      "fix: set fingerprints = true"]),
    ("not a ja4", put("frontends.0.inspect", {"rules": [
        {"name": "bots", "action": "deny", "ja4": ["t13d1516h2_8daaf6152771"]}]}),
     "frontends[0].inspect.rules[0].ja4[0]", ['"t13d1516h2_8daaf6152771" is not a JA4 fingerprint',
                                              'with * for any characters']),
    ("ja4 pattern with a regex", put("frontends.0.inspect", {"rules": [
        {"name": "bots", "action": "deny", "not_ja4": ["t13d.+"]}]}),
     "frontends[0].inspect.rules[0].not_ja4[0]", ["is not a JA4 fingerprint"]),
    ("not a ja3", put("frontends.0.inspect", {"rules": [
        {"name": "bots", "action": "deny", "ja3": ["ada70206"]}]}),
     "frontends[0].inspect.rules[0].ja3[0]", ['"ada70206" is not a JA3 fingerprint',
                                              "write its 32 hex digits"]),
    ("fingerprint header that frames requests", put("frontends.0.ja4_header", "Content-Length"),
     "frontends[0].ja4_header", ["already means something to the backend"]),
    ("fingerprint header that forwards", put("frontends.0.ja3_header", "x-forwarded-for"),
     "frontends[0].ja3_header", ["already means something to the backend"]),
    ("fingerprint header not a name", put("frontends.0.ja4_header", "X JA4"),
     "frontends[0].ja4_header", ['"X JA4" is not a header field name']),
    ("fingerprint headers alike", put("frontends.0.ja3_header", "x-ja4"),
     "frontends[0].ja3_header", ["ja4_header and ja3_header name the same field"]),
    ("fingerprint header is the tag header", put("frontends.0.inspect", {"tag_header": "X-JA4"}),
     "frontends[0].ja4_header", ["ja4_header is the inspection tag header too"]),
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


# --- defaults: HTTP mode, and keys HTTP mode alone reads ----------------------------------------

HTTP_ONLY_SAMPLES: dict[str, object] = {
    "trusted_proxies": ["10.0.0.0/8"], "forwarded": True, "hsts": "max-age=600",
    "server_header": "", "max_request_line": "4KiB", "max_header_size": "16KiB",
    "max_header_count": 50, "max_body_size": "1MiB", "request_timeout": "5s",
    "keepalive_timeout": "30s", "body_timeout": "30s", "min_body_rate": "1KiB/s",
    "access_log": "off", "access_log_format": "combined", "inspect": {"builtin": ["sqli"]},
    "limits.request_rate": "10/s", "limits.request_rate_per_ip": "5/s", "http2": False,
    "limits.request_rate_per_fingerprint": "50/s", "ja4_header": "X-TLS-JA4",
    "ja3_header": "X-TLS-JA3", "waf": {"mode": "detect"},
    "icap": {"url": "icap://127.0.0.1/avscan"},
}
SAMPLE_NEEDS: dict[str, dict[str, object]] = {
    "limits.request_rate_per_fingerprint": {"fingerprints": True},
}
"""Keys a sample needs beside it to be valid in HTTP mode (in either mode, not HTTP-only)."""


def _all_http_only_keys() -> set[str]:
    return set(http_only_keys(FrontendConfig)) | {
        f"limits.{key}" for key in http_only_keys(FrontendLimits)}


def test_every_http_only_key_has_a_sample() -> None:
    """A key marked HttpOnly later gets checked below without a line more than its sample."""
    assert set(HTTP_ONLY_SAMPLES) == _all_http_only_keys()


def test_mode_defaults_to_http_in_a_file_as_in_quick_mode() -> None:
    raw = minimal()
    raw["frontends"][0].update(hsts="max-age=600", redirect_http=":8080")
    web = validate(raw, "test.toml").frontends[0]
    assert web.mode == "http"
    assert web.hsts == "max-age=600"
    assert web.redirect_http == (HostPort(ALL_ADDRESSES, 8080),)


@pytest.mark.parametrize("key", sorted(HTTP_ONLY_SAMPLES))
def test_an_http_only_key_on_a_tcp_frontend_is_an_error_naming_it(key: str) -> None:
    raw = minimal()
    raw["frontends"][0]["mode"] = "tcp"
    raw["frontends"][0].update(SAMPLE_NEEDS.get(key, {}))
    put(f"frontends.0.{key}", HTTP_ONLY_SAMPLES[key])(raw)
    [issue] = issues_of(raw)
    assert issue.where == f"frontends[0].{key}"
    name = key.rpartition(".")[2]
    assert issue.what.startswith(f'{name} only applies to HTTP requests, and this frontend is '
                                 'in mode "tcp"')
    assert issue.fix == f'set mode = "http" on this frontend, or remove {name}'
    raw["frontends"][0]["mode"] = "http"
    validate(raw, "test.toml")


def test_request_timeout_on_a_tcp_frontend_times_its_redirect_listener() -> None:
    raw = minimal()
    raw["frontends"][0].update(mode="tcp", request_timeout="3s", redirect_http=":8080")
    assert validate(raw, "test.toml").frontends[0].request_timeout == 3.0


def test_http_only_defaults_are_left_out_of_tcp_frontends() -> None:
    raw = minimal()
    raw["defaults"] = {"hsts": "max-age=600", "request_timeout": "3s",
                       "limits": {"request_rate_per_ip": "5/s", "max_connections": 5}}
    raw["frontends"][0]["mode"] = "tcp"
    tcp, http = validate(raw, "test.toml").frontends
    assert (tcp.hsts, tcp.request_timeout, tcp.limits.request_rate_per_ip) == (None, 10.0, None)
    assert tcp.limits.max_connections == 5
    assert (http.hsts, http.request_timeout) == ("max-age=600", 3.0)
    assert http.limits.request_rate_per_ip == EventRate(5.0, 5.0)
    assert http.limits.max_connections == 5


def test_http_only_defaults_no_frontend_takes_are_reported() -> None:
    raw = minimal()
    raw["defaults"] = {"mode": "tcp", "hsts": "max-age=600", "limits": {"request_rate": "5/s"}}
    assert sorted(issue.where for issue in issues_of(raw)) == [
        "defaults.hsts", "defaults.limits.request_rate"]


# --- a single value stands for a list of one, for every list key --------------------------------


def rich() -> Raw:
    """A valid config with every section, table and list key present (lists of one entry)."""
    return {
        "global": {"workers": 2, "user": "nobody"},
        "defaults": {"mode": "http", "alpn": ["http/1.1"], "trusted_proxies": ["10.0.0.0/8"],
                     "limits": {"max_connections": 100}, "hsts": "max-age=60"},
        "frontends": [{
            "name": "web", "bind": [":8443"], "backend": "app",
            "certificates": [{"cert": "site.crt", "key": "site.key"}],
            "alpn": ["http/1.1"], "client_auth": "required", "client_ca": ["ca.pem"],
            "client_crl": ["crl.pem"], "client_crl_fetch": True, "client_crl_timeout": "2s",
            "trusted_proxies": ["10.0.0.0/8"], "redirect_http": [":8080"],
            "accept_proxy": True, "proxy_sources": ["10.0.0.0/24"], "fingerprints": True,
            "limits": {"request_rate": "5/s", "ipv4_prefix": 24},
            "http2": {"max_concurrent_streams": 50, "early_resets": "10/s burst 20"},
            "icap": {"url": "icap://127.0.0.1/avscan", "scan": ["request-body"]},
            "inspect": {"builtin": ["sqli"], "rules": [{
                "name": "r", "action": "tag", "tag": "t", "path": "^/x", "query": "a", "body": "b",
                "client": ["10.0.0.0/8"], "not_client": ["10.1.0.0/16"], "methods": ["GET"],
                "method_not_in": ["POST"], "header": {"X-A": "."},
                "ja4": ["t13d*"], "not_ja4": ["t13d1516h2_8daaf6152771_e5627efa2ab1"],
                "ja3": ["ada70206e40642a3e4461f35503241d5"],
                "not_ja3": ["ADA70206E40642A3E4461F35503241D5"]}]},
            "waf": {"mode": "block", "rules": ["waf/local.conf"], "paranoia_level": 2,
                    "exclusions": [{"rules": [942100], "path": "/search", "target": "ARGS:q"}]},
        }],
        "backends": [{"name": "app", "servers": [{"address": "127.0.0.1:8081", "weight": 2,
                                                  "ca": ["server-ca.pem"],
                                                  "client_certificate": {"cert": "s.pem"}}],
                      "health_check": {"path": "/health", "expect": "200-299", "rise": 1},
                      "ejection": {"failures": 1}, "tls": True, "ca": ["ca.pem"],
                      "client_certificate": {"cert": "client.pem"}}],
        "acme": {"agree_to_terms": True, "email": "a@example.com", "frontends": ["web"],
                 "challenges": ["tls-alpn-01"], "certificates": [{"names": ["a.example.com"]}]},
        "admin": {"bind": "127.0.0.1:9404", "hosts": ["admin.example.test"]},
        "bans": {"events": ["limit_hit"], "allow": ["10.0.0.0/8"]},
        "fleet": {"redis": "rediss://r:6379/0", "sentinels": ["10.0.0.5:26379"],
                  "master": "m", "tls_ca": "ca.pem", "tls_certificate": "c.pem",
                  "tls_key": "k.pem", "password_file": "p"},
    }


def _model_paths(model: type[BaseModel], prefix: tuple[str | int, ...] = ()
                 ) -> Iterator[tuple[tuple[str | int, ...], FieldInfo]]:
    """Every key of ``model`` and of the tables under it (the first entry of a list of tables)."""
    for name, field in model.model_fields.items():
        path = (*prefix, field.alias or name)
        yield path, field
        inner = next((arg for arg in _type_args(field.annotation)
                      if isinstance(arg, type) and issubclass(arg, BaseModel)), None)
        if inner is not None:
            yield from _model_paths(inner, (*path, 0) if takes_a_list(field.annotation) else path)


def _type_args(annotation: object) -> Iterator[object]:
    yield annotation
    for arg in typing.get_args(annotation):
        yield from _type_args(arg)


def _get(raw: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        raw = raw[part]
    return raw


def _set(raw: Any, path: tuple[str | int, ...], value: object) -> None:
    _get(raw, path[:-1])[path[-1]] = value


LIST_KEYS = [path for path, field in _model_paths(Config) if takes_a_list(field.annotation)]


def test_the_rich_sample_is_valid_and_has_every_list_key() -> None:
    validate(rich(), "test.toml")
    for path in LIST_KEYS:
        value = _get(rich(), path)
        assert isinstance(value, list) and len(value) == 1, path


@pytest.mark.parametrize("path", LIST_KEYS, ids=path_of)
def test_every_list_key_takes_a_single_value(path: tuple[str | int, ...]) -> None:
    as_list = validate(rich(), "test.toml")
    raw = rich()
    _set(raw, path, _get(raw, path)[0])
    assert validate(raw, "test.toml") == as_list


def test_single_values_from_the_issue() -> None:
    raw = minimal()
    raw["frontends"][0].update(certificates="certs/", redirect_http=":8080")
    raw["backends"][0]["servers"] = {"address": "127.0.0.1:9000", "weight": 3}
    config = validate(raw, "test.toml")
    assert config.frontends[0].certificates == (CertificateRef(cert="certs/"),)
    assert config.frontends[0].redirect_http == (HostPort(ALL_ADDRESSES, 8080),)
    assert config.backends[0].servers[0].weight == 3


# --- no message of the validation library reaches the user --------------------------------------

LIBRARY_WORDS = ("Input should be", "valid tuple", "greater than or equal", "less than or equal",
                 "Field required", "Extra inputs", "validation error", "type=", "should match",
                 "should have", "should be", "after validation", "String should", "Value error",
                 "Assertion failed", "pydantic", "For further information")
WRONG_TYPES: tuple[object, ...] = (True, 12345, 1.5, "~not~valid~", {"unexpected": 1}, [[1, 2]])


def _bounds(field: FieldInfo) -> Iterator[object]:
    """Values just outside a key's numeric and length bounds, written every way a key of that
    kind may be written (a number, a duration, a size, a string, a list)."""
    metadata = list(field.metadata)
    for arg in _type_args(field.annotation):
        if typing.get_origin(arg) is typing.Annotated:
            metadata += typing.get_args(arg)[1:]
    for item in metadata:
        outside = [getattr(item, "ge", None), getattr(item, "gt", None), getattr(item, "le", None),
                   getattr(item, "lt", None)]
        for index, bound in enumerate(outside):
            if bound is None:
                continue
            value = int(bound) - 1 if index == 0 else int(bound) + (1 if index == 2 else 0)
            value = value if index != 1 else int(bound)
            yield from (value, f"{value}s", f"{value}B", f"{value}/s")
        if getattr(item, "min_length", None):
            yield from ("", [])
        if getattr(item, "max_length", None):
            count = int(item.max_length) + 1  # type: ignore[attr-defined]
            yield from ("x" * count, ["a.example.com"] * count)


def _clean(path: tuple[str | int, ...], value: object) -> int:
    """Load the rich config with ``value`` at ``path``; if refused, check every message.
    Returns how many issues name the key (0: the value was accepted)."""
    raw = rich()
    _set(raw, path, value)
    try:
        validate(raw, "/etc/offload/offload.toml")
    except ConfigError as error:
        text = error.render()
        assert text.startswith("/etc/offload/offload.toml: "), text
        for word in LIBRARY_WORDS:
            assert word not in text, f"{path_of(path)} = {value!r}:\n{text}"
        for issue in error.issues:
            assert issue.fix, f"{path_of(path)} = {value!r}: no fix in\n{text}"
            assert f"    fix: {issue.fix}" in text
        return len([i for i in error.issues if i.where.startswith(path_of(path))])
    return 0


@pytest.mark.parametrize(("path", "field"), list(_model_paths(Config)),
                         ids=[path_of(path) for path, _ in _model_paths(Config)])
def test_every_key_explains_a_wrong_value_in_offloads_words(
        path: tuple[str | int, ...], field: FieldInfo) -> None:
    """Every key of the model, with values of the wrong type and just out of range: each
    refusal names the file and the key, has a fix, and has none of pydantic's wording."""
    refused = sum(_clean(path, value) > 0 for value in WRONG_TYPES)
    assert refused, f"{path_of(path)} accepted every wrong type"
    bounded = list(_bounds(field))
    if bounded:
        assert sum(_clean(path, value) > 0 for value in bounded), \
            f"{path_of(path)} accepted every out-of-range value"


# --- addresses, listeners that collide, loops ---------------------------------------------------


@pytest.mark.parametrize(("written", "address"), [
    (":8443", HostPort(ALL_ADDRESSES, 8443)),
    ("*:8443", HostPort("0.0.0.0", 8443)),
    ("0.0.0.0:8443", HostPort("0.0.0.0", 8443)),
    ("[::]:8443", HostPort("::", 8443)),
    ("127.0.0.1:8443", HostPort("127.0.0.1", 8443)),
    ("localhost:8443", HostPort("localhost", 8443)),
])
def test_bind_and_redirect_forms(written: str, address: HostPort) -> None:
    raw = minimal()
    raw["frontends"][0].update(bind=written, redirect_http=written.replace("8443", "8080"))
    web = validate(raw, "test.toml").frontends[0]
    assert web.bind == (address,)
    assert web.redirect_http == (HostPort(address.host, 8080),)


@pytest.mark.parametrize(("written", "address"), [
    ("9000", HostPort("127.0.0.1", 9000)),
    (9000, HostPort("127.0.0.1", 9000)),
    ("127.0.0.2", HostPort("127.0.0.2", 8404)),
    ("[::1]", HostPort("::1", 8404)),
    ("[::1]:9000", HostPort("::1", 9000)),
])
def test_admin_bind_forms(written: object, address: HostPort) -> None:
    raw = minimal()
    raw["admin"] = {"bind": written}
    config = validate(raw, "test.toml")
    assert config.admin is not None and config.admin.bind == address


def test_admin_colon_port_is_every_address_and_needs_a_token() -> None:
    raw = minimal()
    raw["admin"] = {"bind": ":9000"}
    [issue] = issues_of(raw)
    assert issue.where == "admin.bind"
    assert "reachable from other machines without a token" in issue.what


@pytest.mark.parametrize(("first", "second", "text"), [
    (":443", "127.0.0.1:443", "already bound by frontends[0].bind[0], which listens on :443"),
    (":443", "[::]:443", "(IPv4 and IPv6)"),
    ("0.0.0.0:443", "127.0.0.1:443", "which listens on 0.0.0.0:443: every address on port 443 (IPv4)"),
    ("[::]:443", "[::1]:443", "(IPv6)"),
    ("127.0.0.1:443", ":443", ":443 would take over 127.0.0.1:443, already bound by frontends[0].bind[0]"),
    ("localhost:443", "0.0.0.0:443", "would take over"),
])
def test_listeners_that_overlap_are_reported(first: str, second: str, text: str) -> None:
    raw = minimal()
    raw["frontends"][0]["bind"] = first
    raw["frontends"][1]["bind"] = second
    [issue] = issues_of(raw)
    assert issue.where == "frontends[1].bind[0]"
    assert text in issue.what
    assert issue.fix == "listen on each address from one place only"


@pytest.mark.parametrize(("first", "second"), [
    ("0.0.0.0:443", "[::]:443"), ("127.0.0.1:443", "127.0.0.2:443"), (":443", ":444"),
    ("127.0.0.1:443", "[::1]:443"),
])
def test_listeners_that_do_not_overlap(first: str, second: str) -> None:
    raw = minimal()
    raw["frontends"][0]["bind"] = first
    raw["frontends"][1]["bind"] = second
    validate(raw, "test.toml")


def test_a_redirect_listener_on_a_frontend_port_and_the_admin_on_it_are_reported() -> None:
    raw = minimal()
    raw["frontends"][0]["redirect_http"] = ["127.0.0.1:9443"]
    raw["admin"] = {"bind": "127.0.0.1:8443"}
    issues = {issue.where: issue for issue in issues_of(raw)}
    assert set(issues) == {"frontends[1].bind[0]", "admin.bind"}
    assert issues["frontends[1].bind[0]"].what == (
        "127.0.0.1:9443 is already bound by frontends[0].redirect_http[0]")
    assert issues["admin.bind"].fix == "give the admin listener an address of its own"


@pytest.mark.parametrize(("bind", "server"), [
    ("127.0.0.1:8443", "127.0.0.1:8443"),
    (":8443", "127.0.0.1:8443"),
    (":8443", "localhost:8443"),
    ("0.0.0.0:8443", "127.0.0.1:8443"),
    ("[::]:8443", "[::1]:8443"),
    ("localhost:8443", "127.0.0.1:8443"),
])
def test_a_frontend_bound_to_its_own_backend_is_a_loop(bind: str, server: str) -> None:
    raw = minimal()
    raw["frontends"][0]["bind"] = bind
    raw["backends"][0]["servers"] = [server]
    [issue] = issues_of(raw)
    assert issue.where == "frontends[0].bind[0]"
    assert "every connection would loop back into this frontend" in issue.what
    assert "backends[0].servers[0]" in issue.what
    assert issue.fix.startswith('point backend "api" at the application')


@pytest.mark.parametrize(("bind", "server"), [
    ("127.0.0.1:8443", "127.0.0.1:8080"),
    ("[::]:8443", "127.0.0.1:8443"),
    ("0.0.0.0:8443", "[::1]:8443"),
    ("127.0.0.1:8443", "127.0.0.2:8443"),
    (":8443", "app.internal:8443"),
])
def test_not_a_loop(bind: str, server: str) -> None:
    raw = minimal()
    raw["frontends"][0]["bind"] = bind
    raw["backends"][0]["servers"] = [server]
    validate(raw, "test.toml")


def test_the_readme_example_means_what_the_readme_says() -> None:
    """README: HTTP mode is the default; its example sends HSTS and redirects plain HTTP."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    raw = tomllib.loads(block)
    for frontend in raw["frontends"]:
        frontend.pop("mode", None)  # the default
    frontend = validate(raw, "README.md").frontends[0]
    assert frontend.mode == "http"
    assert frontend.hsts and frontend.redirect_http


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
