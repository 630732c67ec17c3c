"""How long a request body may take: a minimum average rate, with a bounded allowance.

A slow-body attacker (R-U-Dead-Yet, ``slowhttptest -B``) announces a large body and sends a
few bytes every few seconds, which resets any timeout "between two reads" (nginx's
``client_body_timeout``) for ever. Apache's mod_reqtimeout answers with a minimum rate: every
``MinRate`` bytes received buy one more second. That credit is unbounded, though: a client
that sent a megabyte quickly may then trickle for hours. Here the credit is capped.

Theory of operation. The body has a deadline. It starts at ``window`` seconds after the head;
every ``n`` bytes move it ``n / rate`` seconds later, but never more than ``window`` seconds
past the present. So a client must keep up ``rate`` bytes per second on average, may fall
behind by at most ``window`` seconds, and a stall of ``window`` ends the body whatever came
before. Without a minimum rate (``rate`` 0) each byte resets the deadline to ``window`` after
it: the plain idle timeout. While offload itself stops reading (the backend is slow to take
the bytes, a connection is being opened), the clock stops: the credit left is kept and the
deadline resumes from it.

Nothing here reads a clock: ``now`` is passed in (loop time, seconds).
"""

from __future__ import annotations

from typing import Literal

PaceCause = Literal["body_timeout", "min_body_rate"]


class BodyPace:
    """The deadline of one request body at a time (one object per client connection)."""

    __slots__ = ("_credit", "_last", "deadline", "paused", "rate", "window")

    def __init__(self, rate: float, window: float) -> None:
        if rate < 0 or not window > 0:
            raise ValueError(f"need a rate of at least 0 and a window above 0, "
                             f"not {rate} and {window}")
        self.rate = rate
        self.window = window
        self.deadline = 0.0
        self.paused = False
        self._credit = 0.0
        self._last = 0.0

    def start(self, now: float) -> float:
        """A body begins (its head has just arrived); returns the deadline."""
        self.paused = False
        self._last = now
        self.deadline = now + self.window
        return self.deadline

    def received(self, size: int, now: float) -> float:
        """``size`` body bytes arrived; returns the new deadline (never earlier)."""
        self._last = now
        if self.paused:
            return self.deadline
        ceiling = now + self.window
        if self.rate > 0:
            moved = self.deadline + size / self.rate
            self.deadline = max(self.deadline, moved if moved < ceiling else ceiling)
        else:
            self.deadline = max(self.deadline, ceiling)
        return self.deadline

    def pause(self, now: float) -> None:
        """offload stopped reading: the clock stops, with the credit left kept."""
        if not self.paused:
            self.paused = True
            self._credit = max(0.0, self.deadline - now)

    def resume(self, now: float) -> float:
        """offload reads again; returns the deadline, as far off as it was when paused."""
        if self.paused:
            self.paused = False
            stalled = self.deadline - self._credit - self._last  # silence before the pause
            self._last = now - max(0.0, stalled)
            self.deadline = now + self._credit
        return self.deadline

    def cause(self, now: float) -> PaceCause:
        """Why the deadline passed: a stall of a whole window, or too slow a trickle."""
        return "body_timeout" if now - self._last >= self.window else "min_body_rate"


__all__ = ["BodyPace", "PaceCause"]
