"""A worker's fleet ticket keys: the ring its frontends' base TLS contexts read, installed
through the ticket-key bridge when the first key set arrives from the supervisor.

Until then (Redis not reached yet, or sharing off) OpenSSL's own keys serve, as without
fleet mode: a ticket then resumes only on this node. Updates replace the ring's keys in place;
the callback reads them on the next handshake.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable

from offload.fleet.ticket_schedule import TicketKey
from offload.tls.ticket_keys import TicketBridge, TicketBridgeError, TicketKeyRing

_log = logging.getLogger("offload.fleet")


class WorkerTickets:
    """See the module docstring; ``count(result, key_age)`` counts tickets."""

    def __init__(self, contexts: list[ssl.SSLContext], count: Callable[[str, str], None]) -> None:
        self._contexts = contexts
        self.ring = TicketKeyRing(count)
        self._bridge: TicketBridge | None = None
        """Kept for the life of the worker: it holds the callbacks OpenSSL calls."""
        self._refused = False

    def update(self, keys: tuple[TicketKey, ...]) -> None:
        if self._refused or (not keys and self._bridge is None):
            return
        self.ring.update(keys)  # none left: no tickets (a full handshake each time)
        if self._bridge is not None:
            return
        try:
            bridge = TicketBridge.load()
            for context in self._contexts:
                bridge.install(context, self.ring)
        except TicketBridgeError as error:
            self._refused = True
            _log.error("fleet ticket keys not installed: %s", error)
            return
        self._bridge = bridge
