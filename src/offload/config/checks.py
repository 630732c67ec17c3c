"""Checks that span keys and sections, run once the file has the right shape: references,
unique names, keys that do nothing in their frontend's mode, listeners that collide, and a
frontend that would send its traffic back to itself.

Each returns :class:`~offload.errors.Issue` objects at the key to change, with a fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address

from pydantic import BaseModel

from offload.config.base import HttpOnly
from offload.config.model import (
    BACKEND_TLS_KEYS,
    AcmeConfig,
    AdminConfig,
    BackendConfig,
    Config,
    FleetConfig,
    FrontendConfig,
    FrontendLimits,
    ServerConfig,
    UnixAddress,
    is_loopback,
)
from offload.config.units import HostPort
from offload.errors import Issue


def http_only_keys(model: type[BaseModel]) -> dict[str, HttpOnly]:
    """The keys of ``model`` marked :class:`HttpOnly`, with their markers."""
    found: dict[str, HttpOnly] = {}
    for name, field in model.model_fields.items():
        for item in field.metadata:
            if isinstance(item, HttpOnly):
                found[field.alias or name] = item
    return found


def cross_check(config: Config) -> list[Issue]:
    """Every check of this module, in the order of the file."""
    issues = _names(config)
    for index, frontend in enumerate(config.frontends):
        issues.extend(_frontend(config, frontend, f"frontends[{index}]"))
    issues.extend(_unused_http_defaults(config))
    issues.extend(_listeners(config))
    issues.extend(_loops(config))
    for index, backend in enumerate(config.backends):
        issues.extend(_backend_tls(backend, f"backends[{index}]"))
    if config.acme is not None:
        issues.extend(_check_acme(config.acme, config))
    if config.admin is not None:
        issues.extend(_check_admin(config.admin))
    if config.fleet is not None:
        issues.extend(_check_fleet(config.fleet))
    return issues


def _names(config: Config) -> list[Issue]:
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
    frontend_names = [frontend.name for frontend in config.frontends]
    for index, frontend in enumerate(config.frontends):
        where = f"frontends[{index}]"
        if frontend.name in frontend_names[:index]:
            issues.append(Issue(f"{where}.name", f"frontend \"{frontend.name}\" is defined twice",
                                "give every frontend its own name"))
        if frontend.backend not in backend_names:
            hint = difflib.get_close_matches(frontend.backend, backend_names, n=1)
            fix = (f"did you mean \"{hint[0]}\"?" if hint
                   else "name one of: " + ", ".join(backend_names))
            issues.append(Issue(f"{where}.backend", f"no backend is called \"{frontend.backend}\"",
                                fix))
    return issues


def _frontend(config: Config, frontend: FrontendConfig, where: str) -> list[Issue]:
    issues = _check_client_auth(frontend, where)
    issues.extend(_check_accept_proxy(frontend, where))
    issues.extend(_check_fingerprints(frontend, where))
    issues.extend(_check_limit_scope(config, frontend, where))
    if frontend.mode == "tcp":
        issues.extend(_http_keys_in_tcp(frontend, where))
    # (a TCP frontend may offer h2: it relays the bytes to a backend that speaks it, as hitch)
    if "h2" in frontend.alpn and frontend.mode == "http" and not frontend.http2.enabled:
        issues.append(Issue(f"{where}.alpn", 'ALPN "h2" is offered but http2 is turned off on '
                            "this frontend", 'remove "h2" from alpn, or set http2 = true'))
    if not frontend.certificates and not (config.acme and config.acme.serves(frontend.name)):
        issues.append(Issue(f"{where}.certificates", "the frontend has no certificates",
                            "list certificate files or directories, or have [acme] "
                            "obtain them"))
    return issues


def _check_accept_proxy(frontend: FrontendConfig, where: str) -> list[Issue]:
    """Whoever may send a PROXY header may claim any client address: it takes a list of the
    balancers, and the list means nothing without the header."""
    if frontend.accept_proxy and not frontend.proxy_sources:
        return [Issue(f"{where}.proxy_sources", "accept_proxy is on but no proxy_sources are "
                      "listed: anyone could claim to be any client",
                      "list the addresses of the balancers in front, like "
                      "proxy_sources = [\"10.0.0.0/24\"]")]
    if frontend.proxy_sources and not frontend.accept_proxy:
        return [Issue(f"{where}.proxy_sources", "proxy_sources does nothing without "
                      "accept_proxy = true",
                      "set accept_proxy = true (the balancers send a PROXY header), or remove "
                      "proxy_sources")]
    return []


def _check_limit_scope(config: Config, frontend: FrontendConfig, where: str) -> list[Issue]:
    """Fleet-wide limits need a fleet; the failure mode of the fleet store needs fleet limits."""
    limits = frontend.limits
    if limits.scope == "fleet" and config.fleet is None:
        return [Issue(f"{where}.limits.scope", "scope = \"fleet\" counts limits in Redis, but "
                      "there is no [fleet] section",
                      "add [fleet] with redis = \"redis://host:6379/0\", or remove scope")]
    if "on_store_failure" in limits.model_fields_set and limits.scope != "fleet":
        return [Issue(f"{where}.limits.on_store_failure", "it only matters for fleet-wide "
                      "limits", "set scope = \"fleet\", or remove on_store_failure")]
    return []


def _check_fingerprints(frontend: FrontendConfig, where: str) -> list[Issue]:
    """What looks at the TLS fingerprints needs the frontend to keep them; the fields that
    carry them must not collide."""
    issues: list[Issue] = []
    users = [(f"{where}.limits.{key}", f"limits.{key}")
             for key in ("handshake_rate_per_fingerprint", "request_rate_per_fingerprint")
             if getattr(frontend.limits, key) is not None]
    if frontend.mode == "http":
        users += [(f"{where}.inspect.rules[{index}].{key}", f"rule \"{rule.name}\"")
                  for index, rule in enumerate(frontend.inspect.rules)
                  for key in rule.fingerprint_conditions]
    if not frontend.fingerprints:
        issues.extend(Issue(path, f"{what} looks at the client's TLS fingerprint, which this "
                            "frontend does not keep",
                            "set fingerprints = true on this frontend (it costs a few "
                            "microseconds per handshake), or remove it")
                      for path, what in users)
    if frontend.mode != "http":
        return issues
    names = {"ja4_header": frontend.ja4_header.lower(), "ja3_header": frontend.ja3_header.lower()}
    if names["ja4_header"] and names["ja4_header"] == names["ja3_header"]:
        issues.append(Issue(f"{where}.ja3_header", "ja4_header and ja3_header name the same "
                            "field", "give each fingerprint its own field, or set one to \"\""))
    for key, name in names.items():
        if name and name == frontend.inspect.tag_header.lower():
            issues.append(Issue(f"{where}.{key}", f"{key} is the inspection tag header too",
                                "give the fingerprint a field of its own, like \"X-JA4\""))
    return issues


def _http_keys_in_tcp(frontend: FrontendConfig, where: str) -> list[Issue]:
    """An HTTP-only key on a TCP frontend would be silently ignored: say so instead."""
    issues: list[Issue] = []
    found = [(key, marker, f"{where}.{key}") for key, marker in http_only_keys(FrontendConfig).items()
             if key in frontend.model_fields_set]
    found += [(key, marker, f"{where}.limits.{key}")
              for key, marker in http_only_keys(FrontendLimits).items()
              if key in frontend.limits.model_fields_set]
    for key, marker, path in found:
        if marker.unless is not None and marker.unless in frontend.model_fields_set:
            continue
        also = (f" (in mode \"tcp\" it only applies to the {marker.unless} listener, which this "
                "frontend does not have)" if marker.unless else "")
        issues.append(Issue(path, f"{key} only applies to HTTP requests, and this frontend is "
                            f"in mode \"tcp\"{also}",
                            f"set mode = \"http\" on this frontend, or remove {key}"))
    return issues


def _unused_http_defaults(config: Config) -> list[Issue]:
    """An HTTP-only key in [defaults] that no frontend takes (every one is in mode tcp)."""
    if any(frontend.mode == "http" for frontend in config.frontends):
        return []
    defaults = config.defaults
    keys = [key for key in http_only_keys(FrontendConfig) if getattr(defaults, key, None) is not None]
    if defaults.limits is not None:
        keys += [f"limits.{key}" for key in http_only_keys(FrontendLimits)
                 if key in defaults.limits.model_fields_set]
    return [Issue(f"defaults.{key}", "it only applies to HTTP requests, and every frontend is in "
                  "mode \"tcp\"", "remove it, or set mode = \"http\" where it should apply")
            for key in keys]


# --- listeners --------------------------------------------------------------------------------


def listen_addresses(config: Config) -> Iterator[tuple[str, HostPort]]:
    """Every address offload listens on, with the key that asks for it."""
    for index, frontend in enumerate(config.frontends):
        for b_index, address in enumerate(frontend.bind):
            yield f"frontends[{index}].bind[{b_index}]", address
        for r_index, address in enumerate(frontend.redirect_http):
            yield f"frontends[{index}].redirect_http[{r_index}]", address
    if config.admin is not None:
        yield "admin.bind", config.admin.bind


def _family(host: str) -> int | None:
    """4 or 6 for an address literal, None for a name."""
    try:
        return ip_address(host).version
    except ValueError:
        return None


def covers(wide: HostPort, narrow: HostPort) -> bool:
    """Whether a socket bound to ``wide`` takes connections meant for ``narrow``."""
    if wide.port != narrow.port:
        return False
    if wide.host == narrow.host or wide.all_addresses:
        return True
    if wide.host == "0.0.0.0":
        return _family(narrow.host) in (4, None)
    if wide.host == "::":
        return _family(narrow.host) in (6, None)
    return False


def _listeners(config: Config) -> list[Issue]:
    """Two listeners on one address (or one inside the other's wildcard) cannot both work:
    with SO_REUSEPORT the kernel would even split the connections between them."""
    issues: list[Issue] = []
    seen: list[tuple[str, HostPort]] = []
    for where, address in listen_addresses(config):
        fix = ("give the admin listener an address of its own" if where == "admin.bind"
               else "listen on each address from one place only")
        for other_where, other in seen:
            if address == other:
                issues.append(Issue(where, f"{address} is already bound by {other_where}", fix))
            elif covers(other, address):
                issues.append(Issue(where, f"{address} is already bound by {other_where}, "
                                    f"which listens on {other}: every address on port "
                                    f"{address.port}" + _which(other), fix))
            elif covers(address, other):
                issues.append(Issue(where, f"{address} would take over {other}, already bound "
                                    f"by {other_where}", fix))
            else:
                continue
            break
        seen.append((where, address))
    return issues


def _which(address: HostPort) -> str:
    if address.all_addresses:
        return " (IPv4 and IPv6)"
    return " (IPv4)" if address.host == "0.0.0.0" else " (IPv6)" if address.host == "::" else ""


def _local(host: str) -> set[IPv4Address | IPv6Address] | None:
    """The loopback addresses a server host stands for, or None when it may be elsewhere."""
    if host == "localhost":
        return {ip_address("127.0.0.1"), ip_address("::1")}
    try:
        address = ip_address(host)
    except ValueError:
        return None
    return {address}


def _reaches(bind: HostPort, server: ServerConfig) -> bool:
    """Whether connecting to ``server`` would land on the listener at ``bind``."""
    target = server.address
    if not isinstance(target, HostPort) or target.port != bind.port:
        return False
    if target.host == bind.host:
        return True
    addresses = _local(target.host)
    if addresses is None:
        return False
    if bind.all_addresses or bind.host in ("0.0.0.0", "::"):
        wanted = {4, 6} if bind.all_addresses else {4} if bind.host == "0.0.0.0" else {6}
        return any(a.version in wanted and (a.is_loopback or a.is_unspecified)
                   for a in addresses)
    own = _local(bind.host)
    return own is not None and bool(own & addresses)


def _loops(config: Config) -> list[Issue]:
    """A frontend whose own backend points at the frontend: every connection would come back."""
    issues: list[Issue] = []
    names = [backend.name for backend in config.backends]
    for index, frontend in enumerate(config.frontends):
        if frontend.backend not in names:
            continue  # reported as an unknown backend
        b_index = names.index(frontend.backend)
        backend = config.backends[b_index]
        for s_index, server in enumerate(backend.servers):
            for bind_index, bind in enumerate(frontend.bind):
                if _reaches(bind, server):
                    issues.append(Issue(
                        f"frontends[{index}].bind[{bind_index}]",
                        f"{bind} is also where its own backend \"{backend.name}\" sends traffic "
                        f"(backends[{b_index}].servers[{s_index}], {server.address}): every "
                        "connection would loop back into this frontend",
                        f"point backend \"{backend.name}\" at the application's address, or "
                        "bind this frontend elsewhere"))
    return issues


# --- client certificates, ACME, admin ---------------------------------------------------------


def _backend_tls(backend: BackendConfig, where: str) -> list[Issue]:
    """TLS keys that would do nothing (no TLS where they are set), a check that cannot be made
    (``ca`` with ``verify = false``), and TLS over a Unix socket."""
    issues: list[Issue] = []
    anyone = bool(backend.tls) or any(server.tls for server in backend.servers)
    for key in BACKEND_TLS_KEYS:
        if key != "tls" and getattr(backend, key) is not None and not anyone:
            issues.append(Issue(f"{where}.{key}", f"{key} is set but no server of this backend "
                                "uses TLS", f"set tls = true on the backend, or remove {key}"))
    for index, server in enumerate(backend.servers):
        here = f"{where}.servers[{index}]"
        uses_tls = server.tls if server.tls is not None else bool(backend.tls)
        for key in BACKEND_TLS_KEYS:
            if key != "tls" and getattr(server, key) is not None and not uses_tls:
                issues.append(Issue(f"{here}.{key}", f"{key} is set but this server does not "
                                    "use TLS", f"set tls = true on the server, or remove {key}"))
        if not uses_tls:
            continue
        if isinstance(server.address, UnixAddress):
            issues.append(Issue(f"{here}.address", "TLS to a Unix socket is not supported",
                                "use a TCP address for this server, or set tls = false on it"))
        if server.verify is False and server.ca:
            issues.append(_unused_ca(here))
    if backend.verify is False and backend.ca:
        issues.append(_unused_ca(where))
    return issues


def _unused_ca(where: str) -> Issue:
    return Issue(f"{where}.ca", "ca is set but verify = false: nothing is checked against it",
                 "remove verify = false (verification is the point of ca), or remove ca")


def _check_admin(admin: AdminConfig) -> list[Issue]:
    if admin.token_file is None and not is_loopback(admin.bind):
        return [Issue("admin.bind", f"on {admin.bind} the admin API would be reachable "
                      "from other machines without a token",
                      "set admin.token_file (a file holding a long random token), or "
                      "bind it to 127.0.0.1")]
    return []


def _check_fleet(fleet: FleetConfig) -> list[Issue]:
    """Sentinel needs a master's name; TLS keys need ``rediss://``; a client certificate needs
    its key; the ticket-key periods must leave at least one key to decrypt with."""
    issues: list[Issue] = []
    if fleet.sentinels and fleet.master is None:
        issues.append(Issue("fleet.master", "Sentinel needs the name of the master to follow",
                            'set fleet.master to the name the sentinels monitor, like '
                            '"mymaster"'))
    if fleet.master is not None and not fleet.sentinels:
        issues.append(Issue("fleet.sentinels", "fleet.master is set but no sentinel is listed",
                            'list the sentinels, like sentinels = ["10.0.0.5:26379"], or '
                            "remove fleet.master"))
    tls_keys = [key for key in ("tls_ca", "tls_certificate", "tls_key")
                if getattr(fleet, key) is not None]
    if tls_keys and not fleet.redis.startswith("rediss://"):
        issues.append(Issue(f"fleet.{tls_keys[0]}", "TLS files are set but the Redis URL is "
                            "not rediss://", "write fleet.redis as rediss://host:port/db"))
    if (fleet.tls_certificate is None) != (fleet.tls_key is None):
        missing = "tls_key" if fleet.tls_key is None else "tls_certificate"
        issues.append(Issue(f"fleet.{missing}", "a client certificate needs both "
                            "tls_certificate and tls_key", f"set fleet.{missing} too"))
    if fleet.ticket_key_lifetime < fleet.ticket_key_rotation:
        issues.append(Issue("fleet.ticket_key_lifetime", "keys would be retired before the "
                            "next one is made", "make ticket_key_lifetime at least "
                            "ticket_key_rotation (by default 36h and 12h)"))
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


def _check_acme_shared(acme: AcmeConfig, config: Config) -> list[Issue]:
    """A shared ACME store lives in the fleet's Redis and needs a secret to encrypt with."""
    sources = [key for key in ("shared_key_file", "shared_key_env")
               if getattr(acme, key) is not None]
    if not acme.shared:
        return [Issue(f"acme.{key}", "it only matters with acme.shared = true",
                      "set shared = true, or remove this key") for key in sources]
    if config.fleet is None:
        return [Issue("acme.shared", "shared ACME certificates live in the fleet's Redis, but "
                      "there is no [fleet] section",
                      'add [fleet] with redis = "redis://host:6379/0", or remove shared')]
    if not sources:
        return [Issue("acme.shared", "the shared store needs a secret to encrypt keys with",
                      'set shared_key_file = "/etc/offload/acme.secret" (made with `openssl '
                      'rand -base64 32`), or shared_key_env = "OFFLOAD_ACME_KEY"')]
    if len(sources) > 1:
        return [Issue("acme.shared_key_env", "both shared_key_file and shared_key_env are set",
                      "keep one of them")]
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
                            "set redirect_http = \":80\" on a frontend that serves the "
                            "ACME certificates, or allow tls-alpn-01"))
    issues.extend(_check_acme_shared(acme, config))
    seen: dict[str, str] = {}
    for c_index, certificate in enumerate(acme.certificates):
        for n_index, name in enumerate(certificate.names):
            here = f"acme.certificates[{c_index}].names[{n_index}]"
            if name in seen:
                issues.append(Issue(here, f"{name} is already in {seen[name]}",
                                    "list each name in one certificate only"))
            seen[name] = here
    return issues
