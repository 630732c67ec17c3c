"""The fleet's node registry (sans-IO): what each node says about itself in its heartbeat, and
the view of the fleet built from them.

Every node writes a :class:`NodeBeat` into one Redis hash every few seconds. A node is *seen*
while its last beat is under a minute old. The configuration hash tells operators that a node
runs something else than the rest (a reload missed, a host set up by hand): the hash most
nodes share is the reference (on a tie, this node's), and a node with another is flagged.
Records come from Redis, so they are parsed defensively: a malformed one is skipped.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass

SEEN_FOR = 60.0
"""A node counts as present while its last heartbeat is younger than this."""
FORGET_AFTER = 86400.0
"""Records older than this are deleted from the registry by whichever node reads them."""
MAX_NODES = 1024


@dataclass(frozen=True)
class NodeBeat:
    """One node's heartbeat."""

    node: str
    version: str
    config_hash: str
    pid: int
    seen: float
    """Unix time of the beat."""
    ticket_key_age: float | None
    """Seconds since the newest ticket key the node uses was made (None: no fleet keys)."""
    latency_ms: float | None
    """The node's smoothed Redis round-trip time."""
    store_failures: int = 0

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()


MAX_BEAT_SIZE = 2048
"""Bytes a heartbeat may take (a real one is about 250)."""


def decode_beat(data: bytes) -> NodeBeat | None:
    """A heartbeat from Redis, or None when it is malformed (too long, not JSON of the
    expected shape, a time or a latency that is not a finite number). Never raises."""
    if len(data) > MAX_BEAT_SIZE:
        return None
    try:
        raw = json.loads(data)
        beat = NodeBeat(
            node=str(raw["node"])[:128], version=str(raw["version"])[:64],
            config_hash=str(raw["config_hash"])[:64], pid=int(raw["pid"]),
            seen=float(raw["seen"]),
            ticket_key_age=None if raw.get("ticket_key_age") is None
            else float(raw["ticket_key_age"]),
            latency_ms=None if raw.get("latency_ms") is None else float(raw["latency_ms"]),
            store_failures=int(raw.get("store_failures", 0)))
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError):
        return None
    numbers = (beat.seen, beat.ticket_key_age, beat.latency_ms)
    if not all(n is None or math.isfinite(n) for n in numbers):
        return None  # Infinity would keep a node "seen" forever and break /api/fleet's JSON
    return beat


@dataclass(frozen=True)
class NodeView:
    """A node as /api/fleet shows it."""

    node: str
    version: str
    config_hash: str
    age: float
    """Seconds since its last heartbeat."""
    ticket_key_age: float | None
    latency_ms: float | None
    store_failures: int
    config_differs: bool
    this_node: bool


def fleet_view(beats: list[NodeBeat], now: float, me: str) -> list[NodeView]:
    """The nodes seen in the last minute, by name, with the odd configuration flagged."""
    present = [b for b in beats if now - b.seen < SEEN_FOR][:MAX_NODES]
    counts = Counter(b.config_hash for b in present)
    mine = next((b.config_hash for b in present if b.node == me), None)
    reference = None
    if counts:
        top = max(counts.values())
        leaders = sorted(h for h, n in counts.items() if n == top)
        reference = mine if mine in leaders else leaders[0]
    return [NodeView(b.node, b.version, b.config_hash, max(0.0, now - b.seen),
                     b.ticket_key_age, b.latency_ms, b.store_failures,
                     b.config_hash != reference, b.node == me)
            for b in sorted(present, key=lambda b: b.node)]


def stale(beats: list[NodeBeat], now: float) -> list[str]:
    """Nodes to delete from the registry (silent for a day, or a day in the future)."""
    return [b.node for b in beats if abs(now - b.seen) >= FORGET_AFTER]


def config_hash(canonical: str) -> str:
    """A short hash of the configuration's canonical text (the node's own name left out by
    the caller): equal configurations, equal hashes."""
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
