"""The batch timer of fleet rate limits: one task per worker carries a :class:`FleetTally`'s
counts to Redis and its answers back.

Every ``interval`` (50-100 ms) the task takes a batch and sends it as one pipeline of script
calls — one round trip, whatever the number of keys. It is the only code that talks to Redis
about limits; the request path only reads and writes the tally's dicts. To keep that so, every
round trip checks which task makes it: one made from any other task counts as a round trip on
the request path (``offload_fleet_request_path_round_trips_total``, which must stay 0).

Failures (connection refused, timeouts, a Redis error, a malformed answer) never reach a
request: the tally is told, the change is logged once (failing, then recovered) and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from offload.fleet.limit_script import GCRA_SCRIPT, script_calls, waits
from offload.fleet.tally import Batch, FleetTally
from offload.observe.log import fields

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from offload.observe.stats import Counters

_log = logging.getLogger("offload.fleet")

BATCH_INTERVAL = 0.05
"""Seconds between batches: a fleet refusal reaches every node within about this long."""


class FleetLimitSync:
    """Runs the batches of one worker's tally over its Redis link."""

    def __init__(self, tally: FleetTally, redis: Redis, prefix: str, counters: Counters, *,
                 interval: float = BATCH_INTERVAL, timeout: float = 1.0) -> None:
        self._tally = tally
        self._redis = redis
        self._prefix = prefix
        self._counters = counters
        self._interval = interval
        self._timeout = timeout
        self._task: asyncio.Task[None] | None = None
        self._script = redis.register_script(GCRA_SCRIPT)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="fleet-limits")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._interval)
            batch = self._tally.take_batch(loop.time())
            if batch is not None:
                await self.send(batch)

    async def send(self, batch: Batch) -> None:
        """Charge ``batch`` to the fleet and apply the answer (or the failure) to the tally."""
        tally, counters = self._tally, self._counters
        path = "batch" if asyncio.current_task() is self._task else "request"
        counters.inc("fleet_round_trips", path)
        counters.inc("fleet_limit_batches")
        counters.inc("fleet_limit_batch_keys", amount=len(batch))
        try:
            async with asyncio.timeout(self._timeout):
                answers = await self._call(batch)
            result = waits(answers, batch)
        except (RedisError, OSError, TimeoutError, ValueError) as error:
            lost = sum(count for _, count, _ in batch.entries)
            counters.inc("fleet_store_failures", "limits")
            if lost:
                counters.inc("fleet_limit_unsynced", amount=lost)
            if tally.fail(batch):
                _log.warning("fleet store unreachable: rate limits fall back to "
                             + ("per-instance limits" if tally.on_store_failure == "local"
                                else "refusing every event they cover"),
                             extra=fields(reason=f"{type(error).__name__}: {error}"))
            return
        if tally.settle(batch, result, asyncio.get_running_loop().time()):
            _log.info("fleet store reachable again: rate limits count for the fleet")

    async def _call(self, batch: Batch) -> list[object]:
        if batch.probe:
            await self._redis.ping()
            return []
        calls = script_calls(self._prefix, batch)
        async with self._redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                await self._script(keys=keys, args=args, client=pipe)
            return list(await pipe.execute())


__all__ = ["BATCH_INTERVAL", "FleetLimitSync"]
