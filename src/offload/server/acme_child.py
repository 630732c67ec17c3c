"""The supervisor's side of the ACME process: fork it when ``[acme]`` is configured, restart it
with a backoff when it dies, replace it when the section changes, stop it with the instance.

A :class:`~offload.server.children.ChildComponent`; the process's own body is
:func:`offload.server.acme_process.run_acme_process`.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from offload.config.model import AcmeConfig, FleetConfig
from offload.observe.log import fields
from offload.server.acme_process import run_acme_process
from offload.server.children import KILL_GRACE, Forker, Instance, kill, restart_delay
from offload.server.worker import account_ids

_log = logging.getLogger("offload.supervisor")


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


def hand_over(directory: Path, user: str | None, group: str | None) -> None:
    """Give the ACME storage to the account the children run as (they write there)."""
    if os.geteuid() != 0 or (user is None and group is None):
        return
    uid, gid = account_ids(user, group)
    for path in [directory, *(p for p in directory.rglob("*") if p.is_dir())]:
        os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)


class AcmeComponent:
    """At most one ACME process for the current configuration, and retired ones exiting."""

    def __init__(self, instance: Instance, forker: Forker) -> None:
        self._instance = instance
        self._forker = forker
        self._acme = AcmeChild()
        self._retired: list[AcmeChild] = []
        """ACME processes told to stop that have not exited yet."""

    @property
    def running(self) -> bool:
        return self._acme.pid is not None or bool(self._retired)

    def fds(self) -> list[int]:
        return []  # the ACME process has no pipe to the supervisor

    def sync(self) -> None:
        """Run an ACME process for the current ``[acme]`` section (a new one when it, or the
        ``[fleet]`` and secret of a shared store, changed)."""
        prepared = self._instance.prepared
        wanted = prepared.config.acme
        shared = ((prepared.config.fleet, prepared.acme_secret)
                  if wanted is not None and wanted.shared else (None, None))
        running = self._acme.pid is not None or self._acme.restart_at is not None
        if running and self._acme.config == wanted and self._acme.shared == shared:
            return
        self.stop()
        self._acme = AcmeChild(config=wanted, shared=shared)
        if wanted is not None:
            self._spawn()

    def stop(self) -> None:
        child = self._acme
        if child.pid is not None:
            kill(child.pid, signal.SIGTERM)
            child.kill_at = time.monotonic() + KILL_GRACE
            self._retired.append(child)
        self._acme = AcmeChild()

    def _spawn(self) -> None:
        prepared = self._instance.prepared
        storage = prepared.acme_storage
        if storage is None:
            return
        try:
            storage.create()
            hand_over(storage.root, prepared.config.global_.user, prepared.config.global_.group)
        except OSError as error:
            _log.error("ACME is off: cannot create its storage directory",
                       extra=fields(directory=str(storage.root), reason=error.strerror))
            return

        def become_acme() -> int:
            """In the ACME child: shed the supervisor's state, then keep certificates issued."""
            self._forker.shed()
            return run_acme_process(prepared, self._forker.logs, self._forker.lifeline)

        pid = self._forker.fork(become_acme)
        self._acme.pid = pid
        self._acme.started = time.monotonic()
        self._acme.restart_at = None
        _log.info("ACME process started", extra=fields(pid=pid))

    def reap(self) -> None:
        for child in [self._acme, *self._retired]:
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
            if child is not self._acme or self._instance.stopping:
                _log.info("ACME process exited", extra=fields(pid=pid, exit_code=code))
                continue
            child.failures, delay = restart_delay(time.monotonic() - child.started,
                                                  child.failures)
            _log.warning("ACME process died; restarting it", extra=fields(
                pid=pid, exit_code=code, restart_in_s=round(delay, 2)))
            child.restart_at = time.monotonic() + delay
        self._retired = [c for c in self._retired if c.pid is not None]

    def deadline(self) -> float | None:
        children = [self._acme, *self._retired]
        return min([c.kill_at for c in children if c.kill_at is not None]
                   + [c.restart_at for c in children if c.restart_at is not None], default=None)

    def on_time(self, now: float) -> None:
        for child in [self._acme, *self._retired]:
            if child.kill_at is not None and child.kill_at <= now and child.pid is not None:
                child.kill_at = None
                kill(child.pid, signal.SIGKILL)
        if self._acme.restart_at is not None and self._acme.restart_at <= now:
            self._acme.restart_at = None
            if not self._instance.stopping:
                self._spawn()
