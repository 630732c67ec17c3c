"""``[fleet]``: what it takes, what it refuses (in offload's words, at the key, with a fix),
and quick mode's ``--fleet-redis``."""

from __future__ import annotations

from typing import Any

import pytest
from test_config_loader import issues_of, minimal

from offload.config.loader import validate
from offload.config.quick import QuickOptions, quick_config
from offload.errors import ConfigError


def with_fleet(**fleet: Any) -> dict[str, Any]:
    raw = minimal()
    raw["fleet"] = fleet
    return raw


def test_defaults_and_durations() -> None:
    fleet = validate(with_fleet(redis="redis://10.0.0.9:6379/2", node="edge-1",
                                connect_timeout="500ms"), "t").fleet
    assert fleet is not None
    assert (fleet.name, fleet.node, fleet.sentinels, fleet.master) == (
        "offload", "edge-1", (), None)
    assert fleet.connect_timeout == 0.5 and fleet.operation_timeout == 1.0
    assert (fleet.ticket_key_rotation, fleet.ticket_key_lifetime) == (12 * 3600, 36 * 3600)
    assert fleet.share_ticket_keys is True
    assert validate(with_fleet(redis="redis://r:6379"), "t").fleet.node  # the host name


def test_sentinel_and_tls() -> None:
    fleet = validate(with_fleet(redis="rediss://:secret@ignored:1/0",
                                sentinels=["10.0.0.5:26379", "[2001:db8::5]:26379"],
                                master="mymaster", tls_ca="ca.pem", tls_certificate="c.pem",
                                tls_key="k.pem"), "t").fleet
    assert fleet is not None and fleet.sentinels[1] == "[2001:db8::5]:26379"


@pytest.mark.parametrize(("fleet", "where", "words"), [
    ({"redis": "http://x:6379"}, "fleet.redis", "is not a Redis URL"),
    ({"redis": "redis://x", "sentinels": ["nohost"]}, "fleet.sentinels[0]",
     "is not a Sentinel address"),
    ({"redis": "redis://x", "sentinels": ["s:26379"]}, "fleet.master", "Sentinel needs"),
    ({"redis": "redis://x", "master": "m"}, "fleet.sentinels", "no sentinel is listed"),
    ({"redis": "redis://x", "tls_ca": "ca.pem"}, "fleet.tls_ca", "not rediss://"),
    ({"redis": "rediss://x", "tls_certificate": "c.pem"}, "fleet.tls_key", "needs both"),
    ({"redis": "redis://x", "name": "a b"}, "fleet.name", "is not a key prefix"),
    ({"redis": "redis://x", "ticket_key_rotation": "2h", "ticket_key_lifetime": "1h"},
     "fleet.ticket_key_lifetime", "retired before"),
    ({"redis": "redis://x", "ticket_key_lifetime": "8d"}, "fleet.ticket_key_lifetime", ""),
    ({"redis": "redis://x", "ticket_key_rotation": "500ms"}, "fleet.ticket_key_rotation", ""),
    ({"redis": "redis://x", "rediss": "typo"}, "fleet.rediss", "unknown key"),
])
def test_refusals_name_the_key_and_a_fix(fleet: dict[str, Any], where: str, words: str) -> None:
    issues = issues_of(with_fleet(**fleet))
    issue = next((i for i in issues if i.where == where), None)
    assert issue is not None, issues
    assert words in issue.what and issue.fix


def test_quick_mode_flag() -> None:
    options = QuickOptions(listen="127.0.0.1:8443", certs=("a.pem",),
                           backends=("127.0.0.1:8080",), fleet_redis="redis://127.0.0.1:6379/0")
    fleet = quick_config(options).fleet
    assert fleet is not None and fleet.redis == "redis://127.0.0.1:6379/0"
    with pytest.raises(ConfigError) as caught:
        quick_config(QuickOptions(listen="127.0.0.1:8443", certs=("a.pem",),
                                  backends=("127.0.0.1:8080",), fleet_redis="tcp://x"))
    assert caught.value.issues[0].where == "--fleet-redis"
