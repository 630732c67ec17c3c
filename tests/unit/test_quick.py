"""Quick mode: a configuration built from command-line flags, with errors named by flag
(offload.config.quick)."""

from __future__ import annotations

import dataclasses

import pytest

from offload.config.model import CertificateRef, UnixAddress
from offload.config.quick import (
    QUICK_NAME,
    QuickOptions,
    flag_for,
    quick_config,
    quick_fix,
    quick_issue,
    raw_config,
)
from offload.config.units import HostPort
from offload.errors import ConfigError, Issue


def options(**changes: object) -> QuickOptions:
    base = QuickOptions(listen="127.0.0.1:8443", certs=("site.pem",), backends=("127.0.0.1:8080",))
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def issues_of(opts: QuickOptions) -> list[Issue]:
    with pytest.raises(ConfigError) as caught:
        quick_config(opts)
    assert caught.value.source == "command line"
    return caught.value.issues


# --- raw_config ---------------------------------------------------------------------------------


def test_raw_config_minimal() -> None:
    assert raw_config(options()) == {
        "global": {},
        "frontends": [{"name": QUICK_NAME, "bind": ["127.0.0.1:8443"], "backend": QUICK_NAME,
                       "certificates": [{"cert": "site.pem"}], "mode": "http"}],
        "backends": [{"name": QUICK_NAME, "servers": ["127.0.0.1:8080"]}],
    }


def test_raw_config_pairs_keys_with_certs_by_position() -> None:
    raw = raw_config(options(certs=("a.crt", "b.crt", "bundle.pem"), keys=("a.key", "b.key")))
    assert raw["frontends"][0]["certificates"] == [
        {"cert": "a.crt", "key": "a.key"},
        {"cert": "b.crt", "key": "b.key"},
        {"cert": "bundle.pem"},
    ]


def test_raw_config_every_option() -> None:
    raw = raw_config(options(
        backends=("10.0.0.1:80", "10.0.0.2:80"), mode="http", workers=4, proxy_protocol="v2",
        tls_policy="modern", upstream_timeout="90s", log_level="debug",
        extra_global={"log_format": "text"},
    ))
    assert raw["global"] == {"workers": 4, "log_level": "debug", "log_format": "text"}
    assert raw["frontends"][0]["tls_policy"] == "modern"
    assert raw["frontends"][0]["mode"] == "http"
    assert raw["backends"][0] == {"name": QUICK_NAME, "servers": ["10.0.0.1:80", "10.0.0.2:80"],
                                  "proxy_protocol": "v2", "server_timeout": "90s"}


def test_raw_config_does_not_share_extra_global() -> None:
    extra = {"log_format": "text"}
    raw_config(options(extra_global=extra, workers=2))
    assert extra == {"log_format": "text"}


# --- quick_config -------------------------------------------------------------------------------


def test_quick_config_builds_a_valid_config() -> None:
    config = quick_config(options(
        listen="*:443", certs=("a.crt", "bundle.pem"), keys=("a.key",),
        backends=("10.0.0.1:80", "[::1]:81", "unix:/run/app.sock"),
        proxy_protocol="v1", tls_policy="modern", upstream_timeout="2m", workers=3,
        log_level="warning", extra_global={"log_format": "text"},
    ))
    [frontend] = config.frontends
    [backend] = config.backends
    assert frontend.name == backend.name == frontend.backend == QUICK_NAME
    assert config.backend(QUICK_NAME) is backend
    assert frontend.bind == (HostPort("0.0.0.0", 443),)
    assert frontend.certificates == (CertificateRef(cert="a.crt", key="a.key"),
                                     CertificateRef(cert="bundle.pem"))
    assert frontend.tls_policy == "modern"
    assert frontend.mode == "http"
    assert [server.address for server in backend.servers] == [
        HostPort("10.0.0.1", 80), HostPort("::1", 81), UnixAddress("/run/app.sock")]
    assert backend.proxy_protocol == "v1"
    assert backend.server_timeout == 120.0
    assert config.global_.workers == 3
    assert config.global_.log_level == "warning"
    assert config.global_.log_format == "text"


