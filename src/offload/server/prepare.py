"""Everything the workers need that can fail, done once in the supervisor before any fork.

Loading certificates, building the TLS contexts (whose session-ticket keys the workers then
share) and resolving backend names happen here, so that ``offload check`` sees exactly the
errors ``offload run`` would, and a bad reload leaves the running configuration untouched.
"""

from __future__ import annotations

import datetime as dt
import functools
import grp
import os
import pwd
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from offload.acme.storage import AcmeStorage
from offload.config.model import Config, FrontendConfig
from offload.errors import ConfigError, Issue
from offload.fleet.exposure import exposure_warnings
from offload.fleet.seal import check_secret
from offload.security.waf_engine import Engine, WafError, binding_problem
from offload.security.waf_rules import WafPlan, plan_waf
from offload.tls.backend_tls import BackendTls, load_backend_tls
from offload.tls.certs import LoadedCertificate, readable_by
from offload.tls.client_certs import load_client_auth
from offload.tls.groups import groups_problem
from offload.tls.policy import POLICIES, ClientAuth, server_context
from offload.tls.sources import FrontendSources
from offload.tls.store import CertificateStore
from offload.upstream.servers import Server, resolve_backend

HTTP_ALPN = ("h2", "http/1.1")
HTTP1_ALPN = ("http/1.1",)
"""What an HTTP frontend offers when its config names no ALPN protocols."""


@dataclass(frozen=True)
class PreparedFrontend:
    """A frontend with its certificates loaded and its base TLS context built."""

    config: FrontendConfig
    store: CertificateStore
    sources: FrontendSources
    client_auth: ClientAuth | None = None
    waf: WafPlan | None = None
    """The WAF's rules, found and checked to load (frontends with ``waf``)."""

    @property
    def certificates(self) -> list[LoadedCertificate]:
        return self.store.certificates()

    @property
    def alpn(self) -> tuple[str, ...]:
        """The ALPN protocols this frontend serves (none: ALPN is ignored)."""
        return served_alpn(self.config)


def served_alpn(frontend: FrontendConfig) -> tuple[str, ...]:
    """The frontend's ``alpn``, or HTTP mode's default when it names none: ``h2`` first (the
    client picks among what it offers in our order of preference) unless ``http2`` is off."""
    if frontend.alpn:
        return frontend.alpn
    if frontend.mode != "http":
        return ()
    return HTTP_ALPN if frontend.http2.enabled else HTTP1_ALPN


@dataclass(frozen=True)
class Prepared:
    """A configuration ready to run: checked, certificates loaded, names resolved."""

    config: Config
    source: str
    frontends: tuple[PreparedFrontend, ...]
    servers: dict[str, tuple[Server, ...]]
    warnings: tuple[str, ...]
    base_dir: Path
    """Where relative file names in the configuration start from."""
    admin_token: bytes | None = None
    """The admin API's access token (``admin.token_file``), if one is configured."""
    rewrite: Callable[[Issue], Issue] | None = None
    """Turns an issue into what the user wrote (quick mode: flags); for errors found later,
    like an address already in use."""
    backend_tls: BackendTls | None = None
    """TLS to the backend servers: contexts built, CAs and client certificates loaded."""
    acme_secret: bytes | None = None
    """The secret that encrypts the shared ACME store (``acme.shared``), read at start."""

    def issue(self, where: str, what: str, fix: str) -> Issue:
        """An issue at a key path, as the user wrote the key."""
        issue = Issue(where, what, fix)
        return issue if self.rewrite is None else self.rewrite(issue)

    @property
    def acme_storage(self) -> AcmeStorage | None:
        acme = self.config.acme
        return None if acme is None else AcmeStorage(self.base_dir / acme.storage)


def _check_accounts(config: Config) -> list[Issue]:
    """The user and group the workers switch to must exist."""
    issues = []
    settings = config.global_
    for key, name, lookup in (("user", settings.user, pwd.getpwnam),
                              ("group", settings.group, grp.getgrnam)):
        if name is None:
            continue
        try:
            lookup(name)
        except KeyError:
            issues.append(Issue(f"global.{key}", f"no {key} \"{name}\" on this system",
                                f"create the {key} or name an existing one"))
    return issues


MIN_TOKEN_LENGTH = 16


def _read_acme_secret(config: Config, base_dir: Path) -> tuple[bytes | None, list[Issue]]:
    """The shared ACME store's secret, from its file (0600, like a key) or its variable."""
    acme = config.acme
    if acme is None or not acme.shared:
        return None, []
    make = "`openssl rand -base64 32`"
    if acme.shared_key_env is not None:
        where, secret = "acme.shared_key_env", os.environ.get(acme.shared_key_env, "").strip()
        problem = (f"the environment variable {acme.shared_key_env} is not set" if not secret
                   else check_secret(secret.encode("utf-8", "replace")))
        if problem is not None:
            return None, [Issue(where, problem, f"export {acme.shared_key_env}=\"$({make[1:-1]})"
                                "\" for offload, the same on every node")]
        return secret.encode(), []
    if acme.shared_key_file is None:
        return None, []  # the cross-checks have said so
    path, where = base_dir / acme.shared_key_file, "acme.shared_key_file"
    try:
        mode = path.stat().st_mode
        data = path.read_bytes().strip()
    except OSError as error:
        return None, [Issue(where, f"cannot read {path}: {error.strerror}",
                            f"create it with {make} > {path}; chmod 600 {path} (the same "
                            "secret on every node)")]
    problem = check_secret(data)
    if problem is not None:
        return None, [Issue(where, f"{path}: {problem}", f"{make} > {path}")]
    who = readable_by(mode)
    if who is not None and not config.global_.allow_readable_keys:
        return None, [Issue(where, f"{path} is readable by {who} (mode {mode & 0o777:o})",
                            f"run `chmod 600 {path}`")]
    return data, []


