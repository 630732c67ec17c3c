"""The fleet process's work, on its own asyncio loop: heartbeats, the ticket key set, fleet
bans and the subscription that carries announcements, each a small loop that never stops on a
Redis failure (the link answers "unavailable" and the loop tries again on its next turn).

What it learns goes to the supervisor through ``send`` (ticket keys, bans, status); what the
supervisor tells it arrives through :meth:`FleetAgent.receive`. Nothing here is on a
request path: workers never wait for this process.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from offload.config.model import BansConfig
from offload.fleet import store
from offload.fleet.ban_sync import MAX_FLEET_BANS, FleetBan, decode_ban, overlong
from offload.fleet.link import UNAVAILABLE, FleetLink
from offload.fleet.messages import (
    FleetBanned,
    FleetBans,
    FleetOffences,
    FleetStatus,
    FleetUnban,
    TicketKeys,
)
from offload.fleet.registry import NodeBeat, decode_beat, fleet_view, stale
from offload.fleet.ticket_schedule import (
    MAX_SET_SIZE,
    KeySchedule,
    TicketKey,
    decode_keys,
    encode_keys,
    same_set,
)
from offload.security.bans import BanEvent

_log = logging.getLogger("offload.fleet")

HEARTBEAT_INTERVAL = 5.0
BAN_PULL_INTERVAL = 2.0
"""A full pull of the fleet's bans this often (announcements carry them faster)."""
OFFENCE_FLUSH_INTERVAL = 0.05
STATUS_INTERVAL = 1.0
RESUBSCRIBE_DELAY = 1.0
MIN_WAKE_GAP = 0.25
"""Seconds between two runs of a loop woken early (an announcement, a ban to push): however
many messages arrive on the channel, a node reads the key set or the ban hash at most four
times a second."""
MAX_QUEUED_OFFENCES = 4096


@dataclass(frozen=True)
class AgentSettings:
    node: str
    name: str
    version: str
    config_hash: str
    schedule: KeySchedule | None
    """None: ticket keys are not shared."""
    ticket_sharing: str
    bans: BansConfig | None


class _Malformed:
    def __repr__(self) -> str:
        return "MALFORMED"


MALFORMED = _Malformed()
"""What :meth:`FleetAgent._read_keys` answers for a key set it cannot use."""


async def _read_bounded(client: aioredis.Redis, key: str) -> bytes | None:
    """A key set's value, at most :data:`MAX_SET_SIZE` + 1 bytes of it (a longer one is seen
    to be too long, and no more of it crosses the network); a value of another type reads as
    garbage (replaced at the next rotation) rather than as a store failure."""
    pipe = client.pipeline(transaction=False)
    pipe.execute_command("EXISTS", key)
    pipe.execute_command("GETRANGE", key, 0, MAX_SET_SIZE)
    exists, value = await pipe.execute(raise_on_error=False)
    if isinstance(exists, BaseException):
        raise exists
    if not exists:
        return None
    if isinstance(value, ResponseError) and str(value).startswith("WRONGTYPE"):
        return b"\x00"
    if isinstance(value, BaseException):
        raise value
    return value if isinstance(value, bytes) else b"\x00"


