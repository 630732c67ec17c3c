"""Where every security decision goes: a counter, one structured log line, a ban offence.

A refused connection, a rate-limited request, a rule match, a slow client cut off, a failed
client certificate: each calls :meth:`SecurityEvents.decision` once. The counter is always
exact; the log lines are capped per kind and cause (a flood must not become a log flood), and
the first line after a quiet spell says how many were left out. Offences (events a ban may
count) go to the ``offence`` sink, which feeds the ban jail.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from offload.observe.log import CappedLog, fields
from offload.observe.stats import Counters
from offload.security.bans import BanEvent

_log = logging.getLogger("offload.security")

LOG_LINES_PER_SECOND = 10.0
"""Log lines per second allowed for each (kind, cause), with a burst of twice as many."""

OffenceSink = Callable[[str, BanEvent], None]
"""Called with the client address and the ban event an offence counts as."""


class SecurityEvents:
    """The security decisions of one worker (for every frontend)."""

    def __init__(self, counters: Counters, offence: OffenceSink | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.counters = counters
        self.offence = offence
        self._lines = CappedLog(LOG_LINES_PER_SECOND, clock)
        """Capped per (kind, cause)."""

    def decision(self, kind: str, cause: str, frontend: str, client: str, *,
                 offence: BanEvent | None = None, **details: object) -> None:
        """Count and log one decision; ``kind`` says what was done (``connection_refused``,
        ``rate_limited``, ``rule_denied`` ...), ``cause`` the limit, rule or reason behind it."""
        self.counters.inc("security", frontend, kind, cause)
        if offence is not None and self.offence is not None:
            self.offence(client, offence)
        suppressed = self._lines.admit((kind, cause))
        if suppressed < 0:
            return
        extra = {"event": kind, "cause": cause, "frontend": frontend, "client": client,
                 **details}
        if suppressed:
            extra["suppressed"] = suppressed
        _log.warning("%s: %s", kind.replace("_", " "), cause, extra=fields(**extra))
