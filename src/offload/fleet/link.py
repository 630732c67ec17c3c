"""The fleet's one Redis connection per process: a client built from ``[fleet]`` and a link that
counts what it costs and never raises into its callers.

Why redis-py (``redis.asyncio``) rather than coredis: both speak RESP with asyncio and follow
Sentinel; redis-py is the client Redis itself maintains, ships in Debian (``python3-redis``),
has the larger user base and fewer dependencies, and nothing here is throughput-bound (the
fleet process makes a few operations per second, none on a request path), so coredis's speed
advantage buys nothing measurable. See docs/fleet.md.

Every operation goes through :meth:`FleetLink.call`: it bounds the time, counts the round
trip, its latency and any failure, and answers :data:`UNAVAILABLE` instead of raising when the
store cannot be reached, so a caller has one clear case to handle ("the store is unavailable:
keep local state") and Redis trouble never becomes a crash.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from offload.config.model import FleetConfig

_log = logging.getLogger("offload.fleet")
T = TypeVar("T")


class _Unavailable:
    """The answer of an operation the store could not carry out (down, slow, failing over)."""

    def __repr__(self) -> str:
        return "UNAVAILABLE"

    def __bool__(self) -> bool:
        return False


UNAVAILABLE: Final = _Unavailable()


def _password(config: FleetConfig, base_dir: Path | None) -> str | None:
    if config.password_file is None:
        return None
    path = Path(config.password_file)
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    return path.read_text(encoding="utf-8").strip() or None


def _tls_options(config: FleetConfig, base_dir: Path | None) -> dict[str, Any]:
    def where(name: str | None) -> str | None:
        if name is None:
            return None
        path = Path(name)
        return str(base_dir / path if base_dir is not None and not path.is_absolute() else path)

    return {"ssl": True, "ssl_cert_reqs": "required", "ssl_ca_certs": where(config.tls_ca),
            "ssl_certfile": where(config.tls_certificate),
            "ssl_keyfile": where(config.tls_key)}


def redis_client(config: FleetConfig, base_dir: Path | None = None) -> aioredis.Redis:
    """An asyncio Redis client for ``[fleet]``: straight to ``redis`` or, with ``sentinels``,
    to whichever server they name as ``master`` (asked again after every connection error, so
    a failover is followed without a restart). Connects lazily; reads the password file now
    (``OSError`` if it cannot). Relative paths are taken from ``base_dir``."""
    url = urlsplit(config.redis)
    options: dict[str, Any] = {
        "socket_connect_timeout": config.connect_timeout,
        "socket_timeout": config.operation_timeout,
        "retry": Retry(NoBackoff(), 0),  # the link decides when to try again, not the client
        "decode_responses": False,
        "client_name": f"offload-{config.node}"[:100],
    }
    password = _password(config, base_dir) or (unquote(url.password) if url.password else None)
    if password is not None:
        options["password"] = password
    if url.username:
        options["username"] = unquote(url.username)
    tls = url.scheme == "rediss"
    if not config.sentinels:
        if tls:
            options.update({k: v for k, v in _tls_options(config, base_dir).items()
                            if k != "ssl"})
        return aioredis.Redis.from_url(config.redis, **options)
    if tls:
        options.update(_tls_options(config, base_dir))
    db = url.path.strip("/")
    options["db"] = int(db) if db.isdigit() else 0
    sentinels = []
    for entry in config.sentinels:
        host, _, port = entry.rpartition(":")
        sentinels.append((host.strip("[]"), int(port)))
    sentinel_options = {key: value for key, value in options.items()
                        if key in ("socket_connect_timeout", "socket_timeout", "retry")
                        or key.startswith("ssl")}  # rediss: the sentinels are asked over TLS
    sentinel = Sentinel(sentinels, sentinel_kwargs=sentinel_options,  # type: ignore[no-untyped-call]
                        **options)
    assert config.master is not None  # checked with the configuration
    client: aioredis.Redis = sentinel.master_for(config.master)
    return client


@dataclass
class LinkStats:
    """What the link has cost since the process started (for metrics and /api/fleet)."""

    round_trips: dict[str, int] = field(default_factory=dict)
    """Operations sent, by name."""
    failures: int = 0
    latency: float | None = None
    """Seconds, smoothed (EWMA 1/8) over successful round trips."""
    last_error: str | None = None
    up: bool = False
    outages: int = 0
    """Times the store went from reachable to unreachable."""

    @property
    def total(self) -> int:
        return sum(self.round_trips.values())


class FleetLink:
    """One per process: runs operations on the client, bounded in time and counted."""

    def __init__(self, client: aioredis.Redis, config: FleetConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.config = config
        self.stats = LinkStats()
        self._clock = clock
        self._deadline = config.connect_timeout + config.operation_timeout

    async def call(self, name: str, operation: Callable[[aioredis.Redis], Awaitable[T]]
                   ) -> T | _Unavailable:
        """Run ``operation(client)``; its result, or :data:`UNAVAILABLE` when the store failed
        (logged once per outage, counted every time)."""
        stats = self.stats
        stats.round_trips[name] = stats.round_trips.get(name, 0) + 1
        started = self._clock()
        try:
            async with asyncio.timeout(self._deadline):
                result = await operation(self.client)
        except (RedisError, OSError, TimeoutError, ValueError) as error:
            self.failed(name, error)
            return UNAVAILABLE
        elapsed = self._clock() - started
        stats.latency = elapsed if stats.latency is None else (
            stats.latency + (elapsed - stats.latency) / 8)
        if not stats.up:
            stats.up = True
            _log.info("fleet store reachable", extra={"fields": {
                "event": "fleet_store_up", "latency_ms": round(elapsed * 1000, 2)}})
        return result

    def failed(self, name: str, error: BaseException) -> None:
        """Count a failure seen outside :meth:`call` (the subscription, say)."""
        stats = self.stats
        stats.failures += 1
        stats.last_error = f"{name}: {type(error).__name__}: {error}"[:300]
        if stats.up or stats.outages == 0:
            stats.outages += 1
            _log.warning("fleet store unavailable; serving with local state", extra={
                "fields": {"event": "fleet_store_down", "operation": name,
                           "reason": stats.last_error}})
        stats.up = False

    async def close(self) -> None:
        try:
            await self.client.aclose()
        except (RedisError, OSError):
            pass
