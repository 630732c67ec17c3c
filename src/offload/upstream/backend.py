"""A backend in TCP mode, in one worker: connect to a server, trying the others in turn."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from offload.errors import UpstreamError
from offload.observe.log import fields
from offload.upstream.group import ServerGroup
from offload.upstream.servers import Server

_log = logging.getLogger("offload.upstream")


class Backend(ServerGroup):
    """TCP mode: one backend connection per client connection."""

    async def connect(self, factory: Callable[[], asyncio.Protocol], key: bytes
                      ) -> tuple[asyncio.Transport, int]:
        """Connect to the balancer's first choice, trying the others when one fails.

        The returned server index counts as in use until :meth:`released`. Raises
        :class:`UpstreamError` (retryable: nothing was sent) when none answers.
        """
        loop = asyncio.get_running_loop()
        timeout = self.config.connect_timeout
        for index in self.candidates(key, loop.time()):
            server = self.servers[index]
            try:
                async with asyncio.timeout(timeout):
                    if server.unix_path:
                        transport, _ = await loop.create_unix_connection(factory, server.unix_path)
                    else:
                        transport, _ = await loop.create_connection(factory, server.host,
                                                                    server.port)
            except (OSError, TimeoutError) as error:
                reason = "timeout" if isinstance(error, TimeoutError) else (
                    error.strerror or type(error).__name__)
                self.counters.inc("backend_connect_failed", self.name)
                self.report(index, "connect_failed", loop.time())
                _log.debug("backend connect failed", extra=fields(
                    backend=self.name, server=server.label, address=str(server), reason=reason))
                continue
            self.report(index, "ok", loop.time())
            self.acquired(index)
            return transport, index
        raise UpstreamError(f"no server of backend {self.name} accepted a connection",
                            retryable=True)


__all__ = ["Backend", "Server"]
