"""offload's own limits on what an HTTP/2 client may make the server do (sans-IO).

An HTTP/2 library enforces the protocol; it does not stop a client that stays within the
protocol while costing the server far more than itself (DESIGN.md: a protocol library is never
the denial-of-service defence). :class:`FrameGuard` reads the 9-byte header of every frame the
client sends, before the engine parses it, and keeps budgets the engine does not have:

    frames                        budget (each counted in metrics when it fires)
    CONTINUATION                  at most ``max_continuations`` per header block
                                  (CVE-2024-27316 class: endless header blocks)
    SETTINGS, PING (not ACKs)     token buckets: a flood of frames that each force a reply
    PRIORITY                      a token bucket (ignored by the engines, still parsed)
    WINDOW_UPDATE                 at most 100 plus one per KiB of body sent: a window opened
                                  by increments of one byte costs a frame per byte
    DATA, empty, not ending       at most ``max_empty_frames`` in a row
    other (unknown types)         a token bucket
    streams ended early           a token bucket fed by resets from *both* sides
                                  (:meth:`stream_reset`): Rapid Reset (CVE-2023-44487) is the
                                  client's RST_STREAM, MadeYouReset (CVE-2025-8671) makes the
                                  server reset; both are caught by counting both

When a budget runs out, the connection is ended with GOAWAY ENHANCE_YOUR_CALM (the caller's
job); :meth:`feed` and :meth:`stream_reset` return the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from offload.config.units import EventRate
from offload.security.buckets import TokenBucket

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4


_TEN_A_SECOND = EventRate(10.0, 50.0)
_HUNDRED_A_SECOND = EventRate(100.0, 1000.0)
_EARLY_RESETS = EventRate(50.0, 200.0)


@dataclass(frozen=True, slots=True)
class FloodLimits:
    """The budgets (module docstring), with defaults no ordinary client comes near."""

    max_continuations: int = 8
    settings: EventRate = _TEN_A_SECOND
    pings: EventRate = _TEN_A_SECOND
    priority: EventRate = _HUNDRED_A_SECOND
    other_frames: EventRate = _HUNDRED_A_SECOND
    max_empty_frames: int = 20
    early_resets: EventRate = _EARLY_RESETS
    """Streams ended early, by either side (each RST_STREAM)."""


class FrameGuard:
    """One client connection's budgets; :meth:`feed` every byte the client sends."""

    __slots__ = ("_continuations", "_empty", "_header", "_limits", "_need_preface", "_other",
                 "_pings", "_priority", "_resets", "_sent", "_settings", "_skip", "_window_updates",
                 "_wu_allowance")

    def __init__(self, limits: FloodLimits) -> None:
        self._limits = limits
        self._need_preface = len(PREFACE)
        self._header = b""
        self._skip = 0
        self._continuations = 0
        self._empty = 0
        self._settings = TokenBucket(limits.settings.per_second, limits.settings.burst)
        self._pings = TokenBucket(limits.pings.per_second, limits.pings.burst)
        self._priority = TokenBucket(limits.priority.per_second, limits.priority.burst)
        self._other = TokenBucket(limits.other_frames.per_second, limits.other_frames.burst)
        self._resets = TokenBucket(limits.early_resets.per_second, limits.early_resets.burst)
        self._window_updates = 0
        self._sent = 0
        self._wu_allowance = 100

    def sent_data(self, size: int) -> None:
        """``size`` bytes of response body went to the client: it may open windows for them
        (counted in bytes, so that many small responses earn their allowance too)."""
        self._sent += size
        self._wu_allowance = 100 + (self._sent >> 10)

    def stream_reset(self, now: float) -> str | None:
        """A stream ended early (RST_STREAM from either side); the reason if over budget."""
        if not self._resets.take(now):
            return "early_resets"
        return None

    def feed(self, data: bytes, now: float) -> str | None:
        """Account for the frames in ``data`` (any split); the budget exceeded, if any."""
        view = memoryview(data)
        position = 0
        size = len(data)
        if self._need_preface:
            taken = min(self._need_preface, size)
            self._need_preface -= taken
            position = taken
        while position < size:
            if self._skip:
                step = min(self._skip, size - position)
                self._skip -= step
                position += step
                continue
            want = 9 - len(self._header)
            piece = bytes(view[position:position + want])
            position += len(piece)
            header = self._header + piece
            if len(header) < 9:
                self._header = header
                break
            self._header = b""
            length = int.from_bytes(header[0:3])
            verdict = self._frame(header[3], header[4], length, now)
            if verdict is not None:
                return verdict
            self._skip = length
        return None

    def _frame(self, kind: int, flags: int, length: int, now: float) -> str | None:
        limits = self._limits
        if kind == DATA:
            if length == 0 and not flags & END_STREAM:
                self._empty += 1
                if self._empty > limits.max_empty_frames:
                    return "empty_frames"
            else:
                self._empty = 0
            return None
        if kind == HEADERS:
            self._continuations = 0
            return None
        if kind == CONTINUATION:
            self._continuations += 1
            if self._continuations > limits.max_continuations:
                return "continuation_frames"
            return None
        if kind == WINDOW_UPDATE:
            self._window_updates += 1
            if self._window_updates > self._wu_allowance:
                return "window_updates"
            return None
        if kind == SETTINGS:
            if not flags & ACK and not self._settings.take(now):
                return "settings_frames"
            return None
        if kind == PING:
            if not flags & ACK and not self._pings.take(now):
                return "ping_frames"
            return None
        if kind == PRIORITY:
            if not self._priority.take(now):
                return "priority_frames"
            return None
        if kind in (RST_STREAM, GOAWAY, PUSH_PROMISE):
            return None  # resets are counted with the engine's events; the others end things
        if not self._other.take(now):
            return "unknown_frames"
        return None
