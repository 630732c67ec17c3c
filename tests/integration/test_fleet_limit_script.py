"""The fleet-limit Lua script and batch task against a real redis-server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fleet_harness import RedisServer
from redis.asyncio import Redis

from offload.config.model import FleetConfig
from offload.fleet.limit_script import GCRA_SCRIPT, MAX_KEYS_PER_CALL, key_name
from offload.fleet.limit_sync import FleetLimitSync
from offload.fleet.link import FleetLink, redis_client
from offload.fleet.tally import MAX_RETRY, Batch, FleetRate, FleetTally
from offload.observe.stats import Counters

pytestmark = pytest.mark.peers


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    instance = RedisServer(tmp_path / "redis")
    yield instance
    instance.kill()


def charge(client: redis.Redis, key: str, events: int, rate: FleetRate) -> int:
    answer = client.eval(GCRA_SCRIPT, 1, key, events, rate.interval_us, rate.tolerance_us)
    assert isinstance(answer, list)
    return int(answer[0])


def test_gcra_admits_the_burst_then_asks_to_wait_one_interval(server: RedisServer) -> None:
    client = redis.Redis(port=server.port)
    rate = FleetRate.of(10, 5)  # 100 ms per event, 5 at once
    key = key_name("t", "web", "per_ip_request_rate", "192.0.2.1")
    assert charge(client, key, 4, rate) == 0
    wait = charge(client, key, 1, rate)  # the fifth: the burst is spent
    assert 95 <= wait <= 100
    # charges are never refused: 10 more push the wait out by 10 intervals
    wait = charge(client, key, 10, rate)
    assert 1080 <= wait <= 1100
    tat = int(client.get(key) or 0)
    assert tat > 10**15  # microseconds of the server's clock, written as an integer
    assert 1000 < client.pttl(key) <= 2600  # forgotten once idle


def test_keys_are_independent_and_one_call_answers_them_in_order(server: RedisServer) -> None:
    client = redis.Redis(port=server.port)
    rate = FleetRate.of(1, 1)
    keys = [key_name("t", "web", "per_ip_request_rate", f"192.0.2.{i}") for i in range(3)]
    answer = client.eval(GCRA_SCRIPT, 3, *keys, 1, rate.interval_us, rate.tolerance_us,
                         0 + 3, rate.interval_us, rate.tolerance_us,
                         1, 1000, 0)
    assert isinstance(answer, list)
    assert 990 <= answer[0] <= 1000
    assert 2990 <= answer[1] <= 3000
    assert answer[2] == 1


def test_garbage_in_a_counter_key_starts_it_afresh(server: RedisServer) -> None:
    client = redis.Redis(port=server.port)
    key = key_name("t", "web", "per_ip_request_rate", "192.0.2.9")
    client.set(key, "not a number")
    assert charge(client, key, 1, FleetRate.of(10, 5)) == 0


@pytest.mark.parametrize("poison", ["hash", "ahead", "inf", "nan", "negative"])
def test_a_poisoned_counter_starts_afresh_rather_than_refuse_for_ever(
        server: RedisServer, poison: str) -> None:
    """Anyone who can write to Redis: a counter of another type, or one years ahead."""
    client = redis.Redis(port=server.port)
    key = key_name("t", "web", "per_ip_request_rate", "192.0.2.10")
    if poison == "hash":
        client.hset(key, "x", "1")
    else:
        client.set(key, {"ahead": str(10**30), "inf": "inf", "nan": "nan",
                         "negative": "-1e300"}[poison])
    assert charge(client, key, 1, FleetRate.of(10, 5)) == 0
    assert 0 < client.pttl(key) <= 2000


def test_one_poisoned_counter_does_not_fail_the_batch_of_every_key(server: RedisServer) -> None:
    async def scenario() -> tuple[bool, int]:
        tally = FleetTally()
        tally.add_limit("web", "request_rate", FleetRate.of(1000, 1000), "deny")
        link = FleetLink(*_link(server))
        sync = FleetLimitSync(tally, link, Counters())
        for address in ("*", "192.0.2.1"):
            tally.count(("web", "request_rate", address))
        await _send(sync, tally)
        await link.close()
        return tally.failing, link.stats.failures

    server.client().hset(key_name("t", "web", "request_rate", "*"), "x", "1")
    failing, failures = asyncio.run(scenario())
    assert not failing, "a poisoned key turned fleet limits into deny-everything"
    assert failures == 0


def test_the_batch_task_carries_a_large_batch_in_one_round_trip(server: RedisServer) -> None:
    async def scenario() -> tuple[FleetTally, Counters]:
        tally = FleetTally()
        tally.add_limit("web", "per_ip_request_rate", FleetRate.of(1, 1))
        counters = Counters()
        link = FleetLink(*_link(server))
        sync = FleetLimitSync(tally, link, counters)
        clients = MAX_KEYS_PER_CALL * 2 + 7
        for index in range(clients):
            tally.count(("web", "per_ip_request_rate", f"10.0.{index // 256}.{index % 256}"))
        batch = tally.take_batch(0.0)
        assert batch is not None and len(batch) == clients
        await sync.send(batch)
        await link.close()
        return tally, counters

    tally, counters = asyncio.run(scenario())
    assert not tally.failing
    assert tally.denied_keys() == MAX_KEYS_PER_CALL * 2 + 7  # burst 1: each must now wait
    assert counters.get("fleet_limit_batches") == 1
    assert counters.get("fleet_round_trips", "request") == 1  # sent from the test, not the task


def test_the_batch_task_notices_the_store_going_and_coming_back(server: RedisServer) -> None:
    async def scenario() -> list[bool]:
        tally = FleetTally()
        tally.add_limit("web", "per_ip_request_rate", FleetRate.of(100, 100))
        link = FleetLink(*_link(server))
        sync = FleetLimitSync(tally, link, Counters())
        seen = []
        key = ("web", "per_ip_request_rate", "192.0.2.1")
        tally.count(key)
        await _send(sync, tally)
        seen.append(tally.failing)
        server.kill()
        tally.count(key)
        await _send(sync, tally)
        seen.append(tally.failing)
        server.start()
        await _send(sync, tally, later=MAX_RETRY)  # the probe, once the retry delay is over
        seen.append(tally.failing)
        await link.close()
        return seen

    assert asyncio.run(scenario()) == [False, True, False]


def _link(server: RedisServer) -> tuple[Redis, FleetConfig]:
    config = FleetConfig(redis=server.url, name="t", node="test")
    return redis_client(config), config


async def _send(sync: FleetLimitSync, tally: FleetTally, later: float = 0.0) -> None:
    """Send the next batch, ``later`` seconds from now (a failing store is retried late)."""
    batch: Batch | None = tally.take_batch(asyncio.get_running_loop().time() + later)
    assert batch is not None
    await sync.send(batch)
