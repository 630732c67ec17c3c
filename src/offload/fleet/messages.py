"""Messages between the supervisor and its fleet process (framed and pickled like the worker
control pipe, :mod:`offload.server.control`), and the one the supervisor sends workers."""

from __future__ import annotations

from dataclasses import dataclass, field

from offload.fleet.ban_sync import FleetBan
from offload.fleet.ticket_schedule import TicketKey
from offload.security.bans import BanEvent


@dataclass(frozen=True)
class TicketKeys:
    """The fleet's ticket keys, newest first (fleet process → supervisor → every worker)."""

    keys: tuple[TicketKey, ...] = field(repr=False)


@dataclass(frozen=True)
class FleetOffences:
    """Offences the node's workers reported: (client address, event, count)."""

    reports: tuple[tuple[str, BanEvent, int], ...]


@dataclass(frozen=True)
class FleetBanned:
    """Bans the node's own jail decided: to push to the fleet."""

    bans: tuple[FleetBan, ...]


@dataclass(frozen=True)
class FleetUnban:
    """An operator lifted a ban through this node's admin API: lift it on every node."""

    client: str
    who: str


@dataclass(frozen=True)
class FleetBans:
    """Bans from the fleet: announced ones (``full=False``), or every ban it lists."""

    added: tuple[FleetBan, ...] = ()
    removed: tuple[str, ...] = ()
    full: bool = False


@dataclass(frozen=True)
class FleetStatus:
    """What the fleet process knows, sent about once a second for /api/fleet and metrics."""

    node: str
    name: str
    store_up: bool
    round_trips: dict[str, int]
    failures: int
    outages: int
    latency_ms: float | None
    last_error: str | None
    nodes: tuple[dict[str, object], ...]
    ticket_keys: int
    ticket_key_age: float | None
    ticket_sharing: str
    """"on", "off" or why it cannot be on."""
    rotations: int
    """New key sets this node made."""
    key_sets_seen: int
    """Key sets handed to the workers."""
    config_hash: str
