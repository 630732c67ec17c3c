"""A backend as a worker uses it: its servers, its balancer, and connecting with failover."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from offload.config.model import BackendConfig
from offload.errors import UpstreamError
from offload.observe.log import fields
from offload.observe.stats import Counters
from offload.upstream.balancer import RoundRobin
from offload.upstream.servers import Server

_log = logging.getLogger("offload.upstream")


@dataclass
class Backend:
    """One backend in one worker; the balancer state is per worker."""

    config: BackendConfig
    servers: tuple[Server, ...]
    counters: Counters
    balancer: RoundRobin = field(init=False)

    def __post_init__(self) -> None:
        self.balancer = RoundRobin(len(self.servers))

    @property
    def name(self) -> str:
        return self.config.name

    async def connect(self, factory: Callable[[], asyncio.Protocol]
                      ) -> tuple[asyncio.Transport, Server]:
        """Connect to the next server, trying the others in turn when one fails.

        Raises :class:`UpstreamError` (retryable: nothing was sent) when none answers.
        """
        loop = asyncio.get_running_loop()
        timeout = self.config.connect_timeout
        for index in self.balancer.order():
            server = self.servers[index]
            try:
                async with asyncio.timeout(timeout):
                    if server.unix_path:
                        transport, _ = await loop.create_unix_connection(factory, server.unix_path)
                    else:
                        transport, _ = await loop.create_connection(factory, server.host, server.port)
            except (OSError, TimeoutError) as error:
                reason = "timeout" if isinstance(error, TimeoutError) else (
                    error.strerror or type(error).__name__)
                self.counters.inc("backend_connect_failed", self.name)
                _log.debug("backend connect failed", extra=fields(
                    backend=self.name, server=server.label, address=str(server), reason=reason))
                continue
            return transport, server
        raise UpstreamError(f"no server of backend {self.name} accepted a connection",
                            retryable=True)
