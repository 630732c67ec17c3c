"""``limits.scope = "fleet"`` and ``on_store_failure``: what the configuration accepts, what it
refuses and in which words, and which rates the fleet counts."""

from __future__ import annotations

from typing import Any

import pytest

from offload.config.loader import validate
from offload.errors import ConfigError
from offload.fleet.limit_sync import fleet_tally
from offload.security.limits import fleet_rates


def raw(limits: dict[str, Any], *, fleet: bool = True) -> dict[str, Any]:
    config: dict[str, Any] = {
        "frontends": [{"name": "web", "bind": "127.0.0.1:8443", "backend": "api",
                       "certificates": ["site.pem"], "limits": limits}],
        "backends": [{"name": "api", "servers": ["127.0.0.1:8080"]}],
    }
    if fleet:
        config["fleet"] = {"redis": "redis://127.0.0.1:6379/0", "node": "edge-1"}
    return config


def refusal(config: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        validate(config, "test.toml")
    return str(caught.value)


def test_fleet_scope_counts_the_configured_rates_whole() -> None:
    config = validate(raw({"scope": "fleet", "request_rate_per_ip": "20/s burst 5",
                           "request_rate": "1000/s", "max_connections_per_ip": 10,
                           "on_store_failure": "deny"}), "test.toml")
    limits = config.frontends[0].limits
    assert sorted(fleet_rates(limits)) == [("global_request_rate", 1000.0, 1000.0),
                                           ("per_ip_request_rate", 20.0, 5.0)]
    tally = fleet_tally(config)
    assert tally is not None
    assert tally.covers("web", "per_ip_request_rate")
    assert not tally.covers("web", "per_ip_connections")  # concurrency stays per instance
    assert tally.denies_when_failing("web")


def test_instance_scope_is_the_default_and_needs_no_fleet() -> None:
    config = validate(raw({"request_rate_per_ip": "20/s"}, fleet=False), "test.toml")
    assert config.frontends[0].limits.scope == "instance"
    assert fleet_rates(config.frontends[0].limits) == []
    assert fleet_tally(config) is None


def test_fleet_scope_without_a_fleet_is_refused_with_a_fix() -> None:
    message = refusal(raw({"scope": "fleet", "request_rate_per_ip": "20/s"}, fleet=False))
    assert "frontends[0].limits.scope" in message
    assert "there is no [fleet] section" in message
    assert "fix:" in message


def test_on_store_failure_without_fleet_scope_is_refused() -> None:
    message = refusal(raw({"on_store_failure": "deny", "request_rate_per_ip": "20/s"}))
    assert "frontends[0].limits.on_store_failure" in message
    assert 'set scope = "fleet"' in message


@pytest.mark.parametrize(("key", "value", "words"), [
    ("scope", "global", '"global" is not one of the accepted values'),
    ("on_store_failure", "ignore", '"ignore" is not one of the accepted values'),
])
def test_bad_values_name_the_accepted_ones(key: str, value: str, words: str) -> None:
    message = refusal(raw({key: value, "scope": "fleet", "request_rate_per_ip": "20/s"}
                          | {key: value}))
    assert f"frontends[0].limits.{key}" in message
    assert words in message
