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

from offload.fleet.limit_script import GCRA_SCRIPT, script_calls, waits
from offload.fleet.link import UNAVAILABLE, FleetLink
from offload.fleet.tally import Batch, FleetRate, FleetTally
from offload.observe.log import fields
from offload.security.limits import fleet_rates

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from offload.config.model import Config
    from offload.observe.stats import Counters

_log = logging.getLogger("offload.fleet")

BATCH_INTERVAL = 0.05
"""Seconds between batches: a fleet refusal reaches every node within about this long."""


def fleet_tally(config: Config) -> FleetTally | None:
    """One worker's tally for every frontend with ``limits.scope = "fleet"``, or None."""
    if config.fleet is None:
        return None
    tally: FleetTally | None = None
    for frontend in config.frontends:
        settings = frontend.limits
        rates = fleet_rates(settings)
        if not rates:
            continue
        if tally is None:
            tally = FleetTally(max_keys=sum(f.limits.max_tracked_clients
                                            for f in config.frontends))
        for limit, per_second, burst in rates:
            tally.add_limit(frontend.name, limit, FleetRate.of(per_second, burst),
                            settings.on_store_failure)
    return tally


class FleetLimitSync:
    """Runs the batches of one worker's tally over its process's Redis link."""

    def __init__(self, tally: FleetTally, link: FleetLink, counters: Counters, *,
                 interval: float = BATCH_INTERVAL) -> None:
        self._tally = tally
        self._link = link
        self._prefix = link.config.name
        self._counters = counters
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._script = link.client.register_script(GCRA_SCRIPT)

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
            await asyncio.sleep(self._interval)  # the batch timer
            batch = self._tally.take_batch(loop.time())
            if batch is None:
                continue
            try:
                await self.send(batch)
            except Exception as error:  # a client library bug must not end fleet limits
                self._counters.inc("internal_error", "fleet_limits")
                _log.error("fleet rate-limit batch failed unexpectedly", exc_info=error,
                           extra=fields(event="fleet_limits_error"))
                if self._tally.fail(batch):
                    _log.warning("fleet rate limits cannot reach the store: each instance "
                                 "applies them alone", extra=fields(event="fleet_limits_local",
                                                                    reason=repr(error)))

    async def send(self, batch: Batch) -> None:
        """Charge ``batch`` to the fleet and apply the answer (or the failure) to the tally."""
        tally, counters = self._tally, self._counters
        path = "batch" if asyncio.current_task() is self._task else "request"
        counters.inc("fleet_round_trips", path)
        counters.inc("fleet_limit_batches")
        counters.inc("fleet_limit_batch_keys", amount=len(batch))
        answers = await self._link.call("limit_batch", lambda client: self._call(client, batch))
        reason = "the store is unavailable"
        result: list[int] | None = None
        if answers is not UNAVAILABLE:
            assert isinstance(answers, list)
            try:
                result = waits(answers, batch)
            except ValueError as error:
                reason = str(error)
        if result is None:
            counters.inc("fleet_limit_failures")  # the lost counts: tally.unsynced
            if tally.fail(batch):
                _log.warning("fleet rate limits cannot reach the store: each instance applies "
                             "them alone (or refuses, where on_store_failure = \"deny\")",
                             extra=fields(event="fleet_limits_local", reason=reason))
            return
        if tally.settle(batch, result, asyncio.get_running_loop().time()):
            _log.info("fleet rate limits count for the fleet again",
                      extra=fields(event="fleet_limits_shared"))

    async def _call(self, client: Redis, batch: Batch) -> list[object]:
        if batch.probe:
            await client.ping()
            return []
        async with client.pipeline(transaction=False) as pipe:
            for keys, args in script_calls(self._prefix, batch):
                await self._script(keys=keys, args=args, client=pipe)
            return list(await pipe.execute())


__all__ = ["BATCH_INTERVAL", "FleetLimitSync", "fleet_tally"]
