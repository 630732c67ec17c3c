"""Turn a TOML file (or the quick-mode flags, as a dict) into a validated :class:`Config`.

Every problem is collected, not just the first, and each names the key path
(``frontends[0].certificates[1]``), what is wrong and how to fix it. Unknown keys get a
"did you mean" hint; pydantic's own words never reach the user (:mod:`.translate`).
``defaults`` is validated on its own first, so a bad default is reported once, where it was
written, and then merged into every frontend and backend that lacks the key — except the
HTTP-only keys, which a ``mode = "tcp"`` frontend does not take. Checks across sections are in
:mod:`.checks`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from offload.config.checks import cross_check, http_only_keys
from offload.config.model import (
    BACKEND_DEFAULT_KEYS,
    FRONTEND_DEFAULT_KEYS,
    Config,
    DefaultsConfig,
    FrontendConfig,
    FrontendLimits,
)
from offload.config.translate import issues_from_validation
from offload.errors import ConfigError, Issue

Rewrite = Callable[[Issue], Issue]
"""Turns an issue into what the user wrote (quick mode: the flag instead of the key path)."""


def _merge_defaults(
    raw: dict[str, Any], defaults: DefaultsConfig, raw_defaults: Mapping[str, Any]
) -> None:
    """Copy each default that a frontend or backend does not set itself, in place. A table
    (``limits``) is merged key by key: the section's own keys win."""
    present = {key for key, value in defaults.model_dump().items() if value is not None}
    for section, keys in (("frontends", FRONTEND_DEFAULT_KEYS), ("backends", BACKEND_DEFAULT_KEYS)):
        entries = raw.get(section)
        if isinstance(entries, dict):  # a single table where a list of them is expected
            entries = raw[section] = [entries]
        if not isinstance(entries, list):
            continue
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            tcp = section == "frontends" and entry.get("mode", raw_defaults.get("mode")) == "tcp"
            for key in keys:
                if key not in present:
                    continue
                value = raw_defaults[key]
                if tcp:
                    value = _for_tcp(key, value, entry)
                    if value is None:
                        continue
                if key not in entry:
                    entry[key] = value
                elif isinstance(entry[key], dict) and isinstance(value, dict):
                    entry[key] = {**value, **entry[key]}


def _for_tcp(key: str, value: Any, entry: Mapping[str, Any]) -> Any:
    """A default as a TCP frontend takes it: None for an HTTP-only key (it would be an error
    there, and the default is meant for the HTTP frontends); a table without its HTTP-only
    keys."""
    marker = http_only_keys(FrontendConfig).get(key)
    if marker is not None and (marker.unless is None or marker.unless not in entry):
        return None
    if key == "limits" and isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in http_only_keys(FrontendLimits)}
    return value


def validate(raw: dict[str, Any], source: str, rewrite: Rewrite | None = None) -> Config:
    """Validate a raw mapping (from TOML or flags) into a :class:`Config`, or raise ConfigError.

    ``rewrite`` turns issues into what the user wrote (quick mode: the flags).
    """
    raw = _deep_copy(raw)
    issues: list[Issue] = []
    raw_defaults = raw.get("defaults", {})
    defaults_checked = isinstance(raw_defaults, dict)
    if defaults_checked:
        try:
            defaults = DefaultsConfig.model_validate(raw_defaults)
        except ValidationError as error:
            issues.extend(issues_from_validation(error, DefaultsConfig, ("defaults",)))
        else:
            _merge_defaults(raw, defaults, raw_defaults)
    config: Config | None = None
    try:
        config = Config.model_validate(raw)
    except ValidationError as error:
        # Errors inside a valid-table defaults were reported above, where they were written.
        issues.extend(issue for issue in issues_from_validation(error, Config)
                      if not (defaults_checked and issue.where.startswith("defaults.")))
    else:
        issues.extend(cross_check(config))
    if issues or config is None:
        if rewrite is not None:
            issues = [rewrite(issue) for issue in issues]
        raise ConfigError(source, issues)
    return config


def load_file(path: str | Path, *, admin_bind: str | None = None) -> Config:
    """Read and validate a TOML configuration file; ``admin_bind`` (the ``--admin`` flag)
    replaces ``admin.bind``."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(source, [Issue("", f"cannot read the file: {error.strerror}",
                                         "check the path and its permissions")]) from None
    except UnicodeDecodeError:
        raise ConfigError(source, [Issue("", "the file is not UTF-8 text",
                                         "save the configuration as UTF-8")]) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(source, [Issue("", f"not valid TOML: {error}",
                                         "fix the syntax at the position shown")]) from None
    if admin_bind is None:
        return validate(raw, source)
    admin = raw.get("admin")
    raw["admin"] = {**(admin if isinstance(admin, dict) else {}), "bind": admin_bind}
    return validate(raw, source, admin_flag)


def admin_flag(issue: Issue) -> Issue:
    """With ``--admin``, an issue of ``admin.bind`` is an issue of the flag."""
    if issue.where != "admin.bind":
        return issue
    return Issue("--admin", issue.what, issue.fix.replace("bind it to 127.0.0.1",
                                                          "give --admin a 127.0.0.1 address"))


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _deep_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_deep_copy(item) for item in value]
    return value