class FleetAgent:
    """One per fleet process (see the module docstring)."""

    def __init__(self, settings: AgentSettings, link: FleetLink,
                 send: Callable[[object], None], *,
                 wall: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.link = link
        self._send = send
        self._wall = wall
        self._names = store.Names(settings.name)
        self.keys: tuple[TicketKey, ...] = ()
        self.rotations = 0
        self.key_sets_seen = 0
        self.nodes: tuple[dict[str, object], ...] = ()
        self._offences: dict[tuple[str, BanEvent], int] = {}
        self.offences_dropped = 0
        self._pending_bans: dict[str, FleetBan] = {}
        self._pending_unbans: dict[str, str] = {}
        self._refused_logged = float("-inf")
        self._ids = itertools.count()
        self._wake_keys = asyncio.Event()
        self._wake_bans = asyncio.Event()
        self._wake_offences = asyncio.Event()

    # ------------------------------------------------------------------ from the supervisor

    def receive(self, message: object) -> None:
        if isinstance(message, FleetOffences):
            for client, event, count in message.reports:
                key = (client, event)
                if key in self._offences or len(self._offences) < MAX_QUEUED_OFFENCES:
                    self._offences[key] = self._offences.get(key, 0) + count
                else:
                    self.offences_dropped += count
            self._wake_offences.set()
        elif isinstance(message, FleetBanned):
            for ban in message.bans:
                self._pending_bans[ban.client] = ban
                self._pending_unbans.pop(ban.client, None)
            self._wake_bans.set()
        elif isinstance(message, FleetUnban):
            self._pending_unbans[message.client] = message.who
            self._pending_bans.pop(message.client, None)
            self._wake_bans.set()

    # ------------------------------------------------------------------ loops

    async def run(self) -> None:
        """Run every loop until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._every(HEARTBEAT_INTERVAL, self.heartbeat, None))
            group.create_task(self._every(STATUS_INTERVAL, self._report, None))
            if self.settings.schedule is not None:
                group.create_task(self._every(self.settings.schedule.poll_interval(),
                                              self.sync_keys, self._wake_keys))
            if self.settings.bans is not None:
                group.create_task(self._every(BAN_PULL_INTERVAL, self.sync_bans,
                                              self._wake_bans))
                group.create_task(self._every(OFFENCE_FLUSH_INTERVAL, self.flush_offences,
                                              self._wake_offences, wait_for_wake=True))
            group.create_task(self._subscribe())

    async def _every(self, interval: float, work: Callable[[], Awaitable[None]],
                     wake: asyncio.Event | None, *, wait_for_wake: bool = False) -> None:
        while True:
            try:
                await work()
            except Exception:  # a bug must not end the loop (nor the process)
                _log.exception("fleet task failed; trying again")
            if wake is None:
                await asyncio.sleep(interval)
                continue
            if wait_for_wake:
                await wake.wait()
                await asyncio.sleep(interval)  # gather a batch
            else:
                try:
                    async with asyncio.timeout(interval):
                        await wake.wait()
                except TimeoutError:
                    pass
                else:  # woken: a flood of announcements must not become a flood of reads
                    await asyncio.sleep(min(interval, MIN_WAKE_GAP))
            wake.clear()

    # ------------------------------------------------------------------ heartbeats

    async def heartbeat(self) -> None:
        now, stats = self._wall(), self.link.stats
        names = self._names
        beat = NodeBeat(self.settings.node, self.settings.version, self.settings.config_hash,
                        os.getpid(), now, self.key_age(now),
                        None if stats.latency is None else round(stats.latency * 1000, 3),
                        stats.failures)
        await self.link.call("heartbeat", lambda c: store.command(
            c, "HSET", names.nodes, beat.node, beat.encode()))
        raw = await self.link.call("nodes", lambda c: store.command(c, "HGETALL", names.nodes))
        if raw is UNAVAILABLE or not isinstance(raw, dict):
            return
        beats: list[NodeBeat] = []
        gone: list[bytes] = []
        for field_name, value in itertools.islice(raw.items(), 4096):
            record = decode_beat(value) if isinstance(value, bytes) else None
            # A node writes its beat under its own name: anything else is no node's beat.
            if record is None or field_name != record.node.encode() or stale([record], now):
                gone.append(field_name)
            else:
                beats.append(record)
        self.nodes = tuple(asdict(view) for view in fleet_view(beats, now, self.settings.node))
        if gone:
            await self.link.call("nodes_forget", lambda c: store.command(
                c, "HDEL", names.nodes, *gone))

    def key_age(self, now: float) -> float | None:
        return round(now - self.keys[0].created, 3) if self.keys else None

    # ------------------------------------------------------------------ ticket keys

    async def sync_keys(self) -> None:
        schedule = self.settings.schedule
        assert schedule is not None
        names, node = self._names, self.settings.node
        stored = await self._read_keys()
        # The store away or holding garbage: keep the keys we have, minus retired ones.
        keys = self.keys if stored is None or isinstance(stored, _Malformed) else stored
        if stored is MALFORMED or schedule.due(keys, self._wall()):  # garbage: write ours back
            locked = await self.link.call("keys_lock", lambda c: store.command(
                c, "SET", names.ticket_lock, node, "NX", "PX", store.LOCK_MS))
            if locked is not UNAVAILABLE and locked:
                try:
                    keys = await self._rotate(schedule, keys)
                finally:
                    await self.link.call("keys_unlock", lambda c: store.run_script(
                        c, store.RELEASE_LOCK, [names.ticket_lock], [node]))
        valid = schedule.valid(keys, self._wall())
        if not same_set(valid, self.keys):
            self.keys = valid
            self.key_sets_seen += 1
            self._send(TicketKeys(valid))
            _log.info("fleet ticket keys in use", extra={"fields": {
                "event": "fleet_ticket_keys", "keys": len(valid),
                "newest_age_s": self.key_age(self._wall())}})

    async def _read_keys(self) -> tuple[TicketKey, ...] | _Malformed | None:
        """The set in Redis; None when the store is away, :data:`MALFORMED` when what it
        holds is no key set (refused whole; the next rotation replaces it)."""
        data = await self.link.call("keys_get", functools.partial(
            _read_bounded, key=self._names.ticket_keys))
        if data is UNAVAILABLE:
            return None
        keys = decode_keys(data if isinstance(data, bytes) or data is None else None,
                           self._wall())
        if keys is None:
            _log.error("the fleet's ticket key set in Redis is malformed; keeping ours",
                       extra={"fields": {"event": "fleet_ticket_keys_malformed"}})
            return MALFORMED
        return keys

    async def _rotate(self, schedule: KeySchedule, keys: tuple[TicketKey, ...]
                      ) -> tuple[TicketKey, ...]:
        """Holding the lock: read again, and make the next set if it is still due.

        A store that lost the set (Redis restarted without persistence, a failover to a
        replica that had not got it) or holds garbage gets this node's own valid keys back,
        with a new key in front only if one is due: tickets issued before keep resuming."""
        again = await self._read_keys()
        if again is None:
            return keys
        now = self._wall()
        own = schedule.valid(self.keys, now)
        restore = again is MALFORMED or (again == () and bool(own))
        base = own if restore else again
        assert isinstance(base, tuple)
        due = schedule.due(base, now)
        if not due and not restore:
            return base
        fresh = schedule.next_set(base, now, TicketKey.fresh(now)) if due else base
        names = self._names
        written = await self.link.call("keys_set", lambda c: store.command(
            c, "SET", names.ticket_keys, encode_keys(fresh)))
        if written is UNAVAILABLE:
            return base
        if due:
            self.rotations += 1
        await self.link.call("publish", lambda c: store.command(
            c, "PUBLISH", names.events, "keys"))
        if restore:
            _log.warning("the fleet's ticket key set was missing or malformed in Redis; this "
                         "node's keys written back", extra={"fields": {
                             "event": "fleet_ticket_keys_restored", "keys": len(fresh)}})
        else:
            _log.info("new fleet ticket key made", extra={"fields": {
                "event": "fleet_ticket_rotation", "keys": len(fresh)}})
        return fresh

    # ------------------------------------------------------------------ bans

    async def flush_offences(self) -> None:
        bans = self.settings.bans
        if bans is None or not self._offences:
            return
        batch, self._offences = self._offences, {}
        names, node = self._names, self.settings.node
        for (client, event), count in batch.items():
            if event not in bans.events:
                continue
            member = f"{node}:{os.getpid()}:{next(self._ids)}"
            args: list[str | int | float | bytes] = [
                self._wall(), bans.window, bans.threshold, bans.ban_time,
                min(count, bans.threshold), node, event, names.events, client, member,
                MAX_FLEET_BANS]
            keys = [names.offences(client), names.bans]
            result = await self.link.call("offences", functools.partial(
                store.run_script, script=store.RECORD_OFFENCES, keys=keys, args=args))
            if result is UNAVAILABLE:
                return  # the node's own jail counted them; the fleet's count resumes later

    async def sync_bans(self) -> None:
        """Push what this node decided or lifted, then pull every ban the fleet holds."""
        names = self._names
        for client, ban in list(self._pending_bans.items()):
            done = await self.link.call("ban_push", functools.partial(
                store.run_script, script=store.PUSH_BAN, keys=[names.bans],
                args=[ban.client, ban.encode(), ban.until, names.events, MAX_FLEET_BANS]))
            if done is UNAVAILABLE:
                return
            self._pending_bans.pop(client, None)
        for client, who in list(self._pending_unbans.items()):
            done = await self.link.call("unban", functools.partial(self._unban, key=client))
            if done is UNAVAILABLE:
                return
            self._pending_unbans.pop(client, None)
            _log.info("fleet ban lifted", extra={"fields": {
                "event": "fleet_unban", "client": client, "who": who}})
        raw = await self.link.call("bans_pull", lambda c: store.command(c, "HGETALL", names.bans))
        if raw is UNAVAILABLE or not isinstance(raw, dict):
            return
        now = self._wall()
        records: list[FleetBan] = []
        expired = []
        refused = 0
        for key, value in itertools.islice(raw.items(), MAX_FLEET_BANS):
            record = decode_ban(value) if isinstance(value, bytes) else None
            if record is None or record.until <= now:
                expired.append(key)
            elif self._acceptable(record, now):
                records.append(record)
            else:
                refused += 1
        self._refused_bans(refused, now)
        self._send(FleetBans(added=tuple(records), full=True))
        if expired:
            await self.link.call("bans_expire", lambda c: store.command(
                c, "HDEL", names.bans, *expired))

    def _acceptable(self, ban: FleetBan, now: float) -> bool:
        """Whether a well-formed record may be imposed: never one lasting longer than this
        node's own bans could (an absurd end would be a permanent ban)."""
        bans = self.settings.bans
        return bans is not None and not overlong(ban, now, bans.ban_time)

    def _refused_bans(self, count: int, now: float) -> None:
        """Log records refused for lasting too long, at most once a minute."""
        if count and now - self._refused_logged >= 60.0:
            self._refused_logged = now
            _log.warning("fleet bans in Redis refused: they last longer than bans.ban_time "
                         "allows (a node with another configuration, or someone writing to "
                         "Redis)", extra={"fields": {"event": "fleet_ban_refused",
                                                     "records": count}})

    async def _unban(self, client: aioredis.Redis, key: str) -> object:
        names = self._names
        pipe = client.pipeline(transaction=True)
        pipe.execute_command("HDEL", names.bans, key)
        pipe.execute_command("DEL", names.offences(key))  # an unban forgets the count too
        pipe.execute_command("PUBLISH", names.events, f"unban {key}")
        return await pipe.execute()

    # ------------------------------------------------------------------ announcements

    async def _subscribe(self) -> None:
        while True:
            pubsub = self.link.client.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(self.link.config.connect_timeout
                                           + self.link.config.operation_timeout):
                    await pubsub.subscribe(self._names.events)
                self._wake_keys.set()  # catch up with what was announced while away
                self._wake_bans.set()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=1.0)
                    if message is not None:
                        try:
                            self._announced(message.get("data"))
                        except Exception:  # a bug must not end the subscription
                            _log.exception("fleet announcement not handled")
            except (RedisError, OSError, TimeoutError) as error:
                self.link.failed("subscribe", error)
            finally:
                try:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                except (RedisError, OSError):
                    pass
            await asyncio.sleep(RESUBSCRIBE_DELAY)

    def _announced(self, data: object) -> None:
        """Act on one message from the channel (anyone who can publish there can send
        anything: a malformed message is dropped, never raised)."""
        if not isinstance(data, bytes):
            return
        kind, _, rest = data.partition(b" ")
        if kind == b"keys":
            self._wake_keys.set()
        elif kind == b"ban" and self.settings.bans is not None:
            ban = decode_ban(rest)
            now = self._wall()
            if ban is None:
                return
            if self._acceptable(ban, now):
                self._send(FleetBans(added=(ban,)))
            else:
                self._refused_bans(1, now)
        elif kind == b"unban" and self.settings.bans is not None:
            self._send(FleetBans(removed=(rest.decode("ascii", "replace")[:64],)))

    # ------------------------------------------------------------------ status

    async def _report(self) -> None:
        self._send(self.status())

    def status(self) -> FleetStatus:
        stats, now = self.link.stats, self._wall()
        return FleetStatus(
            node=self.settings.node, name=self.settings.name, store_up=stats.up,
            round_trips=dict(stats.round_trips), failures=stats.failures,
            outages=stats.outages,
            latency_ms=None if stats.latency is None else round(stats.latency * 1000, 3),
            last_error=stats.last_error, nodes=self.nodes, ticket_keys=len(self.keys),
            ticket_key_age=self.key_age(now), ticket_sharing=self.settings.ticket_sharing,
            rotations=self.rotations, key_sets_seen=self.key_sets_seen,
            config_hash=self.settings.config_hash)
