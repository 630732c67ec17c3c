"""``acme.shared``: the checks that span sections, and reading the secret at start."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from offload.config.loader import validate
from offload.errors import ConfigError
from offload.server.prepare import prepare

SECRET = "0123456789abcdef0123456789abcdef"


def raw(acme: dict[str, Any], *, fleet: bool = True) -> dict[str, Any]:
    config: dict[str, Any] = {
        "frontends": [{"name": "web", "bind": "127.0.0.1:8443", "backend": "api"}],
        "backends": [{"name": "api", "servers": ["127.0.0.1:8080"]}],
        "acme": {"agree_to_terms": True, "certificates": [{"names": ["site.test"]}], **acme},
    }
    if fleet:
        config["fleet"] = {"redis": "redis://127.0.0.1:6379/0", "node": "edge-1"}
    return config


def refusal(config: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        validate(config, "test.toml")
    return str(caught.value)


@pytest.mark.parametrize(("acme", "fleet", "where", "words"), [
    ({"shared": True, "shared_key_env": "K"}, False, "acme.shared", "there is no [fleet]"),
    ({"shared": True}, True, "acme.shared", "needs a secret"),
    ({"shared": True, "shared_key_env": "K", "shared_key_file": "k"}, True,
     "acme.shared_key_env", "both shared_key_file and shared_key_env"),
    ({"shared_key_file": "k"}, True, "acme.shared_key_file", "only matters with acme.shared"),
    ({"shared": True, "shared_key_env": "1BAD"}, True, "acme.shared_key_env",
     "environment variable name"),
])
def test_shared_store_settings_are_checked(acme: dict[str, Any], fleet: bool, where: str,
                                           words: str) -> None:
    message = refusal(raw(acme, fleet=fleet))
    assert where in message and words in message and "fix:" in message


def prepared_secret(tmp_path: Path, acme: dict[str, Any]) -> bytes | None:
    config = validate(raw(acme), "test.toml")
    return prepare(config, "test.toml", base_dir=tmp_path).acme_secret


def test_the_secret_comes_from_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "acme.secret"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    assert prepared_secret(tmp_path, {"shared": True,
                                      "shared_key_file": "acme.secret"}) == SECRET.encode()
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by group and others"):
        prepared_secret(tmp_path, {"shared": True, "shared_key_file": "acme.secret"})


def test_a_short_or_missing_secret_is_a_config_error(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "acme.secret"
    path.write_text("short")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="at least 32"):
        prepared_secret(tmp_path, {"shared": True, "shared_key_file": "acme.secret"})
    with pytest.raises(ConfigError, match="cannot read"):
        prepared_secret(tmp_path, {"shared": True, "shared_key_file": "missing"})
    monkeypatch.delenv("OFFLOAD_TEST_ACME_KEY", raising=False)
    with pytest.raises(ConfigError, match="OFFLOAD_TEST_ACME_KEY is not set"):
        prepared_secret(tmp_path, {"shared": True, "shared_key_env": "OFFLOAD_TEST_ACME_KEY"})
    monkeypatch.setenv("OFFLOAD_TEST_ACME_KEY", SECRET)
    assert prepared_secret(tmp_path, {"shared": True,
                                      "shared_key_env": "OFFLOAD_TEST_ACME_KEY"}) == (
        SECRET.encode())
    assert "OFFLOAD_TEST_ACME_KEY" in os.environ