def _read_admin_token(config: Config, base_dir: Path) -> tuple[bytes | None, list[Issue]]:
    """The admin token: long enough, and (like a private key) not readable by other users."""
    admin = config.admin
    if admin is None or admin.token_file is None:
        return None, []
    path = base_dir / admin.token_file
    where = "admin.token_file"
    try:
        mode = path.stat().st_mode
        token = path.read_bytes().strip()
    except OSError as error:
        return None, [Issue(where, f"cannot read {path}: {error.strerror}",
                            "create it with a long random token, e.g. "
                            f"`openssl rand -hex 32 > {path}; chmod 600 {path}`")]
    if len(token) < MIN_TOKEN_LENGTH or any(c <= 32 or c > 126 for c in token):
        return None, [Issue(where, f"{path} must hold one token of at least {MIN_TOKEN_LENGTH} "
                            "printable characters", f"`openssl rand -hex 32 > {path}`")]
    who = readable_by(mode)
    if who is not None and not config.global_.allow_readable_keys:
        return None, [Issue(where, f"{path} is readable by {who} (mode {mode & 0o777:o})",
                            f"run `chmod 600 {path}`")]
    return token, []


def _prepare_waf(frontend: FrontendConfig, base_dir: Path, where: str
                 ) -> tuple[WafPlan | None, list[Issue]]:
    """Find the frontend's WAF rules and load them once, so a broken rule set (or a missing
    libmodsecurity) is a configuration error, not a worker that cannot start."""
    if frontend.waf is None or frontend.mode != "http":
        return None, []
    problem = binding_problem()
    if problem is not None:
        reason, fix = problem
        return None, [Issue(f"{where}.waf", "the WAF needs libmodsecurity3, which offload "
                            f"cannot use here: {reason}", fix)]
    plan, issues = plan_waf(frontend.waf, base_dir, f"{where}.waf")
    if plan is None:
        return None, issues
    try:
        Engine(list(plan.sources)).close()
    except WafError as error:
        return None, [Issue(f"{where}.waf", f"the WAF rules do not load: {error}",
                            "fix the rule file named (or remove it from rules)")]
    return plan, []


def prepare(config: Config, source: str, rewrite: Callable[[Issue], Issue] | None = None,
            now: dt.datetime | None = None, base_dir: Path | None = None) -> Prepared:
    """Load and check everything ``config`` names; raise ConfigError listing every problem.

    Relative file names are taken from ``base_dir`` (the config file's directory; the current
    directory in quick mode).
    """
    now = now or dt.datetime.now(dt.UTC)
    base_dir = base_dir or Path.cwd()
    issues: list[Issue] = []
    warnings: list[str] = []
    frontends: list[PreparedFrontend] = []
    groups = groups_problem()
    if groups is not None:
        warnings.append(f"TLS key-exchange groups cannot be limited to X25519, P-256 and P-384 "
                        f"on this Python ({groups}): OpenSSL's defaults stay accepted, FFDHE "
                        "included")
    if config.fleet is not None:
        warnings.extend(exposure_warnings(config.fleet))
    for index, frontend in enumerate(config.frontends):
        where = f"frontends[{index}]"
        alpn = served_alpn(frontend)
        if frontend.mode == "http" and "http/1.1" not in alpn:
            issues.append(Issue(f"{where}.alpn", "an HTTP frontend must offer \"http/1.1\"",
                                "add \"http/1.1\" to alpn, or leave alpn out"))
        policy = POLICIES[frontend.tls_policy]
        if policy.warning:
            warnings.append(f"{where} ({frontend.name}): {policy.warning}")
        acme = config.acme
        acme_dir = (AcmeStorage(base_dir / acme.storage).certificates
                    if acme is not None and acme.serves(frontend.name) else None)
        sources = FrontendSources(frontend.certificates, base_dir, where,
                                  allow_readable=config.global_.allow_readable_keys,
                                  acme_dir=acme_dir)
        files, problems, loaded_warnings = sources.load(now)
        issues.extend(problems)
        warnings.extend(loaded_warnings)
        if not files and acme_dir is not None:
            warnings.append(f"{where} ({frontend.name}): no certificate yet; handshakes fail "
                            "until ACME obtains the first one")
        client_auth, problems, auth_warnings = load_client_auth(frontend, base_dir, where, now)
        issues.extend(problems)
        warnings.extend(auth_warnings)
        waf, problems = _prepare_waf(frontend, base_dir, where)
        issues.extend(problems)
        if (files or acme_dir is not None) and not issues:
            store = CertificateStore(
                functools.partial(server_context, frontend.tls_policy, alpn, client_auth), files)
            frontends.append(PreparedFrontend(frontend, store, sources, client_auth, waf))
    issues.extend(_check_accounts(config))
    admin_token, problems = _read_admin_token(config, base_dir)
    issues.extend(problems)
    acme_secret, problems = _read_acme_secret(config, base_dir)
    issues.extend(problems)
    servers: dict[str, tuple[Server, ...]] = {}
    for index, backend in enumerate(config.backends):
        resolved, problems = resolve_backend(backend, f"backends[{index}]")
        servers[backend.name] = resolved
        issues.extend(problems)
    backend_tls, problems, tls_warnings = load_backend_tls(config, base_dir, now)
    issues.extend(problems)
    warnings.extend(tls_warnings)
    if issues:
        if rewrite is not None:
            issues = [rewrite(issue) for issue in issues]
        raise ConfigError(source, issues)
    return Prepared(config, source, tuple(frontends), servers, tuple(warnings), base_dir,
                    admin_token, rewrite, backend_tls, acme_secret)