def test_quick_config_built_in_defaults() -> None:
    config = quick_config(options())
    assert config.frontends[0].tls_policy == "intermediate"
    assert config.frontends[0].certificates == (CertificateRef(cert="site.pem"),)
    assert config.backends[0].proxy_protocol == "none"
    assert config.backends[0].server_timeout == 60.0
    assert config.global_.workers >= 1
    assert config.global_.log_level == "info"


# --- errors name the flag -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "flag", "text"),
    [
        pytest.param({"listen": "localhost"}, "--listen", "has no port", id="listen-no-port"),
        pytest.param({"listen": "[::1]:99999"}, "--listen", "port must be a number", id="listen-port"),
        pytest.param({"backends": ("nowhere",)}, "--backend", "has no port", id="backend-no-port"),
        pytest.param({"backends": ("127.0.0.1:80", "::1:80")}, "--backend", "needs brackets",
                     id="second-backend"),
        pytest.param({"backends": ("unix:app.sock",)}, "--backend", "must be absolute", id="backend-unix"),
        pytest.param({"backends": ()}, "--backend", "give at least one entry", id="no-backend"),
        pytest.param({"certs": ()}, "--cert", "has no certificates", id="no-cert"),
        pytest.param({"certs": ("a.pem", "")}, "--cert", "it is empty", id="empty-cert"),
        pytest.param({"upstream_timeout": "60"}, "--upstream-timeout", "unit", id="timeout-bare"),
        pytest.param({"upstream_timeout": "0s"}, "--upstream-timeout", "it must be more than 0s",
                     id="timeout-zero"),
        pytest.param({"tls_policy": "strict"}, "--tls-policy", 'use one of: "modern"',
                     id="tls-policy"),
        pytest.param({"proxy_protocol": "v9"}, "--proxy-protocol", 'use one of: "none", "v1"',
                     id="proxy-protocol"),
        pytest.param({"mode": "udp"}, "--mode", 'use one of: "tcp", "http"', id="mode"),
        pytest.param({"workers": 0}, "--workers", "from 1 to 1024", id="workers"),
        pytest.param({"listen": "8443"}, "--listen", 'write ":8443" to listen on every address',
                     id="listen-port-only"),
        pytest.param({"mode": "tcp", "access_log": "off"}, "--access-log",
                     "give --mode http, or leave out --access-log", id="access-log-in-tcp"),
        pytest.param({"certs": ("a.crt",), "keys": ("a.key", "b.key")}, "--key",
                     "more --key than --cert", id="too-many-keys"),
    ],
)
def test_errors_name_the_flag(changes: dict[str, object], flag: str, text: str) -> None:
    issues = issues_of(options(**changes))
    matching = [issue for issue in issues if issue.where == flag]
    assert matching, f"no issue for {flag}; got {[issue.where for issue in issues]}"
    assert any(text in issue.render() for issue in matching)
    assert not any(issue.where.startswith(("frontends[", "backends[", "global.")) for issue in issues)


def test_too_many_keys_is_the_only_issue_and_has_a_fix() -> None:
    [issue] = issues_of(options(keys=("a.key", "b.key")))
    assert issue == Issue("--key", "more --key than --cert flags",
                          (
        "--key flags pair with --cert flags in order: the first --key belongs to the first --cert; "
        "give bundles (chain and key in one file) for the others"))


def test_several_bad_flags_are_all_reported() -> None:
    issues = issues_of(options(backends=("127.0.0.1:80", "nowhere"), upstream_timeout="soon",
                               tls_policy="strict", workers=0))
    assert sorted(issue.where for issue in issues if issue.where.startswith("--")) == [
        "--backend", "--tls-policy", "--upstream-timeout", "--workers"]


