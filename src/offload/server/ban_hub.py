"""The supervisor's ban jail: offences from every worker in, bans out to every worker.

Each worker sees only the connections the kernel gives it, so counting there would need
``workers`` times as many offences before a ban. Workers batch their offences (a few per
100 ms at most) to the supervisor instead; one :class:`~offload.security.bans.Jail` counts
them all and the bans it decides go back to every worker, which then refuses the client's
connections before the TLS handshake. Sans-IO: the supervisor moves the messages.
"""

from __future__ import annotations

from offload.config.model import BansConfig
from offload.security.bans import Ban, Jail, JailConfig
from offload.server.control import BanList, Offences


def jail_config(config: BansConfig) -> JailConfig:
    return JailConfig(threshold=config.threshold, window=config.window,
                      ban_time=config.ban_time, events=frozenset(config.events),
                      allow=tuple(str(network) for network in config.allow))


class BanHub:
    """One jail for the whole instance, and what the workers must be told."""

    def __init__(self, config: BansConfig) -> None:
        self.config = config
        self.jail = Jail(jail_config(config))
        self.total = 0
        """Bans decided since start (for the metrics)."""
        self.dropped = 0
        """Offences workers could not report (their batch was full)."""

    def offences(self, message: Offences, now: float) -> list[Ban]:
        """Count a worker's offences; the bans they caused."""
        self.dropped += message.dropped
        bans: list[Ban] = []
        for client, event, count in message.reports:
            for _ in range(min(count, self.config.threshold)):
                ban = self.jail.record(client, event, now)
                if ban is not None:
                    bans.append(ban)
                    break
        self.total += len(bans)
        return bans

    def current(self, now: float) -> BanList:
        """Every ban in force, for a worker that has just started."""
        return BanList(added=tuple((ban.client, ban.until) for ban in self.jail.bans(now)))

    def unban(self, client: str) -> str | None:
        """Lift the ban on an address or a key from the list (``2001:db8:1:2::/64``); the key
        it was held under, or None if there was none. ValueError: not an address."""
        key = self.jail.client_key(client)
        return key if self.jail.unban(key) else None
