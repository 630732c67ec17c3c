"""Turn a TOML file (or the quick-mode flags, as a dict) into a validated :class:`Config`.

Every problem is collected, not just the first, and each names the key path
(``frontends[0].certificates[1]``), what is wrong and how to fix it. Unknown keys get a
"did you mean" hint. ``defaults`` is validated on its own first, so a bad default is reported
once, where it was written, and then merged into every frontend and backend that lacks the key.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from offload.config.model import (
    BACKEND_DEFAULT_KEYS,
    FRONTEND_DEFAULT_KEYS,
    AcmeCertificateConfig,
    AcmeConfig,
    AdminConfig,
    BackendConfig,
    BansConfig,
    CertificateRef,
    Config,
    DefaultsConfig,
    EjectionConfig,
    FrontendConfig,
    FrontendLimits,
    GlobalConfig,
    HealthCheckConfig,
    ServerConfig,
    is_loopback,
)
from offload.errors import ConfigError, Issue
from offload.security.rules_config import RuleConfig, RuleSetConfig

Loc = tuple[int | str, ...]

# Which model describes the table found under each key, to suggest the right spelling.
_SECTION_MODELS: dict[str, type[BaseModel]] = {
    "global": GlobalConfig,
    "defaults": DefaultsConfig,
    "frontends": FrontendConfig,
    "certificates": CertificateRef,
    "backends": BackendConfig,
    "servers": ServerConfig,
    "health_check": HealthCheckConfig,
    "ejection": EjectionConfig,
    "limits": FrontendLimits,
    "acme": AcmeConfig,
    "admin": AdminConfig,
    "bans": BansConfig,
    "inspect": RuleSetConfig,
    "rules": RuleConfig,
}

_FIXES = {
    "missing": "add this key",
    "extra_forbidden": "remove this key",
    "too_short": "give at least one entry",
    "bool_type": "write true or false, without quotes",
    "bool_parsing": "write true or false, without quotes",
    "int_type": "write a whole number, without quotes",
    "int_parsing": "write a whole number, without quotes",
    "string_type": "write a quoted string",
}


def path_of(loc: Loc) -> str:
    """Render a pydantic location as a key path: ``frontends[0].certificates[1]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _known_keys(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def _did_you_mean(loc: Loc) -> str:
    """Suggest the closest valid key for an unknown key at ``loc``."""
    key = str(loc[-1])
    section = next((part for part in reversed(loc[:-1]) if isinstance(part, str)), None)
    model = _SECTION_MODELS.get(section, Config) if section else Config
    if loc[0] == "acme" and section == "certificates":
        model = AcmeCertificateConfig
    known = _known_keys(model)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"did you mean \"{close[0]}\"?"
    return "valid keys here: " + ", ".join(known)


def issues_from_validation(error: ValidationError, prefix: Loc = ()) -> list[Issue]:
    """Translate pydantic's errors into :class:`Issue` objects with paths and fixes."""
    issues = []
    details = error.errors(include_url=False)
    item_errors = {tuple(d["loc"][:-1]) for d in details if len(d["loc"]) > 1}
    item_errors |= {tuple(d["loc"][:i]) for d in details for i in range(len(d["loc"]))
                    if isinstance(d["loc"][i], int)}
    for detail in details:
        loc: Loc = prefix + tuple(detail["loc"])
        kind = detail["type"]
        if kind == "too_short" and tuple(detail["loc"]) in item_errors:
            continue  # every entry was invalid and is reported itself; "too short" would mislead
        where = path_of(loc)
        if kind == "extra_forbidden":
            issues.append(Issue(where, "unknown key", _did_you_mean(loc)))
            continue
        message = str(detail["msg"]).removeprefix("Value error, ")
        if kind == "missing":
            message = "required key is missing"
        fix = _FIXES.get(kind, "")
        if kind == "literal_error":
            fix = "use one of the values listed"
        issues.append(Issue(where, message, fix))
    return issues


def _merge_defaults(
    raw: dict[str, Any], defaults: DefaultsConfig, raw_defaults: Mapping[str, Any]
) -> None:
    """Copy each default that a frontend or backend does not set itself, in place. A table
    (``limits``) is merged key by key: the section's own keys win."""
    present = {key for key, value in defaults.model_dump().items() if value is not None}
    for section, keys in (("frontends", FRONTEND_DEFAULT_KEYS), ("backends", BACKEND_DEFAULT_KEYS)):
        entries = raw.get(section)
        if not isinstance(entries, list):
            continue
        for entry in entries:
            if isinstance(entry, dict):
                for key in keys:
                    if key not in present:
                        continue
                    if key not in entry:
                        entry[key] = raw_defaults[key]
                    elif isinstance(entry[key], dict) and isinstance(raw_defaults[key], dict):
                        entry[key] = {**raw_defaults[key], **entry[key]}


def _cross_check(config: Config) -> list[Issue]:
    """Checks that span sections: references, unique names, unique listen addresses."""
    issues: list[Issue] = []
    backend_names = [backend.name for backend in config.backends]
    for index, name in enumerate(backend_names):
        if name in backend_names[:index]:
            issues.append(Issue(f"backends[{index}].name", f"backend \"{name}\" is defined twice",
                                "give every backend its own name"))
    for b_index, backend in enumerate(config.backends):
        labels = [server.label for server in backend.servers]
        for s_index, label in enumerate(labels):
            if label in labels[:s_index]:
                issues.append(Issue(f"backends[{b_index}].servers[{s_index}]",
                                    f"server \"{label}\" appears twice in this backend",
                                    "give each server its own name or address"))
    seen_frontends: list[str] = []
    seen_binds: dict[str, str] = {}
    for index, frontend in enumerate(config.frontends):
        where = f"frontends[{index}]"
        if frontend.name in seen_frontends:
            issues.append(Issue(f"{where}.name", f"frontend \"{frontend.name}\" is defined twice",
                                "give every frontend its own name"))
        seen_frontends.append(frontend.name)
        if frontend.backend not in backend_names:
            hint = difflib.get_close_matches(frontend.backend, backend_names, n=1)
            fix = (f"did you mean \"{hint[0]}\"?" if hint
                   else "name one of: " + ", ".join(backend_names))
            issues.append(Issue(f"{where}.backend", f"no backend is called \"{frontend.backend}\"", fix))
        listens = [("bind", address) for address in frontend.bind]
        listens += [("redirect_http", address) for address in frontend.redirect_http]
        for b_index, (key_name, address) in enumerate(listens):
            key = str(address)
            position = b_index if key_name == "bind" else b_index - len(frontend.bind)
            here = f"{where}.{key_name}[{position}]"
            if key in seen_binds:
                issues.append(Issue(here, f"{key} is already bound by {seen_binds[key]}",
                                    "listen on each address from one place only"))
            seen_binds[key] = here
        issues.extend(_check_client_auth(frontend, where))
        if frontend.mode != "http" and "inspect" in frontend.model_fields_set:
            issues.append(Issue(f"{where}.inspect", "inspection rules read HTTP requests, and "
                                f"this frontend is in mode \"{frontend.mode}\"",
                                "set mode = \"http\", or remove the inspect table"))
        if not frontend.certificates and not (config.acme and config.acme.serves(frontend.name)):
            issues.append(Issue(f"{where}.certificates", "the frontend has no certificates",
                                "list certificate files or directories, or have [acme] "
                                "obtain them"))
    if config.acme is not None:
        issues.extend(_check_acme(config.acme, config))
    if config.admin is not None:
        issues.extend(_check_admin(config.admin, seen_binds))
    return issues


def _check_admin(admin: AdminConfig, binds: dict[str, str]) -> list[Issue]:
    issues: list[Issue] = []
    if admin.token_file is None and not is_loopback(admin.bind):
        issues.append(Issue("admin.bind", f"on {admin.bind} the admin API would be reachable "
                            "from other machines without a token",
                            "set admin.token_file (a file holding a long random token), or "
                            "bind it to 127.0.0.1"))
    if str(admin.bind) in binds:
        issues.append(Issue("admin.bind", f"{admin.bind} is already bound by {binds[str(admin.bind)]}",
                            "give the admin listener an address of its own"))
    return issues


def _check_client_auth(frontend: FrontendConfig, where: str) -> list[Issue]:
    """Client certificates need a CA to check them against, and a CA needs client_auth."""
    if frontend.client_auth != "none" and not frontend.client_ca:
        return [Issue(f"{where}.client_ca", f"client_auth = \"{frontend.client_auth}\" needs "
                      "the CA that issues client certificates",
                      "set client_ca to the PEM file (or files) of that CA")]
    if frontend.client_auth == "none" and (frontend.client_ca or frontend.client_crl
                                           or frontend.client_crl_fetch):
        key = ("client_ca" if frontend.client_ca else
               "client_crl" if frontend.client_crl else "client_crl_fetch")
        return [Issue(f"{where}.{key}", "client certificates are not asked for",
                      "set client_auth = \"required\" (or \"optional\"), or remove this key")]
    if not frontend.client_crl_fetch:
        unused = sorted(key for key in frontend.model_fields_set
                        if key.startswith("client_crl_") and key != "client_crl_fetch")
        if unused:
            return [Issue(f"{where}.{unused[0]}", "it only matters when CRLs are fetched",
                          "set client_crl_fetch = true, or remove this key")]
    return []


def _check_acme(acme: AcmeConfig, config: Config) -> list[Issue]:
    """ACME settings that depend on the rest of the configuration."""
    issues: list[Issue] = []
    if not acme.agree_to_terms:
        issues.append(Issue("acme.agree_to_terms", "the CA's terms of service must be agreed to",
                            f"read the terms linked from {acme.directory} and set "
                            "agree_to_terms = true"))
    frontend_names = [frontend.name for frontend in config.frontends]
    for index, name in enumerate(acme.frontends):
        if name not in frontend_names:
            issues.append(Issue(f"acme.frontends[{index}]", f"no frontend is called \"{name}\"",
                                "name one of: " + ", ".join(frontend_names)))
    if len(set(acme.challenges)) != len(acme.challenges):
        issues.append(Issue("acme.challenges", "a challenge type is listed twice",
                            "list each of tls-alpn-01 and http-01 at most once"))
    served = [f for f in config.frontends if acme.serves(f.name)]
    if acme.challenges == ("http-01",) and not any(f.redirect_http for f in served):
        issues.append(Issue("acme.challenges", "http-01 needs a plain-HTTP listener",
                            "set redirect_http = \"0.0.0.0:80\" on a frontend that serves the "
                            "ACME certificates, or allow tls-alpn-01"))
    seen: dict[str, str] = {}
    for c_index, certificate in enumerate(acme.certificates):
        for n_index, name in enumerate(certificate.names):
            here = f"acme.certificates[{c_index}].names[{n_index}]"
            if name in seen:
                issues.append(Issue(here, f"{name} is already in {seen[name]}",
                                    "list each name in one certificate only"))
            seen[name] = here
    return issues


def validate(raw: dict[str, Any], source: str, rename: Callable[[str], str] | None = None) -> Config:
    """Validate a raw mapping (from TOML or flags) into a :class:`Config`, or raise ConfigError.

    ``rename`` turns key paths into what the user wrote (quick mode: the flags).
    """
    raw = _deep_copy(raw)
    issues: list[Issue] = []
    raw_defaults = raw.get("defaults", {})
    defaults_checked = isinstance(raw_defaults, dict)
    if defaults_checked:
        try:
            defaults = DefaultsConfig.model_validate(raw_defaults)
        except ValidationError as error:
            issues.extend(issues_from_validation(error, ("defaults",)))
        else:
            _merge_defaults(raw, defaults, raw_defaults)
    config: Config | None = None
    try:
        config = Config.model_validate(raw)
    except ValidationError as error:
        # Errors inside a valid-table defaults were reported above, where they were written.
        issues.extend(issue for issue in issues_from_validation(error)
                      if not (defaults_checked and issue.where.startswith("defaults.")))
    else:
        issues.extend(_cross_check(config))
    if issues or config is None:
        if rename is not None:
            issues = [Issue(rename(issue.where), issue.what, issue.fix) for issue in issues]
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
    return validate(raw, source, lambda where: "--admin" if where == "admin.bind" else where)


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _deep_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_deep_copy(item) for item in value]
    return value
