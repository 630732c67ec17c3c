"""What the supervisor's parts share: the instance's state, forking a clean child, restart
backoff, and the interface of a child-process component.

The supervisor's loop knows its parts only through these interfaces: every part has a
``deadline``/``on_time`` pair (:class:`Timed`), and a part that runs processes of its own beside
the workers (the ACME process today) is a :class:`ChildComponent`, which the loop also reaps on
SIGCHLD, syncs after a reload, stops on shutdown and waits for. A part that wants events on a
descriptor registers it on the supervisor's selector with a callback as the key's data; the loop
calls ``key.data()``.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from offload.observe.log import LogSetup
from offload.server.prepare import Prepared
from offload.server.sockets import SocketSet

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
"""The signals the supervisor handles (a child puts them back to their defaults)."""
KILL_GRACE = 5.0
"""Seconds between SIGTERM (after the drain timeout, for workers) and SIGKILL."""
BACKOFF_FIRST, BACKOFF_MAX, STABLE_AFTER = 0.1, 10.0, 30.0


@dataclass
class Instance:
    """The supervisor's state that its parts read; only the supervisor changes it."""

    prepared: Prepared
    """The running configuration (the one being started is not current until it is ready)."""
    generation: int = 0
    started: bool = False
    """The first generation became ready."""
    stopping: bool = False
    exit_code: int = 0
    reloads: dict[str, int] = field(default_factory=lambda: {"success": 0, "failure": 0})


class Timed(Protocol):
    """A part with deadlines of its own (the loop sleeps until the earliest one)."""

    def deadline(self) -> float | None:
        """The next ``time.monotonic()`` moment ``on_time`` has something to do; None: none."""

    def on_time(self, now: float) -> None:
        """Do what is due at ``now``."""


class ChildComponent(Timed, Protocol):
    """A part that runs a child process beside the workers (the ACME process, for example).

    It forks through the :class:`Forker` it is given (so the child sheds what belongs to the
    supervisor), registers any pipes of its own on the supervisor's selector, and answers the
    loop's calls below. The supervisor keeps running until no child component is ``running``.
    """

    @property
    def running(self) -> bool:
        """A process of this part has not been reaped yet."""

    def fds(self) -> list[int]:
        """The descriptors this part holds (a sibling child process closes them)."""

    def reap(self) -> None:
        """SIGCHLD arrived: collect this part's exited processes (``os.waitpid`` by pid)."""

    def sync(self) -> None:
        """A new generation became current: follow its configuration."""

    def stop(self) -> None:
        """offload is stopping: end this part's processes (SIGTERM, later SIGKILL)."""


def kill(pid: int, signum: int) -> None:
    """Signal a child that may have exited already."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def restart_delay(lived: float, failures: int) -> tuple[int, float]:
    """The failures in a row after a child that lived ``lived`` seconds died, and the seconds
    to wait before starting it again (0.1 s doubling to 10 s; reset after 30 s of life)."""
    failures = 0 if lived >= STABLE_AFTER else failures + 1
    return failures, min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, failures - 1))


class Forker:
    """Forks children that keep nothing of the supervisor but what they are given.

    ``held`` names every descriptor the supervisor's parts hold at the moment of the fork; a
    child closes all of them, every listening socket but its own, and the selector.
    """

    def __init__(self, sockets: SocketSet, selector: selectors.BaseSelector, logs: LogSetup,
                 held: Callable[[], Iterable[int]]) -> None:
        self._sockets = sockets
        self._selector = selector
        self.logs = logs
        self._held = held
        self.lifeline = self._lifeline_w = -1
        """The read end every child holds: EOF there means the supervisor died."""

    def open_lifeline(self) -> None:
        self.lifeline, self._lifeline_w = os.pipe()
        os.set_inheritable(self.lifeline, False)

    def fds(self) -> list[int]:
        return [fd for fd in (self.lifeline, self._lifeline_w) if fd >= 0]

    def close(self) -> None:
        for fd in self.fds():
            os.close(fd)
        self.lifeline = self._lifeline_w = -1

    def fork(self, body: Callable[[], int]) -> int:
        """Fork; the child runs ``body`` (which sheds first) and exits with what it returns
        (70 if it raises). The parent gets the child's pid."""
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                code = body()
            except BaseException:  # a child must never return into the supervisor
                traceback.print_exc(file=sys.stderr)
            finally:
                os._exit(code)
        return pid

    def shed(self, keep: Sequence[socket.socket] = (), fds: Sequence[int] = ()) -> None:
        """In a child: default signal handling, and close what belongs to the supervisor."""
        signal.set_wakeup_fd(-1)
        for signum in SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        for sock in self._sockets.all():
            if all(sock is not mine for mine in keep):
                sock.close()
        for fd in [*fds, self._lifeline_w, *self._held()]:
            if fd >= 0:
                os.close(fd)
        self._selector.close()
