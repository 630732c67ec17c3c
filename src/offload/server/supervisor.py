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

The supervisor itself only wires its parts together and runs the loop, the signals and the
start, reload and stop sequence above. Each part is a module with one job:

    part                                  module
    worker processes and generations      workers.py (WorkerPool)
    the ACME process                      acme_child.py (AcmeComponent, a ChildComponent)
    the fleet process ([fleet])           fleet_part.py (FleetComponent, a ChildComponent)
    certificate files and expiry          cert_watch.py (CertificateWatch)
    the admin API and its listener        admin_service.py (AdminService)
    offences in, bans out                 ban_relay.py (BanRelay)
    statistics from the workers           stats_hub.py (StatsHub)
    forking, backoff, shared state        children.py (Forker, Instance, ChildComponent)

Another process beside the workers is another ChildComponent: add it to ``_children``; the loop
then reaps it, keeps its deadlines, syncs it after a reload, stops it and waits for it, and
every child forked later closes its descriptors.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import time
from collections.abc import Callable

from offload.config.checks import listen_addresses
from offload.config.units import HostPort
from offload.errors import Issue, OffloadError, StartError
from offload.observe.log import LogSetup, fields
from offload.server.acme_child import AcmeComponent
from offload.server.admin_service import AdminService
from offload.server.ban_relay import BanRelay
from offload.server.cert_watch import CertificateWatch
from offload.server.children import (
    KILL_GRACE,
    SIGNALS,
    ChildComponent,
    Forker,
    Instance,
    Timed,
)
from offload.server.fleet_part import FleetComponent
from offload.server.prepare import Prepared
from offload.server.sockets import ListenError, SocketSet
from offload.server.stats_hub import StatsHub
from offload.server.workers import Generation, WorkerHooks, WorkerPool

_log = logging.getLogger("offload.supervisor")
_audit = logging.getLogger("offload.audit")

START_TIMEOUT = 30.0


def _listen_issue(prepared: Prepared, error: ListenError) -> Issue:
    """A failed bind as an issue of the key that asked for the address."""
    where = next((key for key, address in listen_addresses(prepared.config)
                  if address == error.address), "")
    return prepared.issue(where, f"cannot listen on {error.address}: {error.reason}",
                          error.fix())


def _addresses(prepared: Prepared) -> list[tuple[HostPort, int]]:
    return [(address, frontend.backlog) for frontend in prepared.config.frontends
            for address in (*frontend.bind, *frontend.redirect_http)]


