"""Quick mode: a whole configuration from command-line flags, like ``hitch --frontend --backend``.

The flags become the same raw mapping a TOML file would give, and go through the same
validation; errors name the flag instead of the key path, and suggest only fixes a flag can
make (or say that the fix needs a configuration file).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from offload.config.loader import validate
from offload.config.model import Config
from offload.errors import ConfigError, Issue

QUICK_NAME = "quick"

# Key paths of the generated config and the flag that set them, most specific first.
_FLAG_OF_PATH = (
    (r"frontends\[0\]\.bind(\[\d+\])?", "--listen"),
    (r"frontends\[0\]\.certificates\[(\d+)\]\.key", "--key"),
    (r"frontends\[0\]\.certificates(\[\d+\])?(\.cert)?", "--cert"),
    (r"frontends\[0\]\.mode", "--mode"),
    (r"frontends\[0\]\.tls_policy", "--tls-policy"),
    (r"frontends\[0\]\.access_log", "--access-log"),
    (r"frontends\[0\]\.client_ca(\[\d+\])?", "--client-ca"),
    (r"backends\[0\]\.servers(\[\d+\])?(\.address)?", "--backend"),
    (r"backends\[0\]\.proxy_protocol", "--proxy-protocol"),
    (r"backends\[0\]\.ca(\[\d+\])?", "--backend-ca"),
    (r"backends\[0\]\.tls", "--backend-tls"),
    (r"backends\[0\]\.server_timeout", "--upstream-timeout"),
    (r"global\.workers", "--workers"),
    (r"global\.log_level", "--log-level"),
    (r"global\.allow_readable_keys", "--allow-readable-keys"),
    (r"admin\.bind", "--admin"),
    (r"fleet\.redis", "--fleet-redis"),
)


@dataclass(frozen=True)
class QuickOptions:
    """The quick-mode flags, as parsed by the CLI."""

    listen: str
    certs: tuple[str, ...]
    backends: tuple[str, ...]
    keys: tuple[str, ...] = ()
    mode: str = "http"
    workers: int | None = None
    proxy_protocol: str | None = None
    tls_policy: str | None = None
    upstream_timeout: str | None = None
    log_level: str | None = None
    access_log: str | None = None
    client_ca: tuple[str, ...] = ()
    admin: str | None = None
    allow_readable_keys: bool = False
    backend_tls: bool = False
    backend_ca: tuple[str, ...] = ()
    fleet_redis: str | None = None
    extra_global: dict[str, Any] = field(default_factory=dict)


def flag_for(path: str) -> str:
    """Name the flag behind a key path of the generated config."""
    for pattern, flag in _FLAG_OF_PATH:
        if re.fullmatch(pattern, path):
            return flag
    return path


# Advice given for a configuration file, and what to do instead with the flags.
_FIX_OF_ADVICE = (
    ("set global.allow_readable_keys = true", "add --allow-readable-keys"),
    ("set admin.token_file (a file holding a long random token), or bind it to 127.0.0.1",
     "give --admin a 127.0.0.1 address (quick mode has no token; to listen elsewhere use a "
     "configuration file with admin.token_file)"),
    ("set mode = \"http\" on this frontend", "give --mode http"),
    ("or remove access_log", "or leave out --access-log"),
)
_CONFIG_KEY = re.compile(r"\b(global|defaults|admin|acme|bans|fleet)\.[a-z_]+|\b(frontends|backends)\[|"
                         r"\bset [a-z_]+ = ")


def quick_fix(fix: str) -> str:
    """A fix as quick mode can apply it: flags instead of keys; a key no flag sets is said to
    need a configuration file."""
    translated = False
    for advice, instead in _FIX_OF_ADVICE:
        if advice in fix:
            fix, translated = fix.replace(advice, instead), True
    if not translated and _CONFIG_KEY.search(fix):
        fix += " (that is a setting of a configuration file: run with -c FILE)"
    return fix


def quick_issue(issue: Issue) -> Issue:
    """An issue of the generated configuration, in the words of the flags."""
    return Issue(flag_for(issue.where), issue.what, quick_fix(issue.fix))


def raw_config(options: QuickOptions) -> dict[str, Any]:
    """The configuration mapping that the flags describe."""
    certificates: list[dict[str, str]] = []
    for index, cert in enumerate(options.certs):
        entry = {"cert": cert}
        if index < len(options.keys):
            entry["key"] = options.keys[index]
        certificates.append(entry)
    frontend: dict[str, Any] = {
        "name": QUICK_NAME,
        "bind": [options.listen],
        "backend": QUICK_NAME,
        "certificates": certificates,
        "mode": options.mode,
    }
    backend: dict[str, Any] = {"name": QUICK_NAME, "servers": list(options.backends)}
    global_: dict[str, Any] = dict(options.extra_global)
    if options.tls_policy is not None:
        frontend["tls_policy"] = options.tls_policy
    if options.access_log is not None:
        frontend["access_log"] = options.access_log
    if options.client_ca:
        frontend["client_auth"] = "required"
        frontend["client_ca"] = list(options.client_ca)
    if options.proxy_protocol is not None:
        backend["proxy_protocol"] = options.proxy_protocol
    if options.backend_tls:
        backend["tls"] = True
    if options.backend_ca:
        backend["ca"] = list(options.backend_ca)
    if options.upstream_timeout is not None:
        backend["server_timeout"] = options.upstream_timeout
    if options.workers is not None:
        global_["workers"] = options.workers
    if options.log_level is not None:
        global_["log_level"] = options.log_level
    if options.allow_readable_keys:
        global_["allow_readable_keys"] = True
    raw: dict[str, Any] = {"global": global_, "frontends": [frontend], "backends": [backend]}
    if options.admin is not None:
        raw["admin"] = {"bind": options.admin}
    if options.fleet_redis is not None:
        raw["fleet"] = {"redis": options.fleet_redis}
    return raw


def quick_config(options: QuickOptions) -> Config:
    """Validate the quick-mode flags into a :class:`Config`."""
    if len(options.keys) > len(options.certs):
        raise ConfigError("command line", [Issue(
            "--key", "more --key than --cert flags",
            "--key flags pair with --cert flags in order: the first --key belongs to the "
            "first --cert; give bundles (chain and key in one file) for the others",
        )])
    return validate(raw_config(options), "command line", quick_issue)
