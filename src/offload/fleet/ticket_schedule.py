"""The fleet's session-ticket key set (sans-IO): when a new key is due, which keys still
decrypt, and how a set travels through Redis.

Theory of operation. The set is a list of keys, newest first, each with the wall-clock time
it was made. The newest encrypts every new ticket; every key younger than ``lifetime``
decrypts (so with the defaults, a new key every 12 h and a lifetime of 36 h, the last three
decrypt: a ticket stays usable for at least 24 h after it was issued). A key ``rotation``
seconds old or older makes the set *due*: the node that finds it due first takes a lock in
Redis, reads the set again, and only if it is still due writes the next set (a fresh random
key in front, retired keys dropped). Every node reads the set every few seconds and on a
publish/subscribe notice, and hands a changed set to its workers.

Keys are held only in memory and in Redis, never written to disk. A set read from Redis is
checked strictly (sizes, names unique, times sane): anything else is refused as a whole and
the node keeps the set it has.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

NAME_SIZE, AES_SIZE, HMAC_SIZE = 16, 32, 32
MAX_KEYS = 32
"""More keys than any schedule keeps (7 days / 1 s rotation is never configured): a longer
set read from Redis is refused."""
MAX_SET_SIZE = 16384
"""Bytes of an encoded set at most (32 keys take about 8 KiB)."""


@dataclass(frozen=True)
class TicketKey:
    """One key: its public 16-byte name (sent in every ticket), the AES-256-CBC key and the
    HMAC-SHA256 key, and when it was made (Unix time)."""

    name: bytes
    aes: bytes
    hmac: bytes
    created: float

    def __repr__(self) -> str:  # never print key material
        return f"TicketKey({self.name.hex()}, created={self.created:.0f})"

    @classmethod
    def fresh(cls, now: float, random: bytes | None = None) -> TicketKey:
        material = random if random is not None else os.urandom(NAME_SIZE + AES_SIZE + HMAC_SIZE)
        if len(material) != NAME_SIZE + AES_SIZE + HMAC_SIZE:
            raise ValueError("a ticket key needs 80 random bytes")
        return cls(material[:NAME_SIZE], material[NAME_SIZE:NAME_SIZE + AES_SIZE],
                   material[NAME_SIZE + AES_SIZE:], now)


@dataclass(frozen=True)
class KeySchedule:
    """``rotation``: a new key this often; ``lifetime``: a key decrypts this long."""

    rotation: float
    lifetime: float

    def __post_init__(self) -> None:
        if not 0 < self.rotation <= self.lifetime:
            raise ValueError("the rotation period must be above 0 and at most the lifetime")

    def valid(self, keys: tuple[TicketKey, ...], now: float) -> tuple[TicketKey, ...]:
        """The keys that still decrypt at ``now``, newest first."""
        return tuple(sorted((k for k in keys if now - k.created < self.lifetime),
                            key=lambda k: k.created, reverse=True))

    def due(self, keys: tuple[TicketKey, ...], now: float) -> bool:
        """Whether a new key must be made: none is valid, or the newest is ``rotation`` old."""
        valid = self.valid(keys, now)
        return not valid or now - valid[0].created >= self.rotation

    def next_set(self, keys: tuple[TicketKey, ...], now: float,
                 new: TicketKey) -> tuple[TicketKey, ...]:
        """The set after a rotation: ``new`` in front of the keys still valid."""
        return (new, *self.valid(keys, now))[:MAX_KEYS]

    def poll_interval(self) -> float:
        """How often a node reads the set: a quarter of the rotation, at most every 10 s (so
        a new set reaches every node within 60 s even without notices), at least 0.25 s."""
        return max(0.25, min(10.0, self.rotation / 4))


def encode_keys(keys: tuple[TicketKey, ...]) -> bytes:
    """The set as stored in Redis (JSON, hex)."""
    return json.dumps([{"name": k.name.hex(), "aes": k.aes.hex(), "hmac": k.hmac.hex(),
                        "created": k.created} for k in keys]).encode()


def decode_keys(data: bytes | None, now: float) -> tuple[TicketKey, ...] | None:
    """A set read from Redis; ``()`` for none stored, None if it is malformed (keep yours)."""
    if data is None:
        return ()
    if len(data) > MAX_SET_SIZE:
        return None
    try:
        items = json.loads(data)
        if not isinstance(items, list) or len(items) > MAX_KEYS:
            return None
        keys = []
        for item in items:
            key = TicketKey(bytes.fromhex(item["name"]), bytes.fromhex(item["aes"]),
                            bytes.fromhex(item["hmac"]), float(item["created"]))
            if (len(key.name), len(key.aes), len(key.hmac)) != (NAME_SIZE, AES_SIZE, HMAC_SIZE):
                return None
            if not 0 < key.created <= now + 300:  # a key from the future: a wrong clock
                return None
            keys.append(key)
    except (ValueError, TypeError, KeyError, OverflowError, RecursionError):
        return None
    if len({k.name for k in keys}) != len(keys):
        return None
    return tuple(keys)


def same_set(a: tuple[TicketKey, ...], b: tuple[TicketKey, ...]) -> bool:
    return [k.name for k in a] == [k.name for k in b]
