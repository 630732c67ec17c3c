"""The admin API's routes, sans-IO: a parsed request in, a response out.

The supervisor serves it (:mod:`offload.server.admin_server` moves the bytes) and provides an
:class:`AdminHost` with what only it knows. Routes that show traffic need fresh worker
statistics: :meth:`AdminApi.needs_stats` says so, and the server collects them before calling
:meth:`AdminApi.handle`. Every change made through the API, and every refused token, is written
to the audit log (``offload.audit``: who, what, result; the log line carries the time).

    GET  /healthz                         200 while the supervisor runs
    GET  /readyz                          200 when listening and not draining, else 503
    GET  /metrics                         Prometheus text format, all workers summed
    GET  /api/status                      version, uptime, workers, frontends, traffic totals
    GET  /api/backends                    servers: admin state, health, connections, weight
    GET  /api/certificates                names, key, issuer, expiry, source
    GET  /api/history                     the last ten minutes in 10 s samples: request rate
                                          and latency overall, per backend and per server;
                                          server errors and waiting requests
    POST /api/backends/B/servers/S/ACTION drain | disable | enable a server (every worker)
    POST /api/reload                      reload the configuration (like SIGHUP)
    GET  /api/bans                        clients banned automatically ([bans])
    DELETE /api/bans/CLIENT               lift a ban (on every node in fleet mode)
    GET  /api/fleet                       fleet mode: nodes seen, Redis link, ticket keys
    POST /api/drain, /api/ready           take the instance out of (or back into) the L4
                                          balancer's rotation: /readyz answers 503, traffic
                                          is still served
    GET  /                                the live status page
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Protocol
from urllib.parse import unquote

from offload.observe.admin_guard import AdminGuard
from offload.observe.log import CappedLog, fields
from offload.observe.metrics import (
    Merged,
    SupervisorFacts,
    labelled,
    server_views,
)
from offload.tls.certs import LoadedCertificate
from offload.upstream.balancer import AdminState

_audit = logging.getLogger("offload.audit")

JSON = "application/json"
PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")
"""The status page runs its own inline script and fetches only the API beside it."""
BANS_PREFIX = "/api/bans/"
BACKENDS_PREFIX = "/api/backends/"
ACTIONS: dict[str, AdminState] = {"drain": "drain", "disable": "disabled", "enable": "enabled"}


@dataclass(frozen=True)
class AdminRequest:
    method: str
    path: str
    """The path, without the query string."""
    headers: dict[str, str]
    """Lower-case names."""
    client: str
    """The peer's address, for the audit log."""
    local: str = ""
    """The address the connection arrived on (the admin guard's "own" address)."""


@dataclass(frozen=True)
class AdminResponse:
    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class WorkerInfo:
    pid: int
    slot: int
    generation: int
    state: str
    """starting, ready or draining."""


@dataclass(frozen=True)
class Overview:
    """The supervisor's own state, for ``/api/status`` and ``/readyz``."""

    version: str
    pid: int
    started: dt.datetime
    generation: int
    draining: bool
    ready: bool
    workers: tuple[WorkerInfo, ...]
    frontends: tuple[tuple[str, str, tuple[str, ...]], ...]
    """(name, mode, bind addresses)."""
    redirects: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """(frontend name, addresses of its plain-HTTP redirect listeners)."""
    admin: tuple[str, int] | None = None
    """The admin listener's address and its open connections."""


@dataclass(frozen=True)
class BanInfo:
    client: str
    reason: str
    since: float
    until: float
    """Unix times."""
    count: int
    events: dict[str, int]


@dataclass(frozen=True)
class ServedCertificate:
    frontend: str
    certificate: LoadedCertificate


class AdminHost(Protocol):
    """What the supervisor provides to the API."""

    def overview(self) -> Overview: ...
    def merged(self) -> Merged: ...
    def facts(self) -> SupervisorFacts: ...
    def certificates(self) -> list[ServedCertificate]: ...
    def backend_balance(self) -> dict[str, str]: ...
    def history(self) -> dict[str, object]:
        """The recent samples (:meth:`offload.observe.history.History.as_json`)."""
    def set_server_admin(self, backend: str, server: str, state: AdminState) -> str | None:
        """Apply the state on every worker; an error message if there is no such server."""
    def reload(self, who: str) -> tuple[bool, str]:
        """Reload like SIGHUP; (accepted, what happened); the host writes the audit line."""
    def set_in_rotation(self, wanted: bool) -> None:
        """``False``: make /readyz answer 503 (the instance keeps serving)."""
    def bans(self) -> list[BanInfo] | None:
        """The bans in force; None when bans are not configured."""
    def unban(self, client: str, who: str) -> str | None:
        """Lift a ban (audited by the host); an error message if there is none to lift."""
    def fleet(self) -> dict[str, object] | None:
        """Fleet mode's state (docs/fleet.md); None without ``[fleet]``."""


