"""Whoever shares the network with the fleet and its Redis: the operator is told at start
(and by ``offload check``) when the ticket keys would cross it in plain text or sit in a
Redis without a password."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from offload.config.loader import validate
from offload.server.prepare import prepare


def warnings_for(tmp_path: Path, **fleet: Any) -> list[str]:
    raw: dict[str, Any] = {
        "frontends": [{"name": "web", "bind": "127.0.0.1:8443", "backend": "api"}],
        "backends": [{"name": "api", "servers": ["127.0.0.1:8080"]}],
        "acme": {"agree_to_terms": True, "certificates": [{"names": ["site.test"]}]},
        "fleet": {"node": "edge-1", **fleet}}
    config = validate(raw, "test.toml")
    return [w for w in prepare(config, "test.toml", base_dir=tmp_path).warnings
            if w.startswith("fleet.")]


def test_plain_text_password_less_redis_on_the_network_is_called_out(tmp_path: Path) -> None:
    found = warnings_for(tmp_path, redis="redis://10.0.0.20:6379/0")
    assert len(found) == 2
    assert "unencrypted" in found[0] and "10.0.0.20" in found[0] and "ticket" in found[0]
    assert "fix: rediss://" in found[0]
    assert "without a password" in found[1] and "fix:" in found[1]


@pytest.mark.parametrize(("fleet", "expected"), [
    ({"redis": "redis://127.0.0.1:6379/0"}, 0),  # on this machine
    ({"redis": "redis://[::1]:6379/0"}, 0),
    ({"redis": "rediss://redis.internal:6380/0", "password_file": "pw"}, 0),
    ({"redis": "rediss://redis.internal:6380/0"}, 1),  # no password
    ({"redis": "redis://:secret@10.0.0.20:6379/0"}, 1),  # plain text
    ({"redis": "redis://:pw@unused:6379/0", "master": "m",
      "sentinels": ["10.0.0.31:26379", "10.0.0.32:26379"]}, 1),
])
def test_only_what_is_exposed_is_warned_about(tmp_path: Path, fleet: dict[str, Any],
                                              expected: int) -> None:
    (tmp_path / "pw").write_text("secret\n")
    assert len(warnings_for(tmp_path, **fleet)) == expected
