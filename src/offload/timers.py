"""Timers for the data path that cost almost nothing per byte moved.

Resetting an event-loop timer on every read would cost a heap operation per chunk; instead the
connection records when it was last active and the timer, when it fires, re-arms itself for the
remaining time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """The one clock of the request path: an event loop's, or a test's that moves by hand."""

    def time(self) -> float:
        """Now, for deadlines (the event loop's clock)."""

    def call_at(self, when: float, callback: Callable[[], object]) -> Cancellable:
        """Call ``callback`` once ``time()`` reaches ``when``."""

    def precise(self) -> float:
        """Now, for durations that are reported (a loop's time may be cached per turn)."""


class LoopClock:
    """:class:`Clock` of an asyncio event loop (one per worker).

    The loop's methods are looked up once: a request reads the clock about ten times, and a
    method call on the loop object costs a type look-up each time."""

    __slots__ = ("_call_at", "_monotonic", "_time")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._time: Callable[[], float] = loop.time
        self._call_at: Callable[[float, Callable[[], object]], asyncio.TimerHandle] = \
            loop.call_at
        self._monotonic: Callable[[], float] = time.monotonic

    def time(self) -> float:
        return self._time()

    def call_at(self, when: float, callback: Callable[[], object]) -> Cancellable:
        return self._call_at(when, callback)

    def precise(self) -> float:
        return self._monotonic()


class IdleTimer:
    """Calls ``on_idle`` once no ``touch()`` happened for ``timeout`` seconds."""

    __slots__ = ("_callback", "_handle", "_loop", "_timeout", "last")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float,
                 on_idle: Callable[[], None]) -> None:
        self._loop = loop
        self._timeout = timeout
        self._callback = on_idle
        self.last = loop.time()
        self._handle: asyncio.TimerHandle | None = loop.call_at(self.last + timeout, self._check)

    def touch(self) -> None:
        """Record activity now."""
        self.last = self._loop.time()

    def _check(self) -> None:
        due = self.last + self._timeout
        if self._loop.time() >= due:
            self._handle = None
            self._callback()
        else:
            self._handle = self._loop.call_at(due, self._check)

    def cancel(self) -> None:
        """Stop the timer for good."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class Deadline:
    """One moving deadline per connection: ``set(when)`` is cheap when the deadline moves later
    (the armed timer re-arms itself when it fires early) and re-arms only when it moves earlier.
    """

    __slots__ = ("_armed_at", "_callback", "_handle", "_loop", "when")

    def __init__(self, loop: asyncio.AbstractEventLoop | Clock,
                 on_expiry: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = on_expiry
        self._handle: Cancellable | None = None
        self._armed_at = 0.0
        self.when: float | None = None

    def set(self, when: float) -> None:
        """Expire at ``when`` (loop time) unless set again or cleared first."""
        self.when = when
        if self._handle is None or when < self._armed_at:
            if self._handle is not None:
                self._handle.cancel()
            self._armed_at = when
            self._handle = self._loop.call_at(when, self._fire)

    def clear(self) -> None:
        """No deadline for now (the armed timer, if any, finds nothing to do)."""
        self.when = None

    def cancel(self) -> None:
        """Stop for good."""
        self.when = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        when = self.when
        if when is None:
            return
        if self._loop.time() >= when:
            self.when = None
            self._callback()
        else:
            self._armed_at = when
            self._handle = self._loop.call_at(when, self._fire)
