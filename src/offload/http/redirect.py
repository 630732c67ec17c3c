"""The plain-HTTP listener of a frontend: every request gets a 308 to the same URL on HTTPS.

It reads requests with the same strict parser as the TLS side, so a malformed request gets a
400 rather than a redirect built from garbage. The one exception: when ACME obtains this
frontend's certificates, ``/.well-known/acme-challenge/<token>`` answers HTTP-01 validations
(RFC 8555 §8.3) from the storage directory, and 404 for any token not pending.
"""

from __future__ import annotations

import asyncio
from typing import cast

from offload.acme.storage import AcmeStorage
from offload.errors import ProtocolError
from offload.observe.stats import Counters
from offload.proto import http1_write as rewrite
from offload.proto.http1 import HttpLimits, RequestParser
from offload.proto.http_types import Request
from offload.timers import Deadline

CHALLENGE_PREFIX = b"/.well-known/acme-challenge/"


def challenge_response(storage: AcmeStorage, target: bytes) -> bytes:
    """The answer to an HTTP-01 validation request (the key authorization), or a 404."""
    token = target[len(CHALLENGE_PREFIX):].decode("ascii", "replace")
    answer = storage.http01(token)
    if answer is None:
        return rewrite.error_response(404, detail="no ACME challenge is pending for this token")
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
            b"Cache-Control: no-store\r\nConnection: close\r\n\r\n" % len(answer)) + answer


class RedirectProtocol(asyncio.Protocol):
    """One plain-HTTP client connection: answer each request with a redirect to HTTPS."""

    def __init__(self, https_port: int, request_timeout: float, counters: Counters,
                 frontend: str, acme: AcmeStorage | None = None) -> None:
        self._https_port = https_port
        self._acme = acme
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
                if self._acme is not None and event.target.startswith(CHALLENGE_PREFIX):
                    self._counters.inc("acme_challenge", self._frontend, "http-01")
                    transport.write(challenge_response(self._acme, event.target))
                    self._close()
                    return
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
