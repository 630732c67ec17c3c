"""The supervisor: binds the sockets, forks the workers, restarts them, reloads and stops.

Theory of operation. The supervisor never runs an event loop or a thread (it forks); it waits
on a selector for three kinds of events: signals (through ``signal.set_wakeup_fd``), a worker's
"ready" byte on its pipe, and deadlines (restart backoff, reload start, drain kill).

    event                         action
    start                         bind sockets, fork generation 1; if any of its workers dies
                                  before it is ready, stop everything and exit 1
    worker dies unexpectedly      fork a new one for its slot after a backoff (0.1 s doubling
                                  to 10 s; reset once a worker has lived 30 s)
    certificate file changes      (watched with inotify, 200 ms debounce) read the changed files
                                  once they (and their key files) have been still for 200 ms; a
                                  broken one is logged and its old certificate stays; send the
                                  change to every worker, which swaps its certificates in place
    SIGHUP                        load and prepare the configuration again; on error log it and
                                  keep running; if only certificate files changed, apply them in
                                  place as above; else bind new addresses and fork generation N+1;
                                  once all of it is ready, SIGTERM (drain) generation N, and
                                  log "reload complete" when N has stopped accepting (each
                                  worker says so on its status pipe); if N+1 fails to start,
                                  kill it and keep generation N
    SIGTERM / SIGINT              close the listening sockets (new clients are refused), SIGTERM
                                  every worker (they drain), SIGKILL what is left after
                                  drain_timeout + 5 s, then exit 0; a second signal kills at once

Workers hold the read end of a "lifeline" pipe: if the supervisor dies, they see EOF and drain.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import selectors
import signal
import socket
import ssl
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from offload.config.checks import listen_addresses
from offload.config.model import AcmeConfig, AdminConfig, FleetConfig
from offload.config.units import HostPort
from offload.errors import Issue, OffloadError, StartError
from offload.observe.admin_api import (
    AdminApi,
)
from offload.observe.history import History
from offload.observe.log import LogSetup, fields
from offload.server.acme_process import run_acme_process
from offload.server.admin_server import AdminServer
from offload.server.ban_hub import BanHub
from offload.server.control import (
    BackendCertificateChanged,
    CertificatesChanged,
    Inbox,
    Offences,
    Outbox,
    Ready,
    ServerAdmin,
    StatsReply,
    StoppedAccepting,
)
from offload.server.fleet_part import FleetPart
from offload.server.prepare import Prepared
from offload.server.sockets import ListenError, SocketSet
from offload.server.stats_hub import StatsHub
from offload.server.supervisor_admin import SupervisorAdmin
from offload.server.watch import Debounce, PathWatcher
from offload.server.worker import WorkerSpec, account_ids, run_worker
from offload.tls.expiry import ExpiryMonitor
from offload.upstream.balancer import AdminState

_log = logging.getLogger("offload.supervisor")
_audit = logging.getLogger("offload.audit")

START_TIMEOUT = 30.0
CERTIFICATE_DEBOUNCE = 0.2
EXPIRY_CHECK_INTERVAL = 3600.0
KILL_GRACE = 5.0
BACKOFF_FIRST, BACKOFF_MAX, STABLE_AFTER = 0.1, 10.0, 30.0
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


@dataclass
class WorkerProcess:
    """The supervisor's record of one worker."""

    pid: int
    slot: int
    generation: int
    status_fd: int
    control: Outbox
    started: float
    ready: bool = False
    draining: bool = False
    kill_at: float | None = None
    inbox: Inbox = field(default_factory=Inbox)


@dataclass
class Generation:
    """A set of workers started together from one prepared configuration."""

    number: int
    prepared: Prepared
    deadline: float
    fresh_addresses: list[HostPort] = field(default_factory=list)


@dataclass
class AcmeChild:
    """The supervisor's record of an ACME process (or of the wish for one)."""

    config: AcmeConfig | None = None
    shared: tuple[FleetConfig | None, bytes | None] = (None, None)
    """With ``acme.shared``: the ``[fleet]`` and the secret it was started with."""
    pid: int | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    kill_at: float | None = None