class Supervisor:
    """Runs an instance until it is told to stop; :meth:`run` returns the exit status."""

    def __init__(self, prepared: Prepared, reload: Callable[[], Prepared], logs: LogSetup,
                 *, on_ready: Callable[[], None] | None = None) -> None:
        self._instance = Instance(prepared)
        self._reload_config = reload
        self._logs = logs
        self._on_ready = on_ready
        self._sockets = SocketSet(reuseport=prepared.config.global_.reuseport)
        self._selector = selectors.DefaultSelector()
        self._forker = Forker(self._sockets, self._selector, logs, self._held_fds)
        self._stats = StatsHub()
        self._switching: set[int] = set()
        """Old workers that have not yet stopped accepting; the reload completes without any."""
        self._signal_r = self._signal_w = -1
        self._bans = BanRelay(prepared.config.bans, self._broadcast)
        self._fleet = FleetComponent(self._instance, self._forker, self._selector,
                                     self._broadcast, lambda: self._bans.hub)
        self._bans.fleet = self._fleet
        self._workers = WorkerPool(
            self._instance, self._selector, self._sockets, self._forker, stats=self._stats,
            hooks=WorkerHooks(ready=self._generation_ready, failed=self._generation_failed,
                              stopped_accepting=self._stopped_accepting,
                              offences=self._bans.offences, greeting=self._greeting))
        self._admin = AdminService(self._instance, self._selector, self._workers,
                                   stats=self._stats, bans=self._bans, reload=self._reload,
                                   fleet=self._fleet)
        self._certificates = CertificateWatch(self._instance, self._selector, self._broadcast)
        self._acme = AcmeComponent(self._instance, self._forker)
        self._children: list[ChildComponent] = [self._acme, self._fleet]
        """Processes beside the workers: reaped, synced, stopped and waited for alike."""

    def _timed(self) -> list[Timed]:
        """Every part with deadlines, in the order the loop serves them."""
        return [self._workers, self._certificates, *self._children, self._stats, self._admin]

    def _held_fds(self) -> list[int]:
        """Every descriptor of the supervisor and its parts (a forked child closes them)."""
        return [self._signal_r, self._signal_w, *self._workers.fds(), *self._certificates.fds(),
                *self._admin.fds(), *(fd for child in self._children for fd in child.fds())]

    @property
    def _current(self) -> Prepared:
        return self._instance.prepared

    def _broadcast(self, message: object) -> None:
        self._workers.broadcast(message)

    def _greeting(self) -> list[object]:
        return [*self._admin.greeting(), *self._bans.greeting(), *self._fleet.greeting()]

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
        admin_error = self._admin.sync()
        if admin_error is not None and prepared.config.admin is not None:
            self._sockets.close()
            self._selector.close()
            failed = ListenError(prepared.config.admin.bind, admin_error)
            raise self._cannot_start(_listen_issue(prepared, failed))
        self._install_signals()
        self._forker.open_lifeline()
        self._start_generation(prepared, [])
        self._certificates.watch()
        try:
            while not (self._instance.stopping and not self._workers.running
                       and not any(child.running for child in self._children)):
                timeout = self._next_deadline()
                for key, _ in self._selector.select(timeout):
                    key.data()
                now = time.monotonic()
                for part in self._timed():
                    part.on_time(now)
        finally:
            self._cleanup()
        return self._instance.exit_code

    def _cannot_start(self, issue: Issue) -> StartError:
        """Log why offload cannot start, and the one-line error the command prints."""
        _log.error("cannot start: %s", issue.what, extra=fields(key=issue.where, fix=issue.fix))
        return StartError(self._current.source, issue)

    def _install_signals(self) -> None:
        self._signal_r, self._signal_w = os.pipe()
        os.set_blocking(self._signal_w, False)
        os.set_blocking(self._signal_r, False)
        signal.set_wakeup_fd(self._signal_w, warn_on_full_buffer=False)
        for signum in SIGNALS:
            signal.signal(signum, _note_signal)
        self._selector.register(self._signal_r, selectors.EVENT_READ, self._on_signals)

    def _cleanup(self) -> None:
        self._admin.close()
        self._certificates.close()
        self._workers.close()
        signal.set_wakeup_fd(-1)
        for signum in SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        self._selector.close()
        self._sockets.close()
        for fd in (self._signal_r, self._signal_w):
            if fd >= 0:
                os.close(fd)
        self._forker.close()

    def _next_deadline(self) -> float | None:
        deadlines = [d for d in (part.deadline() for part in self._timed()) if d is not None]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    # ------------------------------------------------------------------ events

    def _on_signals(self) -> None:
        try:
            data = os.read(self._signal_r, 64)
        except BlockingIOError:
            return
        for signum in data:
            if signum == signal.SIGCHLD:
                self._workers.reap()
                for child in self._children:
                    child.reap()
            elif signum == signal.SIGHUP:
                self._reload("SIGHUP")
            elif signum in (signal.SIGTERM, signal.SIGINT):
                self._shutdown(signal.Signals(signum).name)

    def _reload(self, who: str = "SIGHUP") -> tuple[bool, str]:
        """Reload the configuration; (accepted, what happened), also in the audit log."""
        accepted, message = self._try_reload()
        if not accepted:
            self._instance.reloads["failure"] += 1
        _audit.info("reload", extra=fields(audit=True, who=who, what="reload",
                                           result=("started: " if accepted else "refused: ")
                                           + message))
        return accepted, message

    def _try_reload(self) -> tuple[bool, str]:
        if self._instance.stopping:
            return False, "offload is stopping"
        if self._workers.starting is not None:
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
            self._certificates.refresh("reload")
            self._instance.reloads["success"] += 1
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
        return True, f"starting generation {self._instance.generation + 1}"

    def _shutdown(self, why: str) -> None:
        now = time.monotonic()
        if self._instance.stopping:
            _log.warning("second stop signal: killing the workers now")
            self._workers.kill_all()
            return
        _log.info("stopping: draining the workers", extra=fields(event="stop", signal=why))
        self._instance.stopping = True
        # Refuse new clients at once (the balancer in front moves on) instead of queueing them.
        self._sockets.close()
        self._workers.stop(now + self._current.config.global_.drain_timeout + KILL_GRACE)
        for child in self._children:
            child.stop()

    # ------------------------------------------------------------------ generations

    def _start_generation(self, prepared: Prepared, fresh: list[HostPort]) -> None:
        number = self._instance.generation + 1
        for certificate in (c for f in prepared.frontends for c in f.certificates):
            _log.info("certificate loaded", extra=fields(event="certificate_loaded",
                names=list(certificate.names), key=f"{certificate.key_type} {certificate.key_bits}",
                not_after=certificate.not_after.isoformat(), source=certificate.source))
        for warning in prepared.warnings:
            _log.warning(warning)
        self._workers.start(Generation(number, prepared, time.monotonic() + START_TIMEOUT, fresh))

    def _generation_ready(self, starting: Generation) -> None:
        """Every worker of the new generation is ready: make it current, drain the old one,
        and have every part follow the new configuration."""
        previous = self._current
        self._instance.prepared = starting.prepared
        self._instance.generation = starting.number
        deadline = time.monotonic() + previous.config.global_.drain_timeout + KILL_GRACE
        self._switching.update(self._workers.retire_older(starting.number, deadline))
        self._sockets.retain([a for a, _ in _addresses(self._current)],
                             self._current.config.global_.workers)
        listening = sorted({str(a) for a, _ in _addresses(self._current)})
        for child in self._children:
            child.sync()
        self._admin.forget_missing_servers()
        self._bans.sync(self._current.config.bans)
        if self._instance.started:
            self._instance.reloads["success"] += 1
            self._admin.sync()
            try:
                self._logs.route_audit(self._current.config.global_.audit_log)
            except OSError as error:
                _log.error("cannot open the audit log", extra=fields(
                    file=self._current.config.global_.audit_log, reason=error.strerror))
            self._certificates.watch()
            self._stopped_accepting(None)
        else:
            self._instance.started = True
            admin = self._admin.server
            _log.info("offload ready", extra=fields(
                event="start", listening=listening,
                workers=len(self._workers.members(starting.number)), pid=os.getpid(),
                admin=str(admin.address) if admin is not None else None))
            if self._on_ready is not None:
                self._on_ready()

    def _generation_failed(self, why: str) -> None:
        """The new generation's workers were killed: at start, give up; on reload, keep the
        running generation."""
        if not self._instance.started:
            _log.error("offload could not start: %s", why)
            self._instance.stopping = True
            self._instance.exit_code = 1
            return
        self._instance.reloads["failure"] += 1
        _log.error("reload failed, the running configuration stays: %s", why,
                   extra=fields(event="reload_failed"))
        self._sockets.retain([a for a, _ in _addresses(self._current)],
                             self._current.config.global_.workers)

    def _stopped_accepting(self, pid: int | None) -> None:
        """Note that an old worker stopped accepting; announce the reload once all have."""
        if pid is not None:
            if pid not in self._switching:
                return
            self._switching.discard(pid)
        if not self._switching:
            listening = sorted({str(a) for a, _ in _addresses(self._current)})
            _log.info("reload complete", extra=fields(
                event="reload_complete", generation=self._instance.generation,
                listening=listening))


def _note_signal(signum: int, frame: object) -> None:
    """Signal handler: nothing to do, the wakeup fd carries the signal to the main loop."""
