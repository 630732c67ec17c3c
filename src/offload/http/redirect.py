"""The plain-HTTP listener of a frontend: every request gets a 308 to the same URL on HTTPS.

It reads requests with the same strict parser as the TLS side, so a malformed request gets a
400 rather than a redirect built from garbage.
"""

from __future__ import annotations

import asyncio
from typing import cast

from offload.errors import ProtocolError
from offload.observe.stats import Counters
from offload.proto import http_rewrite as rewrite
from offload.proto.http1 import HttpLimits, RequestParser
from offload.proto.http_types import Request
from offload.timers import Deadline


class RedirectProtocol(asyncio.Protocol):
    """One plain-HTTP client connection: answer each request with a redirect to HTTPS."""

    def __init__(self, https_port: int, request_timeout: float, counters: Counters,
                 frontend: str) -> None:
        self._https_port = https_port
        self._timeout = request_timeout
        self._counters = counters
        self._frontend = frontend
        self._parser = RequestParser(HttpLimits())
        self._transport: asyncio.Transport | None = None
        self._deadline: Deadline | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        loop = asyncio.get_running_loop()
        self._deadline = Deadline(loop, self._close)
        self._deadline.set(loop.time() + self._timeout)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        try:
            events = self._parser.feed(data)
        except ProtocolError as error:
            transport.write(rewrite.error_response(error.status))
            self._close()
            return
        for event in events:
            if isinstance(event, Request):
                self._counters.inc("redirect", self._frontend)
                transport.write(rewrite.redirect_response(event.host, event.target,
                                                          self._https_port))
                # one answer per connection: a redirect is the end of the conversation
                self._close()
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()

    def _close(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        if self._transport is not None:
            self._transport.close()
