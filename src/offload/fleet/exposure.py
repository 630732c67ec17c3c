"""What an operator must hear about how the fleet reaches Redis, at start and from
``offload check``: the store holds the fleet's session-ticket keys (whoever reads them can
decrypt recorded TLS 1.2 sessions that used tickets) and decides bans (whoever writes there
can ban any client fleet-wide).

Warnings, not refusals: a private network between the nodes and Redis (a VPC, a VLAN, a
WireGuard mesh) is a legitimate way to protect it, which offload cannot see from here. A Redis
on the machine itself (loopback) draws no warning.
"""

from __future__ import annotations

from ipaddress import ip_address
from urllib.parse import urlsplit

from offload.config.model import FleetConfig


def _loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False  # a name: reached over the network


def exposure_warnings(config: FleetConfig) -> list[str]:
    """Redis off this machine reached in plain text, or without a password."""
    url = urlsplit(config.redis)
    hosts = ([entry.rpartition(":")[0] for entry in config.sentinels] if config.sentinels
             else [url.hostname or ""])
    remote = ", ".join(host for host in hosts if not _loopback(host))
    if not remote:
        return []
    secrets = ("the fleet's session-ticket keys (whoever reads them can decrypt recorded TLS "
               "sessions) and bans" if config.share_ticket_keys else "the fleet's bans")
    warnings: list[str] = []
    if url.scheme != "rediss":
        warnings.append(f"fleet.redis: {secrets} cross the network to {remote} unencrypted "
                        "(fix: rediss:// with fleet.tls_ca, or keep Redis on a network only "
                        "the nodes reach)")
    if config.password_file is None and url.password is None:
        warnings.append(f"fleet.redis: the Redis at {remote} is used without a password: "
                        f"anyone who reaches it can read or rewrite {secrets} (fix: a Redis "
                        "user with an ACL, its password in fleet.password_file)")
    return warnings


__all__ = ["exposure_warnings"]
