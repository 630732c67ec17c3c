"""The fleet process against a Redis that holds or sends what offload never wrote: another
tenant, a compromised node, anyone who can write to the store or publish on its channel.

A real redis-server on 127.0.0.1 and the fleet process's agent on the test's own loop. What
such data must never do: end the fleet process, become a permanent ban, stop the fleet's
ticket keys from rotating, or make a flood of announcements into a flood of reads."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fleet_harness import RedisServer

from offload.config.model import BansConfig, FleetConfig
from offload.fleet import store
from offload.fleet.agent import AgentSettings, FleetAgent
from offload.fleet.ban_sync import MAX_FLEET_BANS, FleetBan
from offload.fleet.link import FleetLink, redis_client
from offload.fleet.messages import FleetBanned, FleetBans, FleetOffences, TicketKeys
from offload.fleet.ticket_schedule import KeySchedule, decode_keys
from offload.security.bans import BanEvent

pytestmark = pytest.mark.peers

NAME = "hostile"
NAMES = store.Names(NAME)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    instance = RedisServer(tmp_path / "redis")
    yield instance
    instance.kill()


def agent_for(server: RedisServer, sent: list[object], *, keys: bool = False,
              threshold: int = 10) -> FleetAgent:
    config = FleetConfig(redis=server.url, name=NAME, node="edge-1")
    settings = AgentSettings("edge-1", NAME, "test", "hash", KeySchedule(3600.0, 7200.0)
                             if keys else None, "on" if keys else "off",
                             BansConfig(threshold=threshold))
    return FleetAgent(settings, FleetLink(redis_client(config), config), sent.append)


def ban_json(client: str, until: object, count: object = 3) -> str:
    since = time.time()
    return (f'{{"client": "{client}", "reason": "rule_denied", "since": {since}, '
            f'"until": {until}, "count": {count}, "node": "evil"}}')


def banned(sent: list[object]) -> list[str]:
    return [ban.client for message in sent if isinstance(message, FleetBans)
            for ban in message.added]


async def subscribed(server: RedisServer) -> None:
    """Until the agent listens on the channel (no event to await from outside: bounded)."""
    client = server.client()
    deadline = time.monotonic() + 10
    while dict(client.pubsub_numsub(NAMES.events)).get(NAMES.events.encode(), 0) < 1:
        assert time.monotonic() < deadline, "the agent never subscribed"
        await asyncio.sleep(0.02)


def test_hostile_announcements_neither_end_the_fleet_process_nor_ban_for_ever(
        server: RedisServer) -> None:
    sent: list[object] = []
    agent = agent_for(server, sent)
    publisher = server.client()
    far = time.time() + 10 * 365 * 86400

    async def scenario() -> bool:
        run = asyncio.create_task(agent.run())
        try:
            await subscribed(server)
            for message in [
                "ban " + ban_json("198.51.100.1", time.time() + 60, count="1e999"),
                "ban " + ban_json("198.51.100.2", time.time() + 60, count=10**400),
                "ban " + "[" * 5000,
                "ban " + ban_json("198.51.100.3", far),  # ten years: a permanent ban
                "ban " + ban_json("198.51.100.4", "1e308"),
                b"ban \xff\xfe not even UTF-8",
                "ban " + ban_json("198.51.100.9", time.time() + 60),  # a real one, last
            ]:
                publisher.publish(NAMES.events, message)
            deadline = time.monotonic() + 10
            while "198.51.100.9" not in banned(sent) and not run.done():
                assert time.monotonic() < deadline, "the real ban never arrived"
                await asyncio.sleep(0.02)
            return not run.done()
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            await agent.link.close()

    alive = asyncio.run(scenario())
    assert alive, "a message on the channel ended the fleet agent"
    assert banned(sent) == ["198.51.100.9"]


def test_a_poisoned_ban_hash_neither_blocks_the_pull_nor_bans_for_ever(
        server: RedisServer) -> None:
    sent: list[object] = []
    agent = agent_for(server, sent)
    client = server.client()
    client.hset(NAMES.bans, mapping={
        "198.51.100.1": ban_json("198.51.100.1", time.time() + 60, count="1e999"),
        "198.51.100.3": ban_json("198.51.100.3", time.time() + 10 * 365 * 86400),
        "198.51.100.4": ban_json("198.51.100.4", "1e308"),
        "198.51.100.9": ban_json("198.51.100.9", time.time() + 60),
    })

    async def scenario() -> None:
        try:
            await agent.sync_bans()
        finally:
            await agent.link.close()

    asyncio.run(scenario())
    pulls = [m for m in sent if isinstance(m, FleetBans) and m.full]
    assert len(pulls) == 1, "the pull was abandoned"
    assert [ban.client for ban in pulls[0].added] == ["198.51.100.9"]
    assert client.hget(NAMES.bans, "198.51.100.1") is None  # malformed: deleted


@pytest.mark.parametrize("poison", ["string", "hash", "huge"])
def test_a_malformed_ticket_key_set_is_replaced_by_the_next_rotation(
        server: RedisServer, poison: str) -> None:
    sent: list[object] = []
    agent = agent_for(server, sent, keys=True)
    fresh = agent_for(server, [], keys=True)  # a node that joins meanwhile, with no keys
    client = server.client()

    def poison_it() -> None:
        client.delete(NAMES.ticket_keys)
        if poison == "string":
            client.set(NAMES.ticket_keys, '[{"name": 1e999}]')
        elif poison == "hash":
            client.hset(NAMES.ticket_keys, "evil", "1")
        else:
            client.set(NAMES.ticket_keys, "[" + " " * (8 << 20) + "{")  # 8 MiB, malformed

    async def scenario() -> tuple[bytes, ...]:
        try:
            poison_it()
            await fresh.sync_keys()  # no keys of its own: it makes the first set
            first = decode_keys(client.get(NAMES.ticket_keys), time.time())
            assert first, "the fleet's key set stays garbage: no node will ever rotate it"
            await agent.sync_keys()
            held = tuple(key.name for key in agent.keys)
            poison_it()
            await agent.sync_keys()  # keys not due: ours go back at once all the same
            return held
        finally:
            await agent.link.close()
            await fresh.link.close()

    held = asyncio.run(scenario())
    keys = decode_keys(client.get(NAMES.ticket_keys), time.time())
    assert keys and tuple(key.name for key in keys) == held
    handed = [m for m in sent if isinstance(m, TicketKeys)]
    assert handed and [k.name for k in handed[-1].keys] == list(held)
    assert agent.link.stats.failures == 0  # garbage in the store is not an outage


def flood(publisher: redis.Redis, seconds: float) -> None:
    """Publish "keys" on the fleet's channel every 2.5 ms for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        publisher.publish(NAMES.events, "keys")
        time.sleep(0.0025)  # the attacker's pace, not synchronisation


