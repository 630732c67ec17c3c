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
from redis.exceptions import RedisError

from offload.config.model import BansConfig
from offload.fleet import store
from offload.fleet.ban_sync import MAX_FLEET_BANS, FleetBan, decode_ban
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
        beats = [b for b in (decode_beat(v) for v in list(raw.values())[:4096]) if b is not None]
        self.nodes = tuple(asdict(view) for view in fleet_view(beats, now, self.settings.node))
        gone = stale(beats, now)
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
        keys = await self._read_keys()
        if keys is None:  # the store is away: keep the keys we have, minus retired ones
            keys = self.keys
        if schedule.due(keys, self._wall()):
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

    async def _read_keys(self) -> tuple[TicketKey, ...] | None:
        data = await self.link.call("keys_get", lambda c: store.command(
            c, "GET", self._names.ticket_keys))
        if data is UNAVAILABLE:
            return None
        keys = decode_keys(data if isinstance(data, bytes) or data is None else None,
                           self._wall())
        if keys is None:
            _log.error("the fleet's ticket key set in Redis is malformed; keeping ours",
                       extra={"fields": {"event": "fleet_ticket_keys_malformed"}})
        return keys

    async def _rotate(self, schedule: KeySchedule, keys: tuple[TicketKey, ...]
                      ) -> tuple[TicketKey, ...]:
        """Holding the lock: read again, and make the next set if it is still due."""
        again = await self._read_keys()
        if again is None:
            return keys
        now = self._wall()
        if not schedule.due(again, now):
            return again
        fresh = schedule.next_set(again, now, TicketKey.fresh(now))
        names = self._names
        written = await self.link.call("keys_set", lambda c: store.command(
            c, "SET", names.ticket_keys, encode_keys(fresh)))
        if written is UNAVAILABLE:
            return again
        self.rotations += 1
        await self.link.call("publish", lambda c: store.command(
            c, "PUBLISH", names.events, "keys"))
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
                min(count, bans.threshold), node, event, names.events, client, member]
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
                args=[ban.client, ban.encode(), ban.until, names.events]))
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
        for key, value in itertools.islice(raw.items(), MAX_FLEET_BANS):
            record = decode_ban(value)
            if record is None or record.until <= now:
                expired.append(key)
            else:
                records.append(record)
        self._send(FleetBans(added=tuple(records), full=True))
        if expired:
            await self.link.call("bans_expire", lambda c: store.command(
                c, "HDEL", names.bans, *expired))

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
                        self._announced(message.get("data"))
            except (RedisError, OSError, TimeoutError) as error:
                self.link.failed("subscribe", error)
            finally:
                try:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                except (RedisError, OSError):
                    pass
            await asyncio.sleep(RESUBSCRIBE_DELAY)

    def _announced(self, data: object) -> None:
        if not isinstance(data, bytes):
            return
        kind, _, rest = data.partition(b" ")
        if kind == b"keys":
            self._wake_keys.set()
        elif kind == b"ban" and self.settings.bans is not None:
            ban = decode_ban(rest)
            if ban is not None:
                self._send(FleetBans(added=(ban,)))
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
