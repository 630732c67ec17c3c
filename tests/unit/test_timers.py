"""IdleTimer on real event loops (asyncio and uvloop), with short but generous timeouts.

Times are read from ``loop.time()``, the clock the timer itself uses, so "fired no earlier than
timeout after the last touch" is exact; wall-clock delays only ever add margin.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from offload.timers import IdleTimer

LOOPS = [
    pytest.param(asyncio.new_event_loop, id="asyncio"),
    pytest.param(uvloop.new_event_loop, id="uvloop"),
]
LoopFactory = Callable[[], asyncio.AbstractEventLoop]
BOUND = 5.0  # upper bound on any wait for a firing, so a broken timer fails instead of hanging


def run(factory: LoopFactory, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(scenario())


class Recorder:
    """Collects the loop time of every on_idle call and wakes a waiter on the first."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.times: list[float] = []
        self.event = asyncio.Event()

    def __call__(self) -> None:
        self.times.append(self.loop.time())
        self.event.set()

    async def wait(self) -> None:
        await asyncio.wait_for(self.event.wait(), BOUND)


@pytest.mark.parametrize("factory", LOOPS)
def test_fires_once_when_never_touched(factory: LoopFactory) -> None:
    timeout = 0.05

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        fired = Recorder(loop)
        timer = IdleTimer(loop, timeout, fired)
        created = timer.last
        await fired.wait()
        assert fired.times[0] >= created + timeout
        await asyncio.sleep(6 * timeout)  # plenty of time for a second, wrong, call
        assert len(fired.times) == 1
        timer.cancel()  # harmless after firing

    run(factory, scenario)


@pytest.mark.parametrize("factory", LOOPS)
def test_touching_keeps_it_quiet_then_it_fires_after_the_last_touch(factory: LoopFactory) -> None:
    timeout = 0.25  # touches come every 10 ms: a stall of ~240 ms would be needed to misfire

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        fired = Recorder(loop)
        timer = IdleTimer(loop, timeout, fired)
        start = loop.time()
        while loop.time() < start + 2 * timeout:  # two whole timeouts of activity
            await asyncio.sleep(0.01)
            timer.touch()
            assert fired.times == [], "fired while the connection was active"
        last_touch = timer.last
        assert last_touch >= start + 2 * timeout
        await fired.wait()
        assert len(fired.times) == 1
        assert fired.times[0] >= last_touch + timeout
        await asyncio.sleep(0.1)
        assert len(fired.times) == 1

    run(factory, scenario)


@pytest.mark.parametrize("factory", LOOPS)
def test_touch_before_deadline_postpones_firing(factory: LoopFactory) -> None:
    timeout = 0.1

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        fired = Recorder(loop)
        timer = IdleTimer(loop, timeout, fired)
        first_deadline = timer.last + timeout
        await asyncio.sleep(timeout / 2)
        timer.touch()
        touched = timer.last
        assert touched > first_deadline - timeout
        await fired.wait()
        # It did not fire at the first deadline but a whole timeout after the touch.
        assert fired.times[0] >= touched + timeout
        assert fired.times[0] > first_deadline
        assert len(fired.times) == 1

    run(factory, scenario)


@pytest.mark.parametrize("factory", LOOPS)
def test_touch_after_firing_does_not_fire_again(factory: LoopFactory) -> None:
    timeout = 0.05

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        fired = Recorder(loop)
        timer = IdleTimer(loop, timeout, fired)
        await fired.wait()
        timer.touch()
        await asyncio.sleep(6 * timeout)
        assert len(fired.times) == 1

    run(factory, scenario)


@pytest.mark.parametrize("factory", LOOPS)
def test_cancel_prevents_firing(factory: LoopFactory) -> None:
    timeout = 0.05

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        fired = Recorder(loop)
        timer = IdleTimer(loop, timeout, fired)
        timer.cancel()
        timer.cancel()  # idempotent
        # A control timer created after the cancelled one proves enough time went by.
        control = Recorder(loop)
        IdleTimer(loop, timeout, control)
        await control.wait()
        await asyncio.sleep(4 * timeout)
        assert fired.times == []
        assert len(control.times) == 1

    run(factory, scenario)


@pytest.mark.parametrize("factory", LOOPS)
def test_cancel_after_rearm_prevents_firing(factory: LoopFactory) -> None:
    timeout = 0.4

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        fired = Recorder(loop)
        timer = IdleTimer(loop, timeout, fired)
        first_deadline = timer.last + timeout
        await asyncio.sleep(timeout / 2)
        timer.touch()  # new deadline: ~1.5 timeouts from the start
        # Let the first check run (and re-arm), then cancel well before the new deadline.
        await asyncio.sleep(max(0.0, first_deadline - loop.time()) + timeout / 8)
        assert fired.times == []
        timer.cancel()
        await asyncio.sleep(timeout)  # past the re-armed deadline by more than half a timeout
        assert fired.times == []

    run(factory, scenario)