def _hand_over(directory: Path, user: str | None, group: str | None) -> None:
    """Give the ACME storage to the account the children run as (they write there)."""
    if os.geteuid() != 0 or (user is None and group is None):
        return
    uid, gid = account_ids(user, group)
    for path in [directory, *(p for p in directory.rglob("*") if p.is_dir())]:
        os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)


def _listen_issue(prepared: Prepared, error: ListenError) -> Issue:
    """A failed bind as an issue of the key that asked for the address."""
    where = next((key for key, address in listen_addresses(prepared.config)
                  if address == error.address), "")
    return prepared.issue(where, f"cannot listen on {error.address}: {error.reason}",
                          error.fix())


def _addresses(prepared: Prepared) -> list[tuple[HostPort, int]]:
    return [(address, frontend.backlog) for frontend in prepared.config.frontends
            for address in (*frontend.bind, *frontend.redirect_http)]


class Supervisor(SupervisorAdmin):
    """Runs an instance until it is told to stop; :meth:`run` returns the exit status."""

    def __init__(self, prepared: Prepared, reload: Callable[[], Prepared], logs: LogSetup,
                 *, on_ready: Callable[[], None] | None = None) -> None:
        self._current = prepared
        self._reload_config = reload
        self._logs = logs
        self._on_ready = on_ready
        self._sockets = SocketSet(reuseport=prepared.config.global_.reuseport)
        self._selector = selectors.DefaultSelector()
        self._workers: dict[int, WorkerProcess] = {}
        self._restarts: dict[int, float] = {}
        self._failures: dict[int, int] = {}
        self._starting: Generation | None = None
        self._switching: set[int] = set()
        """Old workers that have not yet stopped accepting; the reload completes without any."""
        self._watcher: PathWatcher | None = None
        self._debounce = Debounce(CERTIFICATE_DEBOUNCE)
        self._expiry = ExpiryMonitor()
        self._next_expiry_check = 0.0
        self._acme = AcmeChild()
        self._retired_acme: list[AcmeChild] = []
        """ACME processes told to stop that have not exited yet."""
        self._generation = 0
        self._stats = StatsHub()
        self._history = History()
        """The status page's last ten minutes, sampled while the admin listener runs."""
        self._admin: AdminServer | None = None
        self._admin_api: AdminApi | None = None
        self._admin_config: AdminConfig | None = None
        self._server_admin: dict[tuple[str, str], AdminState] = {}
        """Servers drained or disabled through the API (told to every new worker too)."""
        self._bans = BanHub(prepared.config.bans) if prepared.config.bans is not None else None
        self._fleet = FleetPart(self._selector, logs, self._broadcast, lambda: self._bans)
        self._in_rotation = True
        """False after POST /api/drain: /readyz says 503 so the balancer in front moves on."""
        self._reloads = {"success": 0, "failure": 0}
        self._worker_restarts = 0
        self._start_time = time.time()
        self._started_at = dt.datetime.now(dt.UTC)
        self._started = False
        self._stopping = False
        self._exit_code = 0
        self._signal_r = self._signal_w = self._lifeline_r = self._lifeline_w = -1

    # ------------------------------------------------------------------ main loop

    def run(self) -> int:
        """Bind, fork, supervise; returns 0 after a clean stop, 1 if the workers could not
        start. Raises :class:`StartError` when an address cannot be bound."""
        prepared = self._current
        try:
            self._sockets.ensure(_addresses(prepared), prepared.config.global_.workers)
        except ListenError as error:
            self._selector.close()
            raise self._cannot_start(_listen_issue(prepared, error)) from None
        admin_error = self._sync_admin()
        if admin_error is not None and prepared.config.admin is not None:
            self._sockets.close()
            self._selector.close()
            failed = ListenError(prepared.config.admin.bind, admin_error)
            raise self._cannot_start(_listen_issue(prepared, failed))
        self._install_signals()
        self._lifeline_r, self._lifeline_w = os.pipe()
        os.set_inheritable(self._lifeline_r, False)
        self._start_generation(prepared, [])
        self._watch_certificates()
        try:
            while not (self._stopping and not self._workers and self._acme.pid is None
                       and not self._retired_acme and not self._fleet.running):
                timeout = self._next_deadline()
                for key, _ in self._selector.select(timeout):
                    key.data()
                self._on_time()
        finally:
            self._cleanup()
        return self._exit_code

    def _cannot_start(self, issue: Issue) -> StartError:
        """Log why offload cannot start, and the one-line error the command prints."""
        _log.error("cannot start: %s", issue.what, extra=fields(key=issue.where, fix=issue.fix))
        return StartError(self._current.source, issue)

    def _install_signals(self) -> None:
        self._signal_r, self._signal_w = os.pipe()
        os.set_blocking(self._signal_w, False)
        os.set_blocking(self._signal_r, False)
        signal.set_wakeup_fd(self._signal_w, warn_on_full_buffer=False)
        for signum in _SIGNALS:
            signal.signal(signum, _note_signal)
        self._selector.register(self._signal_r, selectors.EVENT_READ, self._on_signals)

    def _cleanup(self) -> None:
        if self._admin is not None:
            self._admin.close()
        if self._watcher is not None:
            self._watcher.close()
        for worker in self._workers.values():
            os.close(worker.control.fd)
        signal.set_wakeup_fd(-1)
        for signum in _SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        self._selector.close()
        self._sockets.close()
        for fd in (self._signal_r, self._signal_w, self._lifeline_r, self._lifeline_w):
            if fd >= 0:
                os.close(fd)

    def _next_deadline(self) -> float | None:
        deadlines = list(self._restarts.values())
        deadlines += [w.kill_at for w in self._workers.values() if w.kill_at is not None]
        if self._starting is not None:
            deadlines.append(self._starting.deadline)
        due = self._debounce.due(time.monotonic())
        if due is not None:
            deadlines.append(due)
        deadlines.append(self._next_expiry_check)
        deadlines += self._acme_deadlines()
        deadlines += self._fleet.deadlines()
        for extra in (self._stats.deadline(),
                      self._admin.deadline() if self._admin is not None else None):
            if extra is not None:
                deadlines.append(extra)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _on_time(self) -> None:
        now = time.monotonic()
        for slot, due in list(self._restarts.items()):
            if due <= now:
                del self._restarts[slot]
                self._spawn(slot, self._generation, self._current)
        for worker in self._workers.values():
            if worker.kill_at is not None and worker.kill_at <= now:
                worker.kill_at = None
                _log.warning("worker did not stop in time; killing it",
                             extra=fields(pid=worker.pid, slot=worker.slot))
                _kill(worker.pid, signal.SIGKILL)
        if self._starting is not None and self._starting.deadline <= now:
            self._abandon_generation("its workers did not become ready in time")
        batch_due = self._debounce.due(now)
        if batch_due is not None and batch_due <= now and not self._stopping:
            self._debounce.take(now)
            self._refresh_certificates("a certificate file changed")
        if self._next_expiry_check <= now:
            self._next_expiry_check = now + EXPIRY_CHECK_INTERVAL
            self._check_expiry()
        self._acme_on_time(now)
        self._fleet.on_time(now)
        self._stats.on_time(now)
        if self._admin is not None:
            self._admin.on_time(now)

    # ------------------------------------------------------------------ events

    def _on_signals(self) -> None:
        try:
            data = os.read(self._signal_r, 64)
        except BlockingIOError:
            return
        for signum in data:
            if signum == signal.SIGCHLD:
                self._reap()
            elif signum == signal.SIGHUP:
                self._reload("SIGHUP")
            elif signum in (signal.SIGTERM, signal.SIGINT):
                self._shutdown(signal.Signals(signum).name)

    def _on_status(self, worker: WorkerProcess) -> None:
        if worker.status_fd < 0:
            return  # reaped earlier in the same batch of events; its pipe is closed
        try:
            data = os.read(worker.status_fd, 1 << 20)
        except BlockingIOError:
            return
        if not data:
            self._forget_pipe(worker)
            return
        self._on_messages(worker, data)

    def _on_messages(self, worker: WorkerProcess, data: bytes) -> None:
        for message in worker.inbox.feed(data):
            if isinstance(message, StatsReply):
                self._stats.received(worker.pid, message.request, message.stats)
            elif isinstance(message, Ready) and not worker.ready:
                worker.ready = True
                self._check_generation()
            elif isinstance(message, StoppedAccepting):
                self._stopped_accepting(worker.pid)
            elif isinstance(message, Offences) and self._bans is not None:
                self._on_offences(message)

    def _reap(self) -> None:
        for pid in list(self._workers):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                self._worker_exited(self._workers.pop(pid), os.waitstatus_to_exitcode(status))
        self._reap_acme()
        self._fleet.reap()

    def _worker_exited(self, worker: WorkerProcess, code: int) -> None:
        self._forget_pipe(worker)
        self._stats.worker_gone(worker.pid)
        self._stopped_accepting(worker.pid)
        info = fields(event="worker_exit", pid=worker.pid, slot=worker.slot,
                      generation=worker.generation, exit_code=code)
        if worker.draining or self._stopping:
            _log.info("worker exited", extra=info)
            return
        starting = self._starting
        if starting is not None and worker.generation == starting.number and not worker.ready:
            _log.error("worker exited while starting", extra=info)
            self._abandon_generation(f"a new worker exited with status {code}")
            return
        lived = time.monotonic() - worker.started
        failures = 0 if lived >= STABLE_AFTER else self._failures.get(worker.slot, 0) + 1
        self._failures[worker.slot] = failures
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, failures - 1))
        self._worker_restarts += 1
        _log.warning("worker died; restarting it", extra={
            "fields": {**info["fields"], "restart_in_s": round(delay, 2)}})
        self._restarts[worker.slot] = time.monotonic() + delay

    def _reload(self, who: str = "SIGHUP") -> tuple[bool, str]:
        """Reload the configuration; (accepted, what happened), also in the audit log."""
        accepted, message = self._try_reload()
        if not accepted:
            self._reloads["failure"] += 1
        _audit.info("reload", extra=fields(audit=True, who=who, what="reload",
                                           result=("started: " if accepted else "refused: ")
                                           + message))
        return accepted, message

    def _try_reload(self) -> tuple[bool, str]:
        if self._stopping:
            return False, "offload is stopping"
        if self._starting is not None:
            _log.warning("a reload is already in progress; ignoring this one")
            return False, "a reload is already in progress"
        _log.info("reloading the configuration", extra=fields(event="reload"))
        try:
            prepared = self._reload_config()
        except OffloadError as error:
            _log.error("reload refused, the running configuration stays: %s", error,
                       extra=fields(event="reload_failed"))
            return False, str(error)
        if prepared.config == self._current.config:
            # Nothing but certificate files can have changed: apply them in place, no restart.
            self._refresh_certificates("reload")
            self._reloads["success"] += 1
            return True, "configuration unchanged; certificate files re-read"
        try:
            fresh = self._sockets.ensure(_addresses(prepared), prepared.config.global_.workers)
        except ListenError as error:
            issue = _listen_issue(prepared, error)
            _log.error("reload refused, the running configuration stays: %s: %s", issue.where,
                       issue.what, extra=fields(event="reload_failed", key=issue.where,
                                                fix=issue.fix))
            return False, f"{issue.where}: {issue.what}"
        self._start_generation(prepared, fresh)
        return True, f"starting generation {self._generation + 1}"

    def _shutdown(self, why: str) -> None:
        now = time.monotonic()
        if self._stopping:
            _log.warning("second stop signal: killing the workers now")
            for worker in self._workers.values():
                _kill(worker.pid, signal.SIGKILL)
            return
        _log.info("stopping: draining the workers", extra=fields(event="stop", signal=why))
        self._stopping = True
        self._restarts.clear()
        self._starting = None
        # Refuse new clients at once (the balancer in front moves on) instead of queueing them.
        self._sockets.close()
        deadline = now + self._current.config.global_.drain_timeout + KILL_GRACE
        for worker in self._workers.values():
            if not worker.draining:
                self._drain(worker, deadline)
        self._stop_acme()
        self._fleet.stop()

    # ------------------------------------------------------------------ generations

    def _start_generation(self, prepared: Prepared, fresh: list[HostPort]) -> None:
        number = self._generation + 1
        self._starting = Generation(number, prepared, time.monotonic() + START_TIMEOUT, fresh)
        for certificate in (c for f in prepared.frontends for c in f.certificates):
            _log.info("certificate loaded", extra=fields(event="certificate_loaded",
                names=list(certificate.names), key=f"{certificate.key_type} {certificate.key_bits}",
                not_after=certificate.not_after.isoformat(), source=certificate.source))
        for warning in prepared.warnings:
            _log.warning(warning)
        for slot in range(prepared.config.global_.workers):
            self._spawn(slot, number, prepared)

    def _check_generation(self) -> None:
        starting = self._starting
        if starting is None:
            return
        members = [w for w in self._workers.values() if w.generation == starting.number]
        if len(members) < starting.prepared.config.global_.workers or not all(
                w.ready for w in members):
            return
        self._starting = None
        previous, self._current = self._current, starting.prepared
        self._generation = starting.number
        deadline = time.monotonic() + previous.config.global_.drain_timeout + KILL_GRACE
        for worker in self._workers.values():
            if worker.generation < starting.number and not worker.draining:
                self._drain(worker, deadline)
                self._switching.add(worker.pid)
        self._restarts.clear()
        self._sockets.retain([a for a, _ in _addresses(self._current)],
                             self._current.config.global_.workers)
        listening = sorted({str(a) for a, _ in _addresses(self._current)})
        self._sync_acme()
        self._fleet.sync(self._current, lambda: self._shed([], []), self._lifeline_r)
        self._forget_missing_servers()
        self._sync_bans()
        if self._started:
            self._reloads["success"] += 1
            self._sync_admin()
            try:
                self._logs.route_audit(self._current.config.global_.audit_log)
            except OSError as error:
                _log.error("cannot open the audit log", extra=fields(
                    file=self._current.config.global_.audit_log, reason=error.strerror))
            self._watch_certificates()
            self._stopped_accepting(None)
        else:
            self._started = True
            _log.info("offload ready", extra=fields(
                event="start", listening=listening, workers=len(members), pid=os.getpid(),
                admin=str(self._admin.address) if self._admin is not None else None))
            if self._on_ready is not None:
                self._on_ready()

    def _stopped_accepting(self, pid: int | None) -> None:
        """Note that an old worker stopped accepting; announce the reload once all have."""
        if pid is not None:
            if pid not in self._switching:
                return
            self._switching.discard(pid)
        if not self._switching:
            listening = sorted({str(a) for a, _ in _addresses(self._current)})
            _log.info("reload complete", extra=fields(
                event="reload_complete", generation=self._generation, listening=listening))

    # ------------------------------------------------------------------ certificates

    def _watch_certificates(self) -> None:
        """Watch the current configuration's certificate files and directories."""
        if self._watcher is not None:
            self._selector.unregister(self._watcher.fileno())
            self._watcher.close()
            self._watcher = None
        try:
            watcher = PathWatcher()
        except OSError as error:
            _log.warning("certificate files are not watched (%s); use SIGHUP after changes",
                         error)
            return
        for frontend in self._current.frontends:
            for path in frontend.sources.watch_paths():
                watcher.watch(path)
        if self._current.backend_tls is not None:
            for path in self._current.backend_tls.watch_paths():
                watcher.watch(path)
        self._watcher = watcher
        self._selector.register(watcher.fileno(), selectors.EVENT_READ, self._on_watch)

    def _on_watch(self) -> None:
        watcher = self._watcher
        if watcher is not None:
            self._debounce.note(time.monotonic(), watcher.read_changes())

    def _refresh_certificates(self, why: str) -> None:
        """Read changed certificate files and hand the changes to every worker."""
        now = dt.datetime.now(dt.UTC)
        for frontend in self._current.frontends:
            name = frontend.config.name
            result = frontend.sources.refresh(now, frontend.store.files(),
                                              settle=CERTIFICATE_DEBOUNCE, clock=time.monotonic())
            if result.unsettled:  # a pair half replaced: judge it once both files are still
                self._debounce.note(time.monotonic(), result.unsettled)
            for path, reason in result.rejected:
                _log.error("certificate rejected, the previous one keeps serving",
                           extra=fields(event="certificate_rejected", frontend=name, file=path,
                                        reason=reason))
                _audit.info("certificate change", extra=fields(
                    audit=True, who=why, what=f"replace {path} on {name}",
                    result=f"rejected: {reason}"))
            for warning in result.warnings:
                _log.warning(warning)
            if not result.changed:
                continue
            if not frontend.store.update(result.order, result.changed):
                _log.error("no certificate would be left; keeping the previous ones",
                           extra=fields(frontend=name))
                continue
            message = CertificatesChanged(name, tuple(result.order), result.changed)
            for worker in self._workers.values():
                if not worker.draining:
                    self._send(worker, message)
            added = sorted(path for path, group in result.changed.items() if group)
            removed = sorted(path for path, group in result.changed.items() if group is None)
            _log.info("certificates updated", extra=fields(
                event="certificates_updated", frontend=name, why=why, loaded=added,
                removed=removed))
            _audit.info("certificate change", extra=fields(
                audit=True, who=why, what=f"certificates of {name}", result="applied",
                loaded=added, removed=removed))
        self._refresh_backend_certificates(why, now)
        self._check_expiry()

    def _refresh_backend_certificates(self, why: str, now: dt.datetime) -> None:
        """The same for the client certificates offload shows backend servers."""
        backend_tls = self._current.backend_tls
        if backend_tls is None or not backend_tls.sources:
            return
        result = backend_tls.refresh(now, settle=CERTIFICATE_DEBOUNCE, clock=time.monotonic())
        if result.unsettled:
            self._debounce.note(time.monotonic(), result.unsettled)
        for path, reason in result.rejected:
            _log.error("backend client certificate rejected, the previous one stays in use",
                       extra=fields(event="certificate_rejected", file=path, reason=reason))
        for warning in result.warnings:
            _log.warning(warning)
        for path, certificate in result.changed.items():
            try:
                backend_tls.use_certificate(path, certificate)  # for workers forked later
            except (ssl.SSLError, OSError) as error:
                _log.error("backend client certificate rejected, the previous one stays in "
                           "use", extra=fields(event="certificate_rejected", file=path,
                                               reason=str(error)))
                continue
            message = BackendCertificateChanged(path, certificate)
            for worker in self._workers.values():
                if not worker.draining:
                    self._send(worker, message)
            _log.info("backend client certificate updated", extra=fields(
                event="certificates_updated", file=path, why=why,
                certificate=certificate.describe()))
            _audit.info("certificate change", extra=fields(
                audit=True, who=why, what=f"backend client certificate {path}",
                result="applied"))

    def _send(self, worker: WorkerProcess, message: object) -> None:
        if not worker.control.send(message):
            self._selector.register(worker.control.fd, selectors.EVENT_WRITE,
                                    lambda: self._flush_control(worker))

    def _flush_control(self, worker: WorkerProcess) -> None:
        if worker.control.flush():
            self._selector.unregister(worker.control.fd)

    def _check_expiry(self) -> None:
        certificates = [c for f in self._current.frontends for c in f.store.certificates()]
        for notice in self._expiry.check(certificates, dt.datetime.now(dt.UTC)):
            log = _log.error if notice.level == "error" else _log.warning
            log(notice.message, extra=fields(event="certificate_expiring",
                                             days_left=notice.days_left,
                                             source=notice.certificate.source))

    def _abandon_generation(self, why: str) -> None:
        starting = self._starting
        if starting is None:
            return
        self._starting = None
        for worker in list(self._workers.values()):
            if worker.generation == starting.number:
                worker.draining = True
                _kill(worker.pid, signal.SIGKILL)
        if not self._started:
            _log.error("offload could not start: %s", why)
            self._stopping = True
            self._exit_code = 1
            return
        self._reloads["failure"] += 1
        _log.error("reload failed, the running configuration stays: %s", why,
                   extra=fields(event="reload_failed"))
        self._sockets.retain([a for a, _ in _addresses(self._current)],
                             self._current.config.global_.workers)

    # ------------------------------------------------------------------ processes

    def _drain(self, worker: WorkerProcess, kill_at: float) -> None:
        worker.draining = True
        worker.kill_at = kill_at
        _kill(worker.pid, signal.SIGTERM)

    def _forget_pipe(self, worker: WorkerProcess) -> None:
        if worker.status_fd >= 0:
            self._drain_status(worker)
            self._selector.unregister(worker.status_fd)
            os.close(worker.status_fd)
            worker.status_fd = -1
        if worker.control.fd >= 0:
            if worker.control.pending:
                self._selector.unregister(worker.control.fd)
            os.close(worker.control.fd)
            worker.control.fd = -1

    def _drain_status(self, worker: WorkerProcess) -> None:
        """Read what an exited worker left in its status pipe (its final statistics)."""
        while True:
            try:
                data = os.read(worker.status_fd, 1 << 20)
            except (BlockingIOError, OSError):
                return
            if not data:
                return
            self._on_messages(worker, data)

    def _spawn(self, slot: int, generation: int, prepared: Prepared) -> None:
        status_r, status_w = os.pipe()
        control_r, control_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(control_w)
            self._become_worker(slot, generation, prepared, status=(status_r, status_w),
                                control_r=control_r)
        os.close(status_w)
        os.close(control_r)
        os.set_blocking(status_r, False)
        worker = WorkerProcess(pid, slot, generation, status_r, Outbox(control_w),
                               time.monotonic())
        self._workers[pid] = worker
        self._selector.register(status_r, selectors.EVENT_READ,
                                lambda: self._on_status(worker))
        for (backend, server), state in self._server_admin.items():
            self._send(worker, ServerAdmin(backend, server, state))
        if self._bans is not None:
            self._send(worker, self._bans.current(time.monotonic()))
        for message in self._fleet.for_new_worker():
            self._send(worker, message)
        _log.info("worker started", extra=fields(pid=pid, slot=slot, generation=generation))

    def _become_worker(self, slot: int, generation: int, prepared: Prepared, *,
                       status: tuple[int, int], control_r: int) -> None:
        """In the child: shed the supervisor's state, then run the worker; never returns."""
        status_r, status_w = status
        code = 70
        try:
            own = self._sockets.for_slot(slot)
            self._shed(list(own.values()), [status_r])
            code = run_worker(WorkerSpec(prepared, slot, generation, own, status_w,
                                         self._lifeline_r, control_r), self._logs)
        except BaseException:  # a worker must never return into the supervisor
            traceback.print_exc(file=sys.stderr)
        finally:
            os._exit(code)

    def _become_acme(self, prepared: Prepared) -> None:
        """In the ACME child: shed the supervisor's state, then keep certificates issued."""
        code = 70
        try:
            self._shed([], [])
            code = run_acme_process(prepared, self._logs, self._lifeline_r)
        except BaseException:  # the child must never return into the supervisor
            traceback.print_exc(file=sys.stderr)
        finally:
            os._exit(code)

    def _shed(self, keep: list[socket.socket], fds: list[int]) -> None:
        """In a child: default signal handling, and close what belongs to the supervisor."""
        signal.set_wakeup_fd(-1)
        for signum in _SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        for sock in self._sockets.all():
            if all(sock is not mine for mine in keep):
                sock.close()
        for fd in [*fds, self._signal_r, self._signal_w, self._lifeline_w,
                   *(w.status_fd for w in self._workers.values() if w.status_fd >= 0),
                   *(w.control.fd for w in self._workers.values() if w.control.fd >= 0),
                   *self._fleet.fds()]:
            os.close(fd)
        if self._watcher is not None:
            self._watcher.close()
        if self._admin is not None:
            for fd in self._admin.fds():
                os.close(fd)
        self._selector.close()

    # ------------------------------------------------------------------ ACME process

    def _sync_acme(self) -> None:
        """Run an ACME process for the current ``[acme]`` section (a new one when it changed)."""
        wanted = self._current.config.acme
        shared = ((self._current.config.fleet, self._current.acme_secret)
                  if wanted is not None and wanted.shared else (None, None))
        running = self._acme.pid is not None or self._acme.restart_at is not None
        if running and self._acme.config == wanted and self._acme.shared == shared:
            return
        self._stop_acme()
        self._acme = AcmeChild(config=wanted, shared=shared)
        if wanted is not None:
            self._spawn_acme()

    def _spawn_acme(self) -> None:
        prepared = self._current
        storage = prepared.acme_storage
        if storage is None:
            return
        try:
            storage.create()
            _hand_over(storage.root, prepared.config.global_.user,
                       prepared.config.global_.group)
        except OSError as error:
            _log.error("ACME is off: cannot create its storage directory",
                       extra=fields(directory=str(storage.root), reason=error.strerror))
            return
        pid = os.fork()
        if pid == 0:
            self._become_acme(prepared)
        self._acme.pid = pid
        self._acme.started = time.monotonic()
        self._acme.restart_at = None
        _log.info("ACME process started", extra=fields(pid=pid))

    def _stop_acme(self) -> None:
        child = self._acme
        if child.pid is not None:
            _kill(child.pid, signal.SIGTERM)
            child.kill_at = time.monotonic() + KILL_GRACE
            self._retired_acme.append(child)
        self._acme = AcmeChild()

    def _reap_acme(self) -> None:
        for child in [self._acme, *self._retired_acme]:
            if child.pid is None:
                continue
            try:
                done, status = os.waitpid(child.pid, os.WNOHANG)
            except ChildProcessError:
                done, status = child.pid, 0
            if not done:
                continue
            code = os.waitstatus_to_exitcode(status)
            pid, child.pid, child.kill_at = child.pid, None, None
            if child is not self._acme or self._stopping:
                _log.info("ACME process exited", extra=fields(pid=pid, exit_code=code))
                continue
            lived = time.monotonic() - child.started
            child.failures = 0 if lived >= STABLE_AFTER else child.failures + 1
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, child.failures - 1))
            _log.warning("ACME process died; restarting it", extra=fields(
                pid=pid, exit_code=code, restart_in_s=round(delay, 2)))
            child.restart_at = time.monotonic() + delay
        self._retired_acme = [c for c in self._retired_acme if c.pid is not None]

    def _acme_deadlines(self) -> list[float]:
        children = [self._acme, *self._retired_acme]
        return ([c.kill_at for c in children if c.kill_at is not None]
                + [c.restart_at for c in children if c.restart_at is not None])

    def _acme_on_time(self, now: float) -> None:
        for child in [self._acme, *self._retired_acme]:
            if child.kill_at is not None and child.kill_at <= now and child.pid is not None:
                child.kill_at = None
                _kill(child.pid, signal.SIGKILL)
        if self._acme.restart_at is not None and self._acme.restart_at <= now:
            self._acme.restart_at = None
            if not self._stopping:
                self._spawn_acme()


def _note_signal(signum: int, frame: object) -> None:
    """Signal handler: nothing to do, the wakeup fd carries the signal to the main loop."""


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