def _json(status: int, value: object) -> AdminResponse:
    return AdminResponse(status, json.dumps(value, indent=1).encode() + b"\n")


def _error(status: int, message: str) -> AdminResponse:
    return _json(status, {"error": message})


class AdminApi:
    """Routes requests; one instance per admin listener."""

    def __init__(self, host: AdminHost, token: bytes | None, guard: AdminGuard, *,
                 health_without_token: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._host = host
        self._token = token
        self._guard = guard
        self._health_without_token = health_without_token
        self._refusals = CappedLog(clock=clock)
        """Audit lines of refused requests, capped per status (a fixed set of keys)."""
        self._page: bytes | None = None
        self._gets: dict[str, Callable[[], AdminResponse]] = {
            "/healthz": lambda: _json(200, {"status": "alive"}),
            "/readyz": self._readyz,
            "/metrics": self._metrics,
            "/api/status": self._status,
            "/api/backends": self._backends,
            "/api/certificates": self._certificates,
            "/api/bans": self._bans,
            "/api/history": lambda: _json(200, self._host.history()),
            "/api/fleet": self._fleet,
            "/": self._status_page,
        }
        self._posts: dict[str, Callable[[AdminRequest], AdminResponse]] = {
            "/api/reload": self._reload,
            "/api/drain": lambda request: self._rotation(request, wanted=False),
            "/api/ready": lambda request: self._rotation(request, wanted=True),
        }

    @staticmethod
    def needs_stats(request: AdminRequest) -> bool:
        return request.method == "GET" and request.path in (
            "/metrics", "/api/status", "/api/backends")

    def authorized(self, request: AdminRequest) -> AdminResponse | None:
        """None when the request may proceed; else the 421, 403 or 401 to answer, and an audit
        line. The browser checks (:mod:`offload.observe.admin_guard`) come first, so that a
        page of another site never gets a credentials challenge."""
        refusal = self._guard.check(request.method, request.path, request.headers,
                                    request.local)
        if refusal is not None:
            self._refused(request, refusal.reason, refusal.status)
            return _error(refusal.status, refusal.message)
        if self._token is None:
            return None
        if self._health_without_token and request.path in ("/healthz", "/readyz"):
            return None
        offered = _credential(request.headers.get("authorization", ""))
        if offered is not None and hmac.compare_digest(offered, self._token):
            return None
        self._refused(request, "wrong token" if offered is not None else "no token", 401)
        return AdminResponse(
            401, b'{"error": "a valid token is needed: Authorization: Bearer <token>"}\n',
            headers=(("WWW-Authenticate", 'Bearer realm="offload admin"'),
                     ("WWW-Authenticate", 'Basic realm="offload admin", charset="UTF-8"')))

    def _refused(self, request: AdminRequest, reason: str, status: int) -> None:
        """The audit line of a refused request, at most ten a second for each status (a page
        looping over fetch() must not flood the log); the next line written says how many were
        left out."""
        suppressed = self._refusals.admit(status)
        if suppressed < 0:
            return
        extra: dict[str, object] = {"audit": True, "who": request.client,
                                    "what": f"{request.method} {request.path}",
                                    "result": "refused: " + reason}
        if suppressed:
            extra["suppressed"] = suppressed
        _audit.warning("admin request refused", extra=fields(**extra))

    def handle(self, request: AdminRequest) -> AdminResponse:
        path, method = request.path, request.method
        if method == "GET" and path in self._gets:
            return self._gets[path]()
        if method == "POST" and path in self._posts:
            return self._posts[path](request)
        if method == "DELETE" and path.startswith(BANS_PREFIX):
            client = unquote(path.removeprefix(BANS_PREFIX))
            problem = self._host.unban(client, self._who(request))
            if problem is not None:
                return _error(404, problem)
            return _json(200, {"unbanned": client})
        if method == "POST" and path.startswith(BACKENDS_PREFIX):
            parts = path.split("/")
            if len(parts) == 7 and parts[4] == "servers":
                return self._server_action(request, unquote(parts[3]), unquote(parts[5]),
                                           parts[6])
        if path in self._gets or path in self._posts or path.startswith(
                (BANS_PREFIX, BACKENDS_PREFIX)):
            return _error(405, f"{method} is not allowed on {path}")
        return _error(404, f"no such endpoint: {path}")

    # ------------------------------------------------------------ reads

    def _metrics(self) -> AdminResponse:
        # prometheus_client is imported on the first scrape only: the supervisor imports this
        # module at start, and what it holds when it forks, every worker inherits
        from offload.observe.exposition import CONTENT_TYPE, render_text  # noqa: PLC0415

        return AdminResponse(200, render_text(self._host.merged(), self._host.facts()),
                             CONTENT_TYPE)

    def _readyz(self) -> AdminResponse:
        overview = self._host.overview()
        if overview.draining:
            return _json(503, {"status": "draining"})
        if not overview.ready:
            return _json(503, {"status": "starting"})
        return _json(200, {"status": "ready"})

    def _status(self) -> AdminResponse:
        overview, merged = self._host.overview(), self._host.merged()
        counters_of = merged.counters
        counters = counters_of.items()
        active = labelled(merged.gauges.items(), "connections_active")
        handshakes = labelled(counters, "handshake")
        versions: dict[str, int] = {}
        ciphers: dict[str, int] = {}
        kinds = {"full": 0, "resumed": 0}
        for (_, version, cipher, resumed), count in handshakes.items():
            versions[version] = versions.get(version, 0) + count
            ciphers[cipher] = ciphers.get(cipher, 0) + count
            kinds["resumed" if resumed == "true" else "full"] += count
        by_class: dict[str, int] = {}
        for (_, _, status_class), count in labelled(counters, "requests").items():
            by_class[status_class] = by_class.get(status_class, 0) + count
        now = dt.datetime.now(dt.UTC)
        return _json(200, {
            "version": overview.version, "pid": overview.pid,
            "started": _iso(overview.started),
            "uptime_seconds": round((now - overview.started).total_seconds(), 3),
            "generation": overview.generation, "draining": overview.draining,
            "workers": [{"pid": w.pid, "slot": w.slot, "generation": w.generation,
                         "state": w.state} for w in overview.workers],
            "frontends": [
                *({"name": name, "mode": mode, "bind": list(bind),
                   "connections": int(active.get((name,), 0))}
                  for name, mode, bind in overview.frontends),
                *({"name": name, "mode": "redirect", "bind": list(bind),
                   "redirects": counters_of.get(("redirect", name), 0)}
                  for name, bind in overview.redirects),
                *([{"name": "admin", "mode": "admin", "bind": [overview.admin[0]],
                    "connections": overview.admin[1]}] if overview.admin else [])],
            "connections": {"active": int(sum(active.values())),
                            "accepted": sum(labelled(counters, "accepted").values())},
            "tls": {"handshakes": kinds,
                    "failures": _summed(labelled(counters, "handshake_failed"), 1),
                    "versions": versions, "ciphers": ciphers},
            "requests": {"total": sum(by_class.values()), "by_class": by_class},
            "http_errors": _summed(labelled(counters, "http_rejected"), 1),
            "security": {f"{kind}/{cause}": count for (_, kind, cause), count in
                         _regroup(labelled(counters, "security"))},
            "timeouts": _summed(labelled(counters, "timeout"), 0),
            "bytes": {"in": sum(labelled(counters, "bytes_in").values()),
                      "out": sum(labelled(counters, "bytes_out").values())},
        })

    def _backends(self) -> AdminResponse:
        views = server_views(self._host.merged())
        backends: dict[str, list[dict[str, object]]] = {}
        for view in views:
            backends.setdefault(view.backend, []).append({
                "name": view.server, "address": view.address, "weight": view.weight,
                "backup": view.backup, "admin": view.admin, "health": view.health,
                "healthy_workers": view.healthy_workers, "workers": view.workers,
                "active": view.active, "idle": view.idle, "waiting": view.waiting,
                "oldest_wait": round(view.oldest_wait, 1), "tls": view.tls,
                "check": view.check})
        balance = self._host.backend_balance()
        return _json(200, {"backends": [
            {"name": name, "balance": balance.get(name, ""), "servers": servers}
            for name, servers in backends.items()]})

    def _certificates(self) -> AdminResponse:
        now = dt.datetime.now(dt.UTC)
        return _json(200, {"certificates": [{
            "frontend": served.frontend, "names": list(cert.names),
            "key": f"{cert.key_type} {cert.key_bits}", "issuer": cert.issuer,
            "not_before": _iso(cert.not_before), "not_after": _iso(cert.not_after),
            "days_left": cert.days_left(now), "source": cert.source,
            "fingerprint_sha256": cert.fingerprint,
        } for served in self._host.certificates() for cert in [served.certificate]]})

    def _bans(self) -> AdminResponse:
        bans = self._host.bans()
        if bans is None:
            return _json(200, {"enabled": False, "bans": []})
        now = dt.datetime.now(dt.UTC).timestamp()
        return _json(200, {"enabled": True, "bans": [{
            "client": ban.client, "reason": ban.reason,
            "since": _iso(dt.datetime.fromtimestamp(ban.since, dt.UTC)),
            "until": _iso(dt.datetime.fromtimestamp(ban.until, dt.UTC)),
            "seconds_left": max(0, round(ban.until - now)), "offences": ban.count,
            "events": ban.events} for ban in bans]})

    def _fleet(self) -> AdminResponse:
        fleet = self._host.fleet()
        return _json(200, {"enabled": False} if fleet is None else {"enabled": True, **fleet})

    def _status_page(self) -> AdminResponse:
        if self._page is None:
            self._page = resources.files("offload.observe").joinpath(
                "status_page.html").read_bytes()
        return AdminResponse(200, self._page, "text/html; charset=utf-8",
                             (("Cache-Control", "no-store"), ("Content-Security-Policy", PAGE_CSP)))

    # ------------------------------------------------------------ changes

    def _server_action(self, request: AdminRequest, backend: str, server: str,
                       action: str) -> AdminResponse:
        state = ACTIONS.get(action)
        what = f"{action} server {server} of backend {backend}"
        if state is None:
            return _error(404, f"unknown action {action!r}; use drain, disable or enable")
        problem = self._host.set_server_admin(backend, server, state)
        self._audit(request, what, "failed: " + problem if problem else "done")
        if problem:
            return _error(404, problem)
        return _json(200, {"backend": backend, "server": server, "admin": state})

    def _rotation(self, request: AdminRequest, *, wanted: bool) -> AdminResponse:
        self._host.set_in_rotation(wanted)
        self._audit(request, ("ready" if wanted else "drain") + " instance", "done")
        return _json(200, {"status": "ready" if wanted else "draining"})

    def _reload(self, request: AdminRequest) -> AdminResponse:
        accepted, message = self._host.reload(self._who(request))
        return _json(202 if accepted else 409, {"reload": "started" if accepted else "refused",
                                                "detail": message})

    def _who(self, request: AdminRequest) -> str:
        return f"admin API from {request.client}" + (
            " (token)" if self._token is not None else "")

    def _audit(self, request: AdminRequest, what: str, result: str) -> None:
        _audit.info("admin action", extra=fields(audit=True, who=self._who(request), what=what,
                                                 result=result))


def _credential(header: str) -> bytes | None:
    """The token in ``Bearer <token>`` or in the password of ``Basic`` credentials."""
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return value.encode("latin-1", "replace")
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return b""
        return decoded.partition(b":")[2]
    return None


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _summed(values: dict[tuple[str, ...], int], position: int) -> dict[str, int]:
    """Counts summed by one label (``position`` in the label tuple)."""
    out: dict[str, int] = {}
    for labels, count in values.items():
        out[labels[position]] = out.get(labels[position], 0) + count
    return out


def _regroup(values: dict[tuple[str, ...], int]) -> list[tuple[tuple[str, ...], int]]:
    """Counts summed over the first label (the frontend), keyed by the rest."""
    out: dict[tuple[str, ...], int] = {}
    for labels, count in values.items():
        key = ("", *labels[1:])
        out[key] = out.get(key, 0) + count
    return sorted(out.items())
