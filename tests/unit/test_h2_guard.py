"""The HTTP/2 flood budgets, fed raw frames the way an attacker would send them."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offload.config.units import EventRate
from offload.proto.h2_guard import (
    CONTINUATION,
    DATA,
    END_STREAM,
    HEADERS,
    PING,
    PREFACE,
    PRIORITY,
    SETTINGS,
    WINDOW_UPDATE,
    FloodLimits,
    FrameGuard,
)

LIMITS = FloodLimits(max_continuations=3, settings=EventRate(1.0, 5.0),
                     pings=EventRate(1.0, 5.0), priority=EventRate(1.0, 5.0),
                     other_frames=EventRate(1.0, 5.0), max_empty_frames=3,
                     early_resets=EventRate(1.0, 10.0))


def frame(kind: int, flags: int = 0, stream: int = 1, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(
        ">I", stream) + payload


def feed_all(guard: FrameGuard, data: bytes, *, split: int = 0, now: float = 0.0) -> str | None:
    if not split:
        return guard.feed(data, now)
    for start in range(0, len(data), split):
        verdict = guard.feed(data[start:start + split], now)
        if verdict is not None:
            return verdict
    return None


@pytest.mark.parametrize("split", [0, 1, 7, 13])
def test_an_ordinary_connection_stays_within_every_budget(split):
    guard = FrameGuard(LIMITS)
    traffic = (PREFACE + frame(SETTINGS, stream=0, payload=b"\x00\x03\x00\x00\x00\x64")
               + frame(WINDOW_UPDATE, stream=0, payload=b"\x00\x0f\x00\x01")
               + frame(HEADERS, 0x4, 1, b"x" * 40) + frame(SETTINGS, 0x1, 0)
               + frame(HEADERS, 0x0, 3, b"y" * 40) + frame(CONTINUATION, 0, 3, b"z" * 10)
               + frame(CONTINUATION, 0x4, 3, b"z" * 10)
               + frame(DATA, END_STREAM, 3, b"body") + frame(PING, 0x1, 0, b"\0" * 8))
    assert feed_all(guard, traffic, split=split) is None


@pytest.mark.parametrize("split", [0, 1, 5])
def test_an_endless_header_block_is_stopped(split):
    guard = FrameGuard(LIMITS)
    flood = PREFACE + frame(HEADERS, 0, 1, b"h" * 20) + frame(CONTINUATION, 0, 1, b"c") * 100
    assert feed_all(guard, flood, split=split) == "continuation_frames"


def test_the_continuation_count_restarts_with_each_header_block():
    guard = FrameGuard(LIMITS)
    block = frame(HEADERS, 0, 1, b"h") + frame(CONTINUATION, 0, 1, b"c") * 3
    assert guard.feed(PREFACE + block * 20, 0.0) is None


@pytest.mark.parametrize(("kind", "flags", "reason"), [
    (SETTINGS, 0, "settings_frames"), (PING, 0, "ping_frames"),
    (PRIORITY, 0, "priority_frames"), (0x42, 0, "unknown_frames"),
])
def test_a_flood_of_frames_that_cost_a_reply_is_stopped(kind, flags, reason):
    guard = FrameGuard(LIMITS)
    one = frame(kind, flags, 0 if kind in (SETTINGS, PING) else 1, b"\0" * 8)
    assert guard.feed(PREFACE + one * 5, 0.0) is None, "the burst is allowed"
    assert guard.feed(one, 0.0) == reason
    later = FrameGuard(LIMITS)
    for second in range(60):  # one a second is fine forever
        assert later.feed((PREFACE if second == 0 else b"") + one, float(second)) is None


def test_acks_cost_nothing():
    guard = FrameGuard(LIMITS)
    assert guard.feed(PREFACE + frame(SETTINGS, 0x1, 0) * 100 + frame(PING, 0x1, 0, b"\0" * 8)
                      * 100, 0.0) is None


def test_empty_data_frames_in_a_row_are_stopped_but_not_ones_between_real_data():
    guard = FrameGuard(LIMITS)
    empty = frame(DATA, 0, 1)
    assert guard.feed(PREFACE + (empty * 3 + frame(DATA, 0, 1, b"x")) * 50, 0.0) is None
    assert guard.feed(empty * 4, 0.0) == "empty_frames"
    assert FrameGuard(LIMITS).feed(PREFACE + frame(DATA, END_STREAM, 1) * 50, 0.0) is None


def test_window_updates_are_allowed_in_proportion_to_the_body_sent():
    guard = FrameGuard(LIMITS)
    update = frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x01")
    assert guard.feed(PREFACE + update * 100, 0.0) is None
    assert guard.feed(update, 0.0) == "window_updates"
    served = FrameGuard(LIMITS)
    served.sent_data(10 * 1024 * 1024)  # ten MiB of body: a client opens windows as it reads
    assert served.feed(PREFACE + update * 5000, 0.0) is None


def test_many_small_responses_earn_their_window_updates_too():
    """One KiB of body earns one WINDOW_UPDATE however it was sent: counted per call and
    rounded down, 4096 responses of 512 bytes (2 MiB) earned nothing, and a client opening a
    window per response was cut off as a flood after 100."""
    guard = FrameGuard(LIMITS)
    for _ in range(4096):
        guard.sent_data(512)
    update = frame(WINDOW_UPDATE, 0, 1, b"\x00\x00\x02\x00")
    assert guard.feed(PREFACE + update * 2000, 0.0) is None


def test_resets_from_either_side_share_one_budget():
    guard = FrameGuard(LIMITS)
    verdicts = [guard.stream_reset(0.0) for _ in range(10)]
    assert verdicts == [None] * 10
    assert guard.stream_reset(0.0) == "early_resets"
    assert guard.stream_reset(2.5) is None  # refilled at one a second


@given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 255), st.binary(max_size=30)),
                max_size=40), st.integers(1, 40))
def test_any_frames_any_split_never_raise(frames, split):
    guard = FrameGuard(FloodLimits())
    data = PREFACE + b"".join(frame(kind, flags, 1, payload) for kind, flags, payload in frames)
    verdict = feed_all(guard, data, split=split)
    assert verdict is None or isinstance(verdict, str)
