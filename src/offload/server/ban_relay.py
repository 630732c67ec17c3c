"""The supervisor's ban wiring: offences from the workers into the jail, bans out to every
worker, the bans in force for a newly forked worker, and the admin API's view and unban.

:class:`~offload.server.ban_hub.BanHub` decides (sans-IO); this part logs, audits and hands
:class:`~offload.server.control.BanList` messages to ``broadcast`` (the worker pool's, or any
other part that must hear of bans).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from offload.config.model import BansConfig
from offload.observe.admin_api import BanInfo
from offload.observe.log import fields
from offload.security.bans import Ban
from offload.server.ban_hub import BanHub
from offload.server.control import BanList, Offences

_log = logging.getLogger("offload.supervisor")
_audit = logging.getLogger("offload.audit")


class BanListener(Protocol):
    """Who else hears of offences, bans and unbans (the fleet: they count for every node)."""

    def offences(self, message: Offences) -> None: ...
    def banned(self, bans: list[Ban]) -> None: ...
    def unbanned(self, key: str, who: str) -> None: ...


class BanRelay:
    """One jail for the instance (none when ``[bans]`` is not configured)."""

    def __init__(self, config: BansConfig | None, broadcast: Callable[[object], None]) -> None:
        self.hub = BanHub(config) if config is not None else None
        self._broadcast = broadcast
        self.fleet: BanListener | None = None
        """Told of every offence, ban and unban too ([fleet])."""

    def sync(self, wanted: BansConfig | None) -> None:
        """A changed ``[bans]`` section starts a new jail; the old bans are lifted."""
        if (self.hub.config if self.hub is not None else None) == wanted:
            return
        if self.hub is not None:
            lifted = tuple(b.client for b in self.hub.jail.bans(time.monotonic()))
            if lifted:
                self._broadcast(BanList(removed=lifted))
        self.hub = BanHub(wanted) if wanted is not None else None

    def offences(self, message: Offences) -> None:
        """A worker's offences: count them, and tell every worker of the bans they caused."""
        if self.hub is None:
            return
        now = time.monotonic()
        bans = self.hub.offences(message, now)
        if self.fleet is not None:  # after the jail: offences of a client it bans count no more
            self.fleet.offences(message)
        if not bans:
            return
        if self.fleet is not None:
            self.fleet.banned(bans)
        self._broadcast(BanList(added=tuple((ban.client, ban.until) for ban in bans)))
        for ban in bans:
            counts = {event: count for event, count in ban.events}
            _log.warning("client banned", extra=fields(
                event="ban", client=ban.client, reason=ban.reason, events=counts,
                ban_seconds=round(ban.until - now)))
            _audit.info("ban", extra=fields(
                audit=True, who="automatic", what=f"ban {ban.client}",
                result=f"banned for {round(ban.until - now)}s after {ban.count} offences",
                events=counts))

    def greeting(self) -> list[object]:
        """What a newly forked worker is told: every ban in force."""
        return [] if self.hub is None else [self.hub.current(time.monotonic())]

    def totals(self) -> tuple[int, int]:
        """Bans decided since start and bans in force (for the metrics)."""
        if self.hub is None:
            return 0, 0
        return self.hub.total, len(self.hub.jail.bans(time.monotonic()))

    def listing(self) -> list[BanInfo] | None:
        """The bans in force, for the admin API; None when bans are not configured."""
        if self.hub is None:
            return None
        now, wall = time.monotonic(), time.time()
        return [BanInfo(ban.client, ban.reason, wall - (now - ban.since),
                        wall + (ban.until - now), ban.count, dict(ban.events))
                for ban in self.hub.jail.bans(now)]

    def unban(self, client: str, who: str) -> str | None:
        """Lift a ban (audited); an error message if there is none to lift."""
        if self.hub is None:
            return "automatic bans are not configured ([bans])"
        try:
            key = self.hub.unban(client)
        except ValueError:
            return f"{client!r} is not an address or network"
        if key is None:
            return f"{client} is not banned"
        self._broadcast(BanList(removed=(key,)))
        if self.fleet is not None:
            self.fleet.unbanned(key, who)
        _audit.info("unban", extra=fields(audit=True, who=who, what=f"unban {key}",
                                          result="done"))
        return None
