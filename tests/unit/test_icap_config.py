"""The ``icap`` table of a frontend (offload.security.icap_config): defaults, and every bad
value refused in offload's words with the key and a fix."""

from __future__ import annotations

from typing import Any

import pytest

from offload.config.loader import validate
from offload.errors import ConfigError, Issue


def config_with(icap: object) -> dict[str, Any]:
    return {
        "frontends": [{"name": "web", "bind": "127.0.0.1:8443", "backend": "api",
                       "certificates": ["site.pem"], "icap": icap}],
        "backends": [{"name": "api", "servers": ["127.0.0.1:8080"]}],
    }


def issues_of(icap: object) -> list[Issue]:
    with pytest.raises(ConfigError) as caught:
        validate(config_with(icap), "test.toml")
    return caught.value.issues


def test_defaults() -> None:
    icap = validate(config_with({"url": "icap://av.internal/avscan"}), "t.toml").frontends[0].icap
    assert icap is not None
    assert (icap.scan, icap.max_size, icap.timeout, icap.on_error, icap.oversize) == (
        ("request-body",), 10 * 1024 * 1024, 10.0, "deny", "pass")
    assert icap.uploads and not icap.downloads
    assert (icap.service.host, icap.service.port, icap.service.path) == (
        "av.internal", 1344, "/avscan")


def test_everything_set() -> None:
    icap = validate(config_with({
        "url": "icap://127.0.0.1:13440/srv_clamav?mode=simple",
        "scan": ["request-body", "response-body"], "max_size": "1MiB", "timeout": "2500ms",
        "on_error": "allow", "oversize": "deny", "max_connections": 4}),
        "t.toml").frontends[0].icap
    assert icap is not None and icap.downloads and icap.timeout == 2.5
    assert icap.max_size == 1024 * 1024 and icap.max_connections == 4


def test_a_single_target_stands_for_a_list() -> None:
    icap = validate(config_with({"url": "icap://av/avscan", "scan": "response-body"}),
                    "t.toml").frontends[0].icap
    assert icap is not None and icap.scan == ("response-body",)


@pytest.mark.parametrize(("icap", "where", "words"), [
    ({}, "frontends[0].icap.url", "missing"),
    ({"url": "http://av/avscan"}, "frontends[0].icap.url", "is not an icap:// URL"),
    ({"url": "icap://av/a b"}, "frontends[0].icap.url", "spaces"),
    ({"url": 1344}, "frontends[0].icap.url", "is not an ICAP URL"),
    ({"url": "icap://av/x", "scan": ["uploads"]}, "frontends[0].icap.scan[0]", "request-body"),
    ({"url": "icap://av/x", "scan": []}, "frontends[0].icap.scan", ""),
    ({"url": "icap://av/x", "scan": ["request-body", "request-body"]}, "frontends[0].icap",
     "names a target twice"),
    ({"url": "icap://av/x", "max_size": "1TiB"}, "frontends[0].icap.max_size", "not a size"),
    ({"url": "icap://av/x", "max_size": "512MiB"}, "frontends[0].icap.max_size", "out of range"),
    ({"url": "icap://av/x", "max_size": 0}, "frontends[0].icap.max_size", "out of range"),
    ({"url": "icap://av/x", "timeout": 5}, "frontends[0].icap.timeout", "needs a unit"),
    ({"url": "icap://av/x", "timeout": "1h"}, "frontends[0].icap.timeout", "out of range"),
    ({"url": "icap://av/x", "on_error": "ignore"}, "frontends[0].icap.on_error", "allow"),
    ({"url": "icap://av/x", "oversize": "allow"}, "frontends[0].icap.oversize", "pass"),
    ({"url": "icap://av/x", "max_conections": 3}, "frontends[0].icap.max_conections",
     "max_connections"),
])
def test_bad_values_name_the_key_and_a_fix(icap: object, where: str, words: str) -> None:
    [issue] = issues_of(icap)
    assert issue.where == where
    assert words in issue.what + issue.fix
    assert issue.fix
