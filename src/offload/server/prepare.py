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

from offload.config.model import CertificateRef, Config, FrontendConfig
from offload.errors import CertificateError, ConfigError, Issue
from offload.tls.certs import KeyPolicy, LoadedCertificate, load_source
from offload.tls.policy import POLICIES, server_context
from offload.tls.sni import CertificateIndex, SniContexts
from offload.upstream.servers import Server, resolve_backend

HTTP_ALPN = ("http/1.1",)
"""What an HTTP frontend offers when its config names no ALPN protocols."""


@dataclass(frozen=True)
class PreparedFrontend:
    """A frontend with its certificates loaded and its TLS contexts built."""

    config: FrontendConfig
    certificates: tuple[LoadedCertificate, ...]
    sni: SniContexts


@dataclass(frozen=True)
class Prepared:
    """A configuration ready to run: checked, certificates loaded, names resolved."""

    config: Config
    source: str
    frontends: tuple[PreparedFrontend, ...]
    servers: dict[str, tuple[Server, ...]]
    warnings: tuple[str, ...]


def _passphrase(ref: CertificateRef, base_dir: Path, where: str) -> bytes | None:
    """The passphrase of an entry's encrypted keys, from its file or environment variable."""
    if ref.passphrase_file is not None and ref.passphrase_env is not None:
        raise CertificateError(where, "both passphrase_file and passphrase_env are set",
                               "keep one of them")
    if ref.passphrase_file is not None:
        path = base_dir / ref.passphrase_file
        try:
            return path.read_bytes().rstrip(b"\r\n")
        except OSError as error:
            raise CertificateError(str(path), f"cannot read the passphrase file: {error.strerror}",
                                   "check the path and its permissions") from None
    if ref.passphrase_env is not None:
        value = os.environ.get(ref.passphrase_env)
        if value is None:
            raise CertificateError(where, f"environment variable {ref.passphrase_env} is not set",
                                   "set it in the environment offload starts with") from None
        return value.encode()
    return None


def _load_certificates(frontend: FrontendConfig, where: str, *, now: dt.datetime, base_dir: Path,
                       allow_readable: bool, issues: list[Issue], warnings: list[str],
                       ) -> list[LoadedCertificate]:
    loaded: list[LoadedCertificate] = []
    for index, ref in enumerate(frontend.certificates):
        here = f"{where}.certificates[{index}]"
        key = str(base_dir / ref.key) if ref.key is not None else None
        try:
            policy = KeyPolicy(allow_readable=allow_readable,
                               passphrase=_passphrase(ref, base_dir, here))
            certificates = load_source(str(base_dir / ref.cert), key, now, policy)
        except CertificateError as error:
            issues.append(Issue(here, str(error), error.fix))
            continue
        for certificate in certificates:
            warnings.extend(f"{certificate.source}: {text}" for text in certificate.warnings)
        loaded.extend(certificates)
    return loaded


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


def prepare(config: Config, source: str, rename: Callable[[str], str] | None = None,
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
    for index, frontend in enumerate(config.frontends):
        where = f"frontends[{index}]"
        alpn = frontend.alpn or (HTTP_ALPN if frontend.mode == "http" else ())
        if frontend.mode == "http" and "http/1.1" not in alpn:
            issues.append(Issue(f"{where}.alpn", "an HTTP frontend must offer \"http/1.1\"",
                                "add \"http/1.1\" to alpn, or leave alpn out"))
        policy = POLICIES[frontend.tls_policy]
        if policy.warning:
            warnings.append(f"{where} ({frontend.name}): {policy.warning}")
        certificates = _load_certificates(
            frontend, where, now=now, base_dir=base_dir,
            allow_readable=config.global_.allow_readable_keys, issues=issues, warnings=warnings)
        if certificates and not issues:
            sni = SniContexts(CertificateIndex(certificates),
                              functools.partial(server_context, frontend.tls_policy, alpn))
            frontends.append(PreparedFrontend(frontend, tuple(certificates), sni))
    issues.extend(_check_accounts(config))
    servers: dict[str, tuple[Server, ...]] = {}
    for index, backend in enumerate(config.backends):
        resolved, problems = resolve_backend(backend, f"backends[{index}]")
        servers[backend.name] = resolved
        issues.extend(problems)
    if issues:
        if rename is not None:
            issues = [Issue(rename(issue.where), issue.what, issue.fix) for issue in issues]
        raise ConfigError(source, issues)
    return Prepared(config, source, tuple(frontends), servers, tuple(warnings))