def test_a_flood_of_announcements_is_not_a_flood_of_reads(server: RedisServer) -> None:
    sent: list[object] = []
    agent = agent_for(server, sent, keys=True)
    publisher = server.client()

    async def scenario() -> int:
        run = asyncio.create_task(agent.run())
        try:
            await subscribed(server)
            before = agent.link.stats.round_trips.get("keys_get", 0)
            await asyncio.to_thread(flood, publisher, 1.0)  # about 400 messages in a second
            return agent.link.stats.round_trips.get("keys_get", 0) - before
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            await agent.link.close()

    reads = asyncio.run(scenario())
    assert reads <= 10, f"{reads} reads of the key set in a second"


def test_injected_registry_entries_are_dropped_and_deleted(server: RedisServer) -> None:
    sent: list[object] = []
    agent = agent_for(server, sent)
    client = server.client()
    now = time.time()
    forged = {"node": "edge-2", "version": "x", "config_hash": "h", "pid": 1, "seen": now,
              "ticket_key_age": None, "latency_ms": None}
    client.hset(NAMES.nodes, mapping={
        "edge-2": json.dumps(forged),
        "ghost": json.dumps({**forged, "node": "edge-2"}),  # deleting it must not hit edge-2
        "forever": '{"node": "forever", "version": "x", "config_hash": "h", "pid": 1, '
                   '"seen": Infinity}',
        "junk": "\xff not json",
    })

    async def scenario() -> None:
        try:
            await agent.heartbeat()
        finally:
            await agent.link.close()

    asyncio.run(scenario())
    assert sorted(str(n["node"]) for n in agent.nodes) == ["edge-1", "edge-2"]
    assert sorted(client.hkeys(NAMES.nodes)) == [b"edge-1", b"edge-2"]
    json.dumps(agent.nodes, allow_nan=False)  # /api/fleet stays valid JSON


def test_clients_spraying_addresses_cannot_grow_the_ban_hash_without_bound(
        server: RedisServer) -> None:
    """Every ban is a field every node pulls every 2 s: the hash stops at MAX_FLEET_BANS (each
    node's own jail still bans the rest)."""
    sent: list[object] = []
    agent = agent_for(server, sent, threshold=1)
    client = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=30)  # 10 MB to fill
    pipe = client.pipeline(transaction=False)
    for start in range(0, MAX_FLEET_BANS, 4096):
        pipe.hset(NAMES.bans, mapping={f"2001:db8:0:{i:x}::/64": ban_json(
            f"2001:db8:0:{i:x}::/64", time.time() + 300) for i in range(start, start + 4096)})
    pipe.execute()
    sprayed: tuple[tuple[str, BanEvent, int], ...] = tuple(
        (f"2001:db8:1:{i:x}::/64", "handshake_failure", 1) for i in range(50))
    pushed = tuple(FleetBan(f"2001:db8:2:{i:x}::/64", "handshake_failure", time.time(),
                            time.time() + 60, 1, "edge-1") for i in range(50))

    async def scenario() -> None:
        try:
            agent.receive(FleetOffences(sprayed))
            await agent.flush_offences()
            agent.receive(FleetBanned(pushed))
            await agent.sync_bans()
        finally:
            await agent.link.close()

    asyncio.run(scenario())
    assert client.hlen(NAMES.bans) == MAX_FLEET_BANS
    assert not client.keys(NAMES.offences("*"))  # and no offence window left behind


def test_a_key_set_lost_by_redis_is_written_back_not_replaced(server: RedisServer) -> None:
    """Redis restarted without persistence (or failed over to a replica that missed the
    write): the next set must keep the keys tickets were issued under."""
    sent: list[object] = []
    agent = agent_for(server, sent, keys=True)
    client = server.client()

    async def scenario() -> tuple[bytes, ...]:
        try:
            await agent.sync_keys()
            before = tuple(key.name for key in agent.keys)
            client.flushall()
            await agent.sync_keys()
            return before
        finally:
            await agent.link.close()

    before = asyncio.run(scenario())
    assert len(before) == 1
    stored = decode_keys(client.get(NAMES.ticket_keys), time.time())
    assert stored is not None and [key.name for key in stored] == list(before)
    assert [key.name for key in agent.keys] == list(before)
