"""The one-screen summary ``offload check`` prints: everything that changes how offload behaves.

Listeners and where they send traffic, certificates, HSTS and the redirect listeners, client
certificates, flood limits, inspection rules, health checks, ACME, the admin listener and
bans. Keys a section sets to something other than the built-in default are listed as well,
found by comparing with the model, so a key added to the model later shows up without a line
written for it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from offload.config.base import metadata_of
from offload.config.model import (
    LIMIT_KEYS,
    AcmeConfig,
    BackendConfig,
    Config,
    FrontendConfig,
    HealthCheckConfig,
)
from offload.config.units import (
    EventRate,
    HostPort,
    format_duration,
    format_size,
    parse_byte_rate,
    parse_duration,
    parse_size,
)
from offload.security.rules_config import RuleSetConfig
from offload.security.waf_config import WafConfig
from offload.server.prepare import Prepared

_SHOWN_APART = {
    # frontend keys with a line of their own (or in the heading)
    "name", "bind", "backend", "certificates", "mode", "tls_policy", "hsts", "redirect_http",
    "limits", "inspect", "waf", "client_auth", "client_ca", "client_crl", "client_crl_fetch",
    "client_crl_failure", "client_crl_timeout", "client_crl_max_size", "client_crl_refresh",
    "client_crl_retry",
    # backend keys
    "servers", "balance", "connect_timeout", "proxy_protocol", "health_check", "ejection",
    "tls", "verify", "ca", "verify_name", "sni", "client_certificate",
}


def listen_text(address: HostPort) -> str:
    """A listen address as written, with what a wildcard covers."""
    if address.all_addresses:
        return f"{address} (IPv4 and IPv6)"
    if address.host == "0.0.0.0":
        return f"{address} (all IPv4)"
    if address.host == "::":
        return f"{address} (all IPv6)"
    return str(address)


def _value(field: FieldInfo, value: object) -> str:
    parsers = {getattr(item, "func", None) for item in metadata_of(field)}
    if isinstance(value, float) and parse_duration in parsers:
        return format_duration(value)
    if isinstance(value, int) and parse_size in parsers:
        return format_size(value)
    if isinstance(value, float) and parse_byte_rate in parsers:
        return "off" if value == 0 else f"{format_size(int(value))}/s"
    if isinstance(value, tuple):
        return "[" + ", ".join(str(item) for item in value) + "]"
    if value is None:
        return "off"
    if isinstance(value, str):
        return f"\"{value}\""
    return str(value).lower() if isinstance(value, bool) else str(value)


def changed(section: BaseModel, skip: Iterable[str] = ()) -> list[str]:
    """``key value`` for every key of ``section`` that differs from its built-in default."""
    out = []
    for name, field in type(section).model_fields.items():
        if name in skip:
            continue
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            continue
        if value != field.get_default(call_default_factory=True):
            out.append(f"{field.alias or name} {_value(field, value)}")
    return out


def _limits(frontend: FrontendConfig) -> str:
    limits = frontend.limits
    parts = []
    for key in LIMIT_KEYS:
        value = getattr(limits, key)
        if value is not None:
            parts.append(f"{key} {value}" if isinstance(value, EventRate | int) else key)
    return ", ".join(parts + changed(limits, LIMIT_KEYS)) if limits.any else ""


def _rules(inspect: RuleSetConfig) -> str:
    if not inspect.rules and not inspect.builtin:
        return ""
    actions: dict[str, int] = {}
    for rule in inspect.rules:
        actions[rule.action] = actions.get(rule.action, 0) + 1
    parts = []
    if inspect.rules:
        counts = ", ".join(f"{count} {action}" for action, count in sorted(actions.items()))
        parts.append(f"{len(inspect.rules)} rule(s) ({counts})")
    if inspect.builtin:
        parts.append(f"built-in {', '.join(inspect.builtin)} ({inspect.builtin_action})")
    if inspect.dry_run:
        parts.append("DRY RUN: nothing denied")
    return "; ".join(parts)


def _client_auth(frontend: FrontendConfig) -> str:
    if frontend.client_auth == "none":
        return ""
    crls = []
    if frontend.client_crl:
        crls.append(f"{len(frontend.client_crl)} CRL file(s)")
    if frontend.client_crl_fetch:
        crls.append(f"CRLs fetched, {frontend.client_crl_failure}")
    return (f"{frontend.client_auth}, {len(frontend.client_ca)} CA file(s)"
            + (f", {', '.join(crls)}" if crls else ", no revocation check"))


def _frontend_lines(frontend: FrontendConfig) -> list[str]:
    lines = []
    if frontend.mode == "http":
        lines.append("HSTS " + (f"\"{frontend.hsts}\"" if frontend.hsts else "off"))
    if frontend.redirect_http:
        listeners = ", ".join(listen_text(address) for address in frontend.redirect_http)
        lines.append(f"redirect plain HTTP on {listeners} to https port {frontend.bind[0].port}")
    for label, text in (("client certificates", _client_auth(frontend)),
                        ("limits", _limits(frontend)),
                        ("inspection", _rules(frontend.inspect)),
                        ("settings", ", ".join(changed(frontend, _SHOWN_APART)))):
        if text:
            lines.append(f"{label}: {text}")
    return ["    " + line for line in lines]


def _waf(waf: WafConfig, crs: str) -> str:
    rules = f"OWASP CRS from {crs}, paranoia level {waf.paranoia_level}, anomaly threshold " \
        f"{waf.anomaly_threshold}" if crs else "no CRS"
    if waf.rules:
        rules += f", {len(waf.rules)} rule file(s) of your own"
    if waf.exclusions:
        rules += f", {len(waf.exclusions)} exclusion(s)"
    return (f"waf: {waf.mode} mode, {rules}; request bodies inspected up to "
            f"{format_size(waf.request_body_limit)}; {waf.threads} engine thread(s) per worker, "
            f"on_overload {waf.on_overload}")


def _health(check: HealthCheckConfig | None) -> str:
    if check is None:
        return "no active health check"
    what = (f"GET {check.path}" + (f" Host {check.host}" if check.host else "")
            + f" expecting {check.expect[0]}-{check.expect[1]}" if check.kind == "http"
            else "TCP connect")
    return (f"health check {what} every {format_duration(check.interval)} (timeout "
            f"{format_duration(check.timeout)}, down after {check.fall}, up after {check.rise})")


def _backend_lines(backend: BackendConfig, servers: str, tls: tuple[str, ...] = ()
                   ) -> list[str]:
    proxy = "" if backend.proxy_protocol == "none" else f", PROXY {backend.proxy_protocol}"
    lines = [f"  backend \"{backend.name}\" ({backend.balance}, connect "
             f"{format_duration(backend.connect_timeout)}{proxy}): {servers}"]
    ejection = backend.ejection
    passive = (f"ejected for {format_duration(ejection.duration)} after {ejection.failures} "
               "failures in a row" if ejection.failures else "passive ejection off")
    lines.append(f"    {_health(backend.health_check)}; {passive}")
    if any(not line.endswith(": plain TCP") for line in tls):
        lines.extend(f"    server {line}" for line in tls)
    settings = changed(backend, _SHOWN_APART)
    if settings:
        lines.append(f"    settings: {', '.join(settings)}")
    return lines


def _acme(acme: AcmeConfig) -> str:
    names = "; ".join(", ".join(certificate.names) for certificate in acme.certificates)
    scope = ", ".join(acme.frontends) if acme.frontends else "all frontends"
    return (f"  acme: {names} from {acme.directory} ({', '.join(acme.challenges)}; for "
            f"{scope}; storage {acme.storage})")


def summary(prepared: Prepared, now: dt.datetime | None = None) -> str:
    """The one-screen summary ``offload check`` prints."""
    now = now or dt.datetime.now(dt.UTC)
    config: Config = prepared.config
    settings = config.global_
    lines = [
        f"{prepared.source}: configuration is valid",
        f"  global: {settings.workers} worker(s), up to {settings.max_connections} connections "
        f"each, drain {format_duration(settings.drain_timeout)}",
    ]
    for frontend in prepared.frontends:
        fc = frontend.config
        binds = ", ".join(listen_text(address) for address in fc.bind)
        lines.append(f"  frontend \"{fc.name}\": {binds} ({fc.mode}, tls_policy {fc.tls_policy}) "
                     f"-> backend \"{fc.backend}\"")
        for certificate in frontend.certificates:
            lines.append(f"    certificate {certificate.describe()} "
                         f"({certificate.days_left(now)} days left)")
        lines.extend(_frontend_lines(fc))
        if fc.waf is not None and frontend.waf is not None:
            lines.append("    " + _waf(fc.waf, frontend.waf.crs))
    for backend in config.backends:
        servers = ", ".join(f"{server.label}" + ("" if server.label == str(server) else f"={server}")
                            for server in prepared.servers[backend.name])
        tls = (prepared.backend_tls.descriptions.get(backend.name, ())
               if prepared.backend_tls is not None else ())
        lines.extend(_backend_lines(backend, servers, tls))
    if config.acme is not None:
        lines.append(_acme(config.acme))
    if config.admin is not None:
        bind = config.admin.bind
        access = "token required" if config.admin.token_file else "no token, loopback only"
        where = listen_text(bind) if bind.all_addresses else f"http://{bind}/"
        lines.append(f"  admin: {where} ({access})")
    if config.bans is not None:
        bans = config.bans
        lines.append(f"  bans: {bans.threshold} offences within {format_duration(bans.window)} "
                     f"ban a client for {format_duration(bans.ban_time)}")
    lines.extend(f"  warning: {warning}" for warning in prepared.warnings)
    return "\n".join(lines)
