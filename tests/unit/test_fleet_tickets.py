"""The fleet's ticket key schedule on an injected clock: when a key is due, which keys decrypt,
and how a set read from Redis is checked."""

from __future__ import annotations

import pytest

from offload.fleet.ticket_schedule import (
    KeySchedule,
    TicketKey,
    decode_keys,
    encode_keys,
    same_set,
)

HOUR = 3600.0
SCHEDULE = KeySchedule(rotation=12 * HOUR, lifetime=36 * HOUR)


def key(created: float) -> TicketKey:
    return TicketKey.fresh(created)


def test_first_key_is_due_at_once_then_every_rotation() -> None:
    assert SCHEDULE.due((), 1000.0)
    first = (key(1000.0),)
    assert not SCHEDULE.due(first, 1000.0 + 12 * HOUR - 1)
    assert SCHEDULE.due(first, 1000.0 + 12 * HOUR)


def test_three_keys_decrypt_and_the_fourth_is_retired() -> None:
    now, keys = 0.0, ()
    for step in range(5):
        now = step * 12 * HOUR + 1
        keys = SCHEDULE.next_set(keys, now, key(now))
    assert len(keys) == 3, "rotation every 12 h with a 36 h lifetime keeps three"
    assert [k.created for k in keys] == sorted((k.created for k in keys), reverse=True)
    assert SCHEDULE.valid(keys, now + 24 * HOUR) == keys[:1]
    assert SCHEDULE.valid(keys, now + 36 * HOUR) == ()
    assert SCHEDULE.due(keys, now + 36 * HOUR)


def test_set_round_trips_and_bad_sets_are_refused_whole() -> None:
    keys = (key(2000.0), key(1000.0))
    decoded = decode_keys(encode_keys(keys), 3000.0)
    assert decoded == keys and same_set(decoded, keys)
    assert decode_keys(None, 0.0) == ()
    for bad in [b"{", b"{}", b'[{"name": "00"}]',
                encode_keys((TicketKey(b"n" * 15, b"a" * 32, b"h" * 32, 1.0),)),
                encode_keys((keys[0], TicketKey(keys[0].name, b"a" * 32, b"h" * 32, 2.0))),
                encode_keys((key(10_000.0),)),  # made in the future
                encode_keys(tuple(key(float(i + 1)) for i in range(33)))]:
        assert decode_keys(bad, 3000.0) is None, bad


def test_key_material_never_printed_and_schedule_checked() -> None:
    material = bytes(range(80))
    text = repr(TicketKey.fresh(5.0, material))
    assert material[16:48].hex() not in text and material[48:].hex() not in text
    with pytest.raises(ValueError, match="at most the lifetime"):
        KeySchedule(rotation=10.0, lifetime=5.0)
    assert KeySchedule(3.0, 9.0).poll_interval() == 0.75
    assert SCHEDULE.poll_interval() == 10.0  # a new set reaches every node within 60 s


def test_hostile_sets_are_refused_without_raising() -> None:
    """Whatever someone with write access to Redis puts there: refused, never raised."""
    for bad in [b'[{"name": "00", "aes": "00", "hmac": "00", "created": 1e999}]',
                b'[{"name": "00", "aes": "00", "hmac": "00", "created": ' + b"9" * 400 + b"}]",
                b"[" * 100_000, b'[1, "x", null]', b"[" + b" " * 20_000 + b"]",
                b"\xff\xfe"]:
        assert decode_keys(bad, 3000.0) is None, bad[:40]