@pytest.mark.parametrize(
    ("path", "flag"),
    [
        ("frontends[0].bind", "--listen"),
        ("frontends[0].bind[0]", "--listen"),
        ("frontends[0].certificates", "--cert"),
        ("frontends[0].certificates[2]", "--cert"),
        ("frontends[0].certificates[2].cert", "--cert"),
        ("frontends[0].certificates[1].key", "--key"),
        ("frontends[0].mode", "--mode"),
        ("frontends[0].tls_policy", "--tls-policy"),
        ("backends[0].servers", "--backend"),
        ("backends[0].servers[3]", "--backend"),
        ("backends[0].servers[3].address", "--backend"),
        ("backends[0].proxy_protocol", "--proxy-protocol"),
        ("backends[0].server_timeout", "--upstream-timeout"),
        ("global.workers", "--workers"),
        # Paths no flag sets are left as they are.
        ("global.log_format", "global.log_format"),
        ("backends[0].connect_timeout", "backends[0].connect_timeout"),
        ("frontends[0].bindings", "frontends[0].bindings"),
    ],
)
def test_flag_for(path: str, flag: str) -> None:
    assert flag_for(path) == flag


# --- known bugs ---------------------------------------------------------------------------------


def test_duplicate_backend_flag_is_reported_as_the_flag() -> None:
    issues = issues_of(options(backends=("127.0.0.1:80", "127.0.0.1:80")))
    assert [issue.where for issue in issues] == ["--backend"]


@pytest.mark.parametrize("changes", [{"listen": "localhost"}, {"backends": ("nowhere",)}])
def test_one_bad_flag_gives_one_issue(changes: dict[str, object]) -> None:
    issues = issues_of(options(**changes))
    assert len(issues) == 1
    assert issues[0].where.startswith("--")


def test_bad_log_level_names_the_flag() -> None:
    issues = issues_of(options(log_level="loud"))
    assert [issue.where for issue in issues] == ["--log-level"]


# --- fixes quick mode can apply -----------------------------------------------------------------


def test_allow_readable_keys_flag_sets_the_global_key() -> None:
    assert raw_config(options(allow_readable_keys=True))["global"] == {"allow_readable_keys": True}
    assert quick_config(options(allow_readable_keys=True)).global_.allow_readable_keys
    assert "allow_readable_keys" not in raw_config(options())["global"]


def test_a_readable_key_is_fixed_with_the_flag_not_the_key() -> None:
    """The key check's advice names global.allow_readable_keys, which has no place on the
    command line: quick mode offers its flag instead."""
    issue = quick_issue(Issue("frontends[0].certificates[0]", "the private key file is readable "
                              "by others (mode 644)", "run `chmod 600 site.pem`, or set "
                              "global.allow_readable_keys = true if this is on purpose"))
    assert issue.where == "--cert"
    assert issue.fix == "run `chmod 600 site.pem`, or add --allow-readable-keys if this is on purpose"


def test_a_non_loopback_admin_address_is_fixed_with_the_flag() -> None:
    [issue] = issues_of(options(admin="0.0.0.0:8404"))
    assert issue.where == "--admin"
    assert "give --admin a 127.0.0.1 address" in issue.fix
    assert "set admin.token_file" not in issue.fix


@pytest.mark.parametrize("fix", [
    "set client_crl_fetch = true, or remove this key",
    "add \"http/1.1\" to alpn, or set defaults.alpn",
    "set global.user to an account",
])
def test_advice_no_flag_can_follow_says_it_needs_a_file(fix: str) -> None:
    assert quick_fix(fix).endswith("(that is a setting of a configuration file: run with -c FILE)")


def test_advice_a_flag_can_follow_is_left_as_it_is() -> None:
    fix = "write a number with a unit: ms, s, m, h, d (\"10s\", \"500ms\", \"1m30s\")"
    assert quick_fix(fix) == fix
