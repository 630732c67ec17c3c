"""The supervisor's worker processes: one per slot and generation, forked, watched, restarted.

Each worker has a status pipe (worker to supervisor: ready, stopped accepting, statistics,
offences) and a control pipe (supervisor to worker, never blocking: see
:class:`~offload.server.control.Outbox`). A worker that dies unexpectedly is forked again for its
slot after a backoff (:func:`~offload.server.children.restart_delay`). A new generation is
started here and reported through :class:`WorkerHooks` once all of its workers are ready, or
abandoned (its workers killed) if one of them exits first or the start deadline passes; what
follows (switching the configuration, draining the old generation) is the supervisor's call.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from offload.config.units import HostPort
from offload.observe.admin_api import WorkerInfo
from offload.observe.log import fields
from offload.server.children import Forker, Instance, kill, restart_delay
from offload.server.control import (
    Inbox,
    Offences,
    Outbox,
    Ready,
    StatsReply,
    StatsRequest,
    StoppedAccepting,
)
from offload.server.prepare import Prepared
from offload.server.sockets import SocketSet
from offload.server.stats_hub import StatsHub
from offload.server.worker import WorkerSpec, run_worker

_log = logging.getLogger("offload.supervisor")


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


@dataclass(frozen=True)
class WorkerHooks:
    """What the pool tells the rest of the supervisor."""

    ready: Callable[[Generation], None]
    """Every worker of the generation being started is ready."""
    failed: Callable[[str], None]
    """The generation being started was abandoned (its workers killed), and why."""
    stopped_accepting: Callable[[int], None]
    """A worker stopped accepting (it said so, or it exited)."""
    offences: Callable[[Offences], None]
    greeting: Callable[[], list[object]]
    """The messages a newly forked worker is sent first (admin states, bans in force)."""


class WorkerPool:
    """Every worker process of the instance, across generations."""

    def __init__(self, instance: Instance, selector: selectors.BaseSelector, sockets: SocketSet,
                 forker: Forker, *, stats: StatsHub, hooks: WorkerHooks) -> None:
        self._instance = instance
        self._selector = selector
        self._sockets = sockets
        self._forker = forker
        self._stats = stats
        self._hooks = hooks
        self._workers: dict[int, WorkerProcess] = {}
        self._restarts: dict[int, float] = {}
        self._failures: dict[int, int] = {}
        self.starting: Generation | None = None
        self.restarts = 0
        """Workers restarted after dying (for the metrics)."""

    # ------------------------------------------------------------------ what others read

    @property
    def running(self) -> bool:
        """A worker has not been reaped yet."""
        return bool(self._workers)

    def describe(self) -> tuple[WorkerInfo, ...]:
        return tuple(WorkerInfo(
            w.pid, w.slot, w.generation,
            "draining" if w.draining else "ready" if w.ready else "starting")
            for w in sorted(self._workers.values(), key=lambda w: (w.generation, w.slot)))

    def live(self) -> int:
        """Workers not draining."""
        return sum(1 for w in self._workers.values() if not w.draining)

    def fds(self) -> list[int]:
        return [*(w.status_fd for w in self._workers.values() if w.status_fd >= 0),
                *(w.control.fd for w in self._workers.values() if w.control.fd >= 0)]

    # ------------------------------------------------------------------ messages to workers

    def send(self, worker: WorkerProcess, message: object) -> None:
        if not worker.control.send(message):
            self._selector.register(worker.control.fd, selectors.EVENT_WRITE,
                                    lambda: self._flush_control(worker))

    def broadcast(self, message: object) -> None:
        """Send to every worker that is not draining."""
        for worker in self._workers.values():
            if not worker.draining:
                self.send(worker, message)

    def collect(self, done: Callable[[], None]) -> None:
        """Ask every worker for fresh statistics; ``done`` once they answered (or 1 s passed)."""
        workers = [w for w in self._workers.values() if w.status_fd >= 0 and w.control.fd >= 0]
        request = self._stats.collect([w.pid for w in workers], time.monotonic(), done)
        if request is not None:
            for worker in workers:
                self.send(worker, StatsRequest(request))

    def _flush_control(self, worker: WorkerProcess) -> None:
        if worker.control.flush():
            self._selector.unregister(worker.control.fd)

    # ------------------------------------------------------------------ generations

    def start(self, generation: Generation) -> None:
        """Fork every slot of a new generation; :attr:`WorkerHooks.ready` once all are ready."""
        self.starting = generation
        for slot in range(generation.prepared.config.global_.workers):
            self._spawn(slot, generation.number, generation.prepared)

    def members(self, number: int) -> list[WorkerProcess]:
        return [w for w in self._workers.values() if w.generation == number]

    def retire_older(self, number: int, kill_at: float) -> list[int]:
        """A generation became current: drain the older ones; the pids drained. Restarts
        planned for the old generation are dropped."""
        drained = []
        for worker in self._workers.values():
            if worker.generation < number and not worker.draining:
                self._drain(worker, kill_at)
                drained.append(worker.pid)
        self._restarts.clear()
        return drained

    def abandon(self, why: str) -> None:
        """Kill the generation being started and report it."""
        starting = self.starting
        if starting is None:
            return
        self.starting = None
        for worker in list(self._workers.values()):
            if worker.generation == starting.number:
                worker.draining = True
                kill(worker.pid, signal.SIGKILL)
        self._hooks.failed(why)

    def _check_generation(self) -> None:
        starting = self.starting
        if starting is None:
            return
        members = self.members(starting.number)
        if len(members) < starting.prepared.config.global_.workers or not all(
                w.ready for w in members):
            return
        self.starting = None
        self._hooks.ready(starting)

    # ------------------------------------------------------------------ stopping

    def stop(self, kill_at: float) -> None:
        """Drain every worker; SIGKILL what is left at ``kill_at``."""
        self._restarts.clear()
        self.starting = None
        for worker in self._workers.values():
            if not worker.draining:
                self._drain(worker, kill_at)

    def kill_all(self) -> None:
        for worker in self._workers.values():
            kill(worker.pid, signal.SIGKILL)

    def close(self) -> None:
        for worker in self._workers.values():
            os.close(worker.control.fd)

    def _drain(self, worker: WorkerProcess, kill_at: float) -> None:
        worker.draining = True
        worker.kill_at = kill_at
        kill(worker.pid, signal.SIGTERM)

    # ------------------------------------------------------------------ time

    def deadline(self) -> float | None:
        deadlines = list(self._restarts.values())
        deadlines += [w.kill_at for w in self._workers.values() if w.kill_at is not None]
        if self.starting is not None:
            deadlines.append(self.starting.deadline)
        return min(deadlines, default=None)

    def on_time(self, now: float) -> None:
        for slot, due in list(self._restarts.items()):
            if due <= now:
                del self._restarts[slot]
                self._spawn(slot, self._instance.generation, self._instance.prepared)
        for worker in self._workers.values():
            if worker.kill_at is not None and worker.kill_at <= now:
                worker.kill_at = None
                _log.warning("worker did not stop in time; killing it",
                             extra=fields(pid=worker.pid, slot=worker.slot))
                kill(worker.pid, signal.SIGKILL)
        if self.starting is not None and self.starting.deadline <= now:
            self.abandon("its workers did not become ready in time")

    # ------------------------------------------------------------------ status pipes

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
                self._hooks.stopped_accepting(worker.pid)
            elif isinstance(message, Offences):
                self._hooks.offences(message)

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

    # ------------------------------------------------------------------ processes

    def reap(self) -> None:
        for pid in list(self._workers):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                self._exited(self._workers.pop(pid), os.waitstatus_to_exitcode(status))

    def _exited(self, worker: WorkerProcess, code: int) -> None:
        self._forget_pipe(worker)
        self._stats.worker_gone(worker.pid)
        self._hooks.stopped_accepting(worker.pid)
        info = fields(event="worker_exit", pid=worker.pid, slot=worker.slot,
                      generation=worker.generation, exit_code=code)
        if worker.draining or self._instance.stopping:
            _log.info("worker exited", extra=info)
            return
        starting = self.starting
        if starting is not None and worker.generation == starting.number and not worker.ready:
            _log.error("worker exited while starting", extra=info)
            self.abandon(f"a new worker exited with status {code}")
            return
        failures, delay = restart_delay(time.monotonic() - worker.started,
                                        self._failures.get(worker.slot, 0))
        self._failures[worker.slot] = failures
        self.restarts += 1
        _log.warning("worker died; restarting it", extra={
            "fields": {**info["fields"], "restart_in_s": round(delay, 2)}})
        self._restarts[worker.slot] = time.monotonic() + delay

    def _spawn(self, slot: int, generation: int, prepared: Prepared) -> None:
        status_r, status_w = os.pipe()
        control_r, control_w = os.pipe()

        def become_worker() -> int:
            """In the child: shed the supervisor's state, then run the worker."""
            os.close(control_w)
            own = self._sockets.for_slot(slot)
            self._forker.shed(list(own.values()), [status_r])
            return run_worker(WorkerSpec(prepared, slot, generation, own, status_w,
                                         self._forker.lifeline, control_r), self._forker.logs)

        pid = self._forker.fork(become_worker)
        os.close(status_w)
        os.close(control_r)
        os.set_blocking(status_r, False)
        worker = WorkerProcess(pid, slot, generation, status_r, Outbox(control_w),
                               time.monotonic())
        self._workers[pid] = worker
        self._selector.register(status_r, selectors.EVENT_READ,
                                lambda: self._on_status(worker))
        for message in self._hooks.greeting():
            self.send(worker, message)
        _log.info("worker started", extra=fields(pid=pid, slot=slot, generation=generation))
