"""An asyncio loop on a thread of its own, for a process whose main thread blocks (the ACME
process): it owns the process's one Redis link, and the main thread hands it coroutines.

Why not a synchronous Redis client: one connection manager per process, the same code path
(:class:`~offload.fleet.link.FleetLink`: bounded, counted, never raising) as everywhere else,
and background tasks (heartbeat, mirroring) that run while the main thread waits on a CA.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from offload.config.model import FleetConfig
from offload.fleet.link import FleetLink, redis_client

T = TypeVar("T")


class LoopThread:
    """A daemon thread running an event loop with one :class:`FleetLink`."""

    def __init__(self, config: FleetConfig, base_dir: Path | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.link = FleetLink(redis_client(config, base_dir), config)
        self._thread = threading.Thread(target=self._run, name="fleet-link", daemon=True)
        self._tasks: list[concurrent.futures.Future[Any]] = []

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T | None:
        """Run ``coroutine`` on the loop and wait up to ``timeout`` seconds; None if it took
        longer (it is cancelled)."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            return None

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> concurrent.futures.Future[None]:
        """Run ``coroutine`` in the background until it ends or :meth:`stop`."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        self._tasks.append(future)
        return future

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel the background tasks, close the link, stop the loop and the thread."""
        if self._thread.is_alive():
            for task in self._tasks:
                task.cancel()
            with contextlib.suppress(concurrent.futures.TimeoutError,
                                     concurrent.futures.CancelledError):
                asyncio.run_coroutine_threadsafe(self.link.close(), self.loop).result(timeout)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
        if not self._thread.is_alive() and not self.loop.is_closed():
            self.loop.close()


__all__ = ["LoopThread"]
