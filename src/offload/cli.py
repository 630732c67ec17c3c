"""The ``offload`` command: run, check, certs, demo, version. The only place that calls ``sys.exit``."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path

from offload import __version__, certs_cli
from offload.build_info import data_path, nghttp2_binding
from offload.config.loader import admin_flag, load_file
from offload.config.model import AdminConfig, is_loopback
from offload.config.quick import QuickOptions, quick_config, quick_issue
from offload.config.units import HostPort
from offload.demo.pki import demo_files
from offload.errors import ConfigError, Issue, OffloadError
from offload.observe.log import LogSetup
from offload.server.prepare import Prepared, prepare
from offload.server.sockets import bind_listener
from offload.server.supervisor import Supervisor
from offload.summary import summary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="offload", description="offload: a TLS offloading proxy.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the proxy (from a config file or from flags)",
                              description="Run from a TOML file (-c) or from the quick-mode flags.")
    run.add_argument("-c", "--config", help="TOML configuration file")
    quick = run.add_argument_group("quick mode (no config file)")
    quick.add_argument("--listen", metavar="HOST:PORT", help="address to accept TLS on")
    quick.add_argument("--cert", action="append", default=[], metavar="FILE",
                       help="PEM bundle (chain + key), certificate chain, or directory of "
                            "bundles; repeat for more certificates")
    quick.add_argument("--key", action="append", default=[], metavar="FILE",
                       help="key for the --cert of the same position, when not in the bundle")
    quick.add_argument("--backend", action="append", default=[], metavar="HOST:PORT",
                       help="backend server; repeat for more (round robin, failover)")
    quick.add_argument("--mode", choices=("tcp", "http"), default="http",
                       help="http: HTTP/1.1 reverse proxy (default); tcp: relay decrypted bytes")
    quick.add_argument("--workers", type=int, metavar="N", help="worker processes (default: CPUs)")
    quick.add_argument("--proxy-protocol", choices=("v1", "v2"),
                       help="send a PROXY protocol header to the backend")
    quick.add_argument("--tls-policy", choices=("modern", "intermediate", "legacy"),
                       help="modern: TLS 1.3 only; intermediate: TLS 1.2+ (default)")
    run.add_argument("--admin", metavar="HOST:PORT",
                     help="serve metrics, health checks, the admin API and the status page here "
                          "(default host 127.0.0.1)")
    quick.add_argument("--upstream-timeout", metavar="DURATION",
                       help="how long a backend may stay silent, e.g. 60s")
    quick.add_argument("--fleet-redis", metavar="URL",
                       help="fleet mode: share ticket keys and bans with the other instances "
                            "through this Redis (redis:// or rediss://), see docs/fleet.md")
    quick.add_argument("--client-ca", metavar="FILE", action="append", default=[],
                       help="require client certificates issued by this CA (repeatable)")
    quick.add_argument("--backend-tls", action="store_true",
                       help="TLS to the backend, its certificate verified against the system "
                       "trust store and the request's Host (sent as SNI)")
    quick.add_argument("--backend-ca", metavar="FILE", action="append", default=[],
                       help="TLS to the backend, verified against this CA instead "
                       "(repeatable; implies --backend-tls)")
    quick.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    quick.add_argument("--access-log", metavar="stderr|off|FILE",
                       help="HTTP mode: where the access log goes (default stderr)")
    quick.add_argument("--allow-readable-keys", action="store_true",
                       help="load key files that group or others may read (refused otherwise)")

    check = commands.add_parser("check", help="validate a configuration without running it")
    check.add_argument("-c", "--config", required=True, help="TOML configuration file")

    certs = commands.add_parser("certs", help="list certificates, check when they expire")
    certs_commands = certs.add_subparsers(dest="certs_command", required=True, metavar="COMMAND")
    certs_list = certs_commands.add_parser(
        "list", help="a table of every certificate: names, key, issuer, expiry, status")
    certs_check = certs_commands.add_parser(
        "check", help="exit 1 if a certificate expires within --days days or is unusable")
    for sub in (certs_list, certs_check):
        sub.add_argument("-c", "--config", help="the certificates of this TOML configuration")
        sub.add_argument("--cert", action="append", default=[], metavar="FILE",
                         help="PEM bundle, certificate chain or directory of bundles; repeatable")
        sub.add_argument("--key", action="append", default=[], metavar="FILE",
                         help="key for the --cert of the same position")
    certs_list.add_argument("--json", action="store_true", help="a JSON list instead of a table")
    certs_check.add_argument("--days", type=int, default=certs_cli.DEFAULT_CHECK_DAYS, metavar="N",
                             help="how many more days every certificate must be valid "
                                  f"(default {certs_cli.DEFAULT_CHECK_DAYS})")

    demo = commands.add_parser(
        "demo", help="run a local demo: generated certificate, built-in backend",
        description="Generate a local CA and a localhost certificate (once), start a small "
                    "built-in backend and offload in front of it on https://localhost:8443/.")
    demo.add_argument("--listen", default="127.0.0.1:8443", metavar="HOST:PORT")
    demo.add_argument("--data-dir", metavar="DIR",
                      help="where the demo CA and certificate live (default: "
                           "$XDG_DATA_HOME/offload/demo or ~/.local/share/offload/demo)")
    demo.add_argument("--workers", type=int, default=1, metavar="N")
    demo.add_argument("--admin", default="127.0.0.1:8404", metavar="HOST:PORT|off",
                      help="the status page, metrics and admin API (default 127.0.0.1:8404; "
                           "skipped if that port is taken)")

    commands.add_parser("version", help="print the version")
    return parser


def _quick_options(args: argparse.Namespace) -> QuickOptions:
    missing = [flag for flag, value in (("--listen", args.listen), ("--cert", args.cert),
                                        ("--backend", args.backend)) if not value]
    if missing:
        raise UsageError("quick mode needs " + ", ".join(missing)
                         + " (or give a configuration file with -c FILE)")
    return QuickOptions(
        listen=args.listen, certs=tuple(args.cert), keys=tuple(args.key),
        backends=tuple(args.backend), mode=args.mode, workers=args.workers,
        proxy_protocol=args.proxy_protocol, tls_policy=args.tls_policy,
        upstream_timeout=args.upstream_timeout, log_level=args.log_level,
        access_log=args.access_log, client_ca=tuple(args.client_ca), admin=args.admin,
        allow_readable_keys=args.allow_readable_keys,
        backend_tls=args.backend_tls or bool(args.backend_ca),
        backend_ca=tuple(args.backend_ca), fleet_redis=args.fleet_redis,
    )


class UsageError(OffloadError):
    """The command line itself is wrong (exit status 2)."""


def _loader(args: argparse.Namespace) -> Callable[[], Prepared]:
    """A function that loads and prepares the configuration (called again on SIGHUP)."""
    quick_flags = [args.listen, args.cert, args.key, args.backend, args.workers,
                   args.proxy_protocol, args.tls_policy, args.upstream_timeout, args.access_log,
                   args.client_ca, args.allow_readable_keys, args.backend_tls,
                   args.backend_ca, args.fleet_redis]
    if args.config:
        if any(quick_flags):
            raise UsageError("give either -c FILE or the quick-mode flags, not both")
        path, admin = args.config, args.admin
        rewrite = admin_flag if admin is not None else None
        return lambda: prepare(load_file(path, admin_bind=admin), path, rewrite,
                               base_dir=Path(path).resolve().parent)
    options = _quick_options(args)
    return lambda: prepare(quick_config(options), "command line", quick_issue)


def _warn_if_not_compiled() -> None:
    """An install that meant to compile the data path and runs it as pure Python says so."""
    warning = data_path().warning()
    if warning is not None:
        logging.getLogger("offload").warning(warning)


def _run(args: argparse.Namespace) -> int:
    load = _loader(args)
    prepared = load()
    settings = prepared.config.global_
    logs = LogSetup()
    logs.configure(settings.log_level, settings.log_format)
    try:
        logs.route_audit(settings.audit_log)
    except OSError as error:
        raise ConfigError(prepared.source, [Issue(
            "global.audit_log", f"cannot open {settings.audit_log}: {error.strerror}",
            "name a file offload can write, or \"stderr\"")]) from None
    _warn_if_not_compiled()
    return Supervisor(prepared, load, logs).run()


def _check(args: argparse.Namespace) -> int:
    prepared = prepare(load_file(args.config), args.config,
                       base_dir=Path(args.config).resolve().parent)
    print(summary(prepared))
    return 0


def _certs(args: argparse.Namespace) -> int:
    problem = certs_cli.usage_problem(args.config, args.cert, args.key, getattr(args, "days", None))
    if problem:
        raise UsageError(problem)
    sources = (certs_cli.sources_from_config(args.config) if args.config
               else certs_cli.sources_from_flags(args.cert, args.key))
    now = dt.datetime.now(dt.UTC)
    if args.certs_command == "list":
        return certs_cli.list_command(sources, now, sys.stdout, as_json=args.json)
    return certs_cli.check_command(sources, now, sys.stdout, days=args.days)


def _data_dir(option: str | None) -> Path:
    if option:
        return Path(option)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "offload" / "demo"


def _demo(args: argparse.Namespace) -> int:
    files = demo_files(_data_dir(args.data_dir))
    backend_socket = socket.create_server(("127.0.0.1", 0))
    port = backend_socket.getsockname()[1]
    admin = None if args.admin == "off" else args.admin
    if admin is not None and not _port_free(admin):
        print(f"offload demo: {admin} is taken; running without the status page "
              "(choose another with --admin HOST:PORT)", file=sys.stderr)
        admin = None
    options = QuickOptions(listen=args.listen, certs=(str(files.bundle),),
                           backends=(f"127.0.0.1:{port}",), mode="http",
                           workers=args.workers, extra_global={"log_format": "text"},
                           admin=admin)
    prepared = prepare(quick_config(options), "demo", quick_issue)
    url = _demo_url(prepared.config.frontends[0].bind[0])

    admin_bind = prepared.config.admin.bind if prepared.config.admin is not None else None
    status_page = (f"Status page and metrics: http://{admin_bind}/ and "
                   f"http://{admin_bind}/metrics\n\n" if admin_bind is not None else "")

    def announce() -> None:
        print(f"\noffload demo is running: HTTPS on {args.listen}, plain HTTP to the built-in "
              f"backend on 127.0.0.1:{port}.\nTry it:\n\n    curl --cacert {files.ca} {url}\n\n"
              f"{status_page}Stop it with Ctrl-C.\n", flush=True)

    backend = subprocess.Popen(
        [sys.executable, "-m", "offload.demo.backend", "--fd", str(backend_socket.fileno())],
        pass_fds=(backend_socket.fileno(),))
    backend_socket.close()
    logs = LogSetup()
    logs.configure("info", "text")
    try:
        return Supervisor(prepared, lambda: prepared, logs, on_ready=announce).run()
    finally:
        backend.terminate()
        backend.wait()


def _demo_url(bind: HostPort) -> str:
    """The address to try the demo at: its certificate is for localhost."""
    local = bind.all_addresses or bind.host in ("0.0.0.0", "::") or is_loopback(bind)
    host = "localhost" if local else f"[{bind.host}]" if ":" in bind.host else bind.host
    return f"https://{host}:{bind.port}/"


def _port_free(address: str) -> bool:
    """Whether ``address`` (an admin address as the config takes it) can be bound now."""
    try:
        bind = AdminConfig.model_validate({"bind": address}).bind
    except ValueError:
        return True  # not an address: the configuration check names the flag and the fix
    try:
        bind_listener(bind, 1, reuseport=False).close()
    except OSError:
        return False
    return True


def _version() -> int:
    print(f"offload {__version__} (Python {sys.version.split()[0]}, {ssl.OPENSSL_VERSION}, "
          f"uvloop {version('uvloop')})")
    print(data_path().describe())
    print(nghttp2_binding().describe())
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``offload`` command."""
    args = _parser().parse_args(argv)
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": _run, "check": _check, "certs": _certs, "demo": _demo, "version": lambda _: _version(),
    }
    try:
        code = handlers[args.command](args)
    except ConfigError as error:
        print(f"offload: {error.render()}", file=sys.stderr)
        code = 1
    except UsageError as error:
        print(f"offload: {error}", file=sys.stderr)
        code = 2
    except OffloadError as error:
        print(f"offload: {error}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
