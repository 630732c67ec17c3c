"""A backend in TCP mode, in one worker: connect to a server, trying the others in turn."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from offload.errors import BackendTlsError, UpstreamError
from offload.observe.log import fields
from offload.tls.backend_tls import ServerTls
from offload.tls.client_stream import open_tls
from offload.upstream.group import ServerGroup
from offload.upstream.servers import Server
from offload.writes import WriteBatcher

_log = logging.getLogger("offload.upstream")


class Backend(ServerGroup):
    """TCP mode: one backend connection per client connection."""

    async def connect(self, factory: Callable[[], asyncio.Protocol], key: bytes, *,
                      preamble: bytes = b"", server_name: str | None = None,
                      batcher: WriteBatcher | None = None) -> tuple[asyncio.Transport, int]:
        """Connect to the balancer's first choice, trying the others when one fails.

        ``preamble`` (a PROXY protocol header) is the first thing sent, before TLS starts;
        ``server_name`` is the client's SNI, sent on to servers whose ``sni`` is ``auto``.
        The returned server index counts as in use until :meth:`released`. Raises
        :class:`UpstreamError` (retryable: nothing was sent) when none answers, or
        :class:`BackendTlsError` when a server's certificate is refused for the client's SNI.
        """
        loop = asyncio.get_running_loop()
        timeout = self.config.connect_timeout
        for index in self.candidates(key, loop.time()):
            server = self.servers[index]
            tls = self.tls[index] if self.tls is not None else None
            try:
                async with asyncio.timeout(timeout):
                    transport = await self._open(factory, server, tls, preamble=preamble,
                                                 server_name=server_name, batcher=batcher)
            except BackendTlsError as error:
                self.tls_failed(index, error)
                if error.client_named:
                    raise
                continue
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

    @staticmethod
    async def _open(factory: Callable[[], asyncio.Protocol], server: Server,
                    tls: ServerTls | None, *, preamble: bytes, server_name: str | None,
                    batcher: WriteBatcher | None) -> asyncio.Transport:
        loop = asyncio.get_running_loop()
        if tls is not None:
            sni = tls.sni(server_name)
            try:
                return await open_tls(factory(), tls, tls.handshake(sni),
                                      (server.host, server.port), preamble=preamble,
                                      batcher=batcher)
            except BackendTlsError as error:
                error.client_named = sni is not None and tls.client.settings.sni == "auto"
                raise
        if server.unix_path:
            transport, _ = await loop.create_unix_connection(factory, server.unix_path)
        else:
            transport, _ = await loop.create_connection(factory, server.host, server.port)
        if preamble:
            transport.write(preamble)
        return transport


__all__ = ["Backend", "Server"]
