"""Durations, sizes and addresses as operators write them (``"10s"``, ``"64KiB"``, ``"[::1]:443"``).

Bare numbers are refused for durations: HAProxy reads them as milliseconds, nginx as seconds,
and a config that means one and gets the other is a classic outage.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kib": 1024, "kb": 1000,
    "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
    "g": 1024**3, "gib": 1024**3, "gb": 1000**3,
}
_SIZE_RE = re.compile(r"([0-9]+)\s*([a-zA-Z]*)")
_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*/\s*(s|m|h)(?:\s+burst\s+([0-9]+))?")


def parse_duration(value: object) -> float:
    """Return seconds for ``"500ms"``, ``"10s"``, ``"1m30s"``, ``"2h"``, ``"1d"``."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(
            f"a duration needs a unit, like \"10s\" or \"500ms\" (got {value!r})"
        )
    text = value.strip().lower()
    pos, total = 0, 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(
            f"{value!r} is not a duration; write a number with a unit: ms, s, m, h, d "
            "(\"10s\", \"500ms\", \"1m30s\")"
        )
    return total


def parse_size(value: object) -> int:
    """Return bytes for ``"64KiB"``, ``"1MiB"``, ``"10MB"`` or a plain integer of bytes."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a size; write \"64KiB\", \"1MiB\" or a number of bytes")
    match = _SIZE_RE.fullmatch(value.strip())
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(
            f"{value!r} is not a size; write a number with a unit: B, KiB, MiB, GiB (or KB, MB, GB)"
        )
    return int(match.group(1)) * _SIZE_UNITS[unit]


@dataclass(frozen=True)
class EventRate:
    """A rate limit as written: ``per_second`` on average, ``burst`` at once."""

    per_second: float
    burst: float

    def __str__(self) -> str:
        """As it would be written: whole events per second, minute or hour where possible."""
        for unit, seconds in _RATE_UNITS.items():
            count = self.per_second * seconds
            if abs(count - round(count)) < 1e-9 * max(1.0, count):
                return f"{round(count)}/{unit} burst {self.burst:g}"
        return f"{self.per_second!r}/s burst {self.burst:g}"


def parse_rate(value: object) -> EventRate:
    """A rate of events: ``"20/s"``, ``"100/m"``, ``"500/h"``, with an optional burst
    (``"20/s burst 40"``). Without one the burst is one second's worth, and at least 1."""
    if isinstance(value, EventRate):
        return value
    match = _RATE_RE.fullmatch(value.strip().lower()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{value!r} is not a rate; write events per second, minute or hour, "
                         "with an optional burst: \"20/s\", \"100/m\", \"20/s burst 40\"")
    per_second = float(match.group(1)) / _RATE_UNITS[match.group(2)]
    if per_second <= 0:
        raise ValueError(f"{value!r}: a rate must be above zero; to turn a limit off, "
                         "write \"off\" or leave the key out")
    burst = float(match.group(3)) if match.group(3) else max(1.0, float(math.ceil(per_second)))
    if burst < 1:
        raise ValueError(f"{value!r}: the burst must be at least 1")
    return EventRate(per_second, burst)


def parse_byte_rate(value: object) -> float:
    """Bytes per second for ``"500B/s"``, ``"1KiB/s"``; ``"off"`` is 0 (no minimum)."""
    if isinstance(value, str) and value.strip().lower() == "off":
        return 0.0
    size, slash, unit = value.rpartition("/") if isinstance(value, str) else ("", "", "")
    if not slash or unit.strip() != "s":
        raise ValueError(f"{value!r} is not a byte rate; write a size per second, like "
                         "\"500B/s\" or \"1KiB/s\", or \"off\"")
    try:
        return float(parse_size(size.strip()))
    except ValueError:
        raise ValueError(f"{value!r} is not a byte rate; write a size per second, like "
                         "\"500B/s\" or \"1KiB/s\", or \"off\"") from None


def format_duration(seconds: float) -> str:
    """The shortest exact way to write a duration back (for summaries)."""
    ms = round(seconds * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0 and ms >= size:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


@dataclass(frozen=True)
class HostPort:
    """A host (name, IPv4 or IPv6 literal without brackets) and a TCP port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_network(value: object) -> IPv4Network | IPv6Network:
    """A CIDR network or a single address (``"10.0.0.0/8"``, ``"192.0.2.7"``)."""
    if isinstance(value, IPv4Network | IPv6Network):
        return value
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a network; write a CIDR like \"10.0.0.0/8\"")
    try:
        return ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or CIDR network "
                         "(\"10.0.0.0/8\", \"192.0.2.7\", \"2001:db8::/32\")") from None


def parse_hostport(value: str, *, wildcard_ok: bool = False) -> HostPort:
    """Parse ``host:port``, ``[v6]:port``; with ``wildcard_ok``, ``*:port`` and ``:port`` too."""
    text = value.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not text[end + 1 :].startswith(":"):
            raise ValueError(f"{value!r}: write an IPv6 address as \"[::1]:443\"")
        host, port_text = text[1:end], text[end + 2 :]
        if ":" not in host:
            raise ValueError(f"{value!r}: brackets are for IPv6 addresses, like \"[::1]:443\"")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"{value!r} has no port; write \"host:port\", like \"127.0.0.1:8080\"")
        if ":" in host:
            raise ValueError(f"{value!r}: put an IPv6 address in brackets, like \"[::1]:443\"")
    if host in ("", "*"):
        if not wildcard_ok:
            raise ValueError(f"{value!r} has no host; write \"host:port\"")
        host = "0.0.0.0"
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ValueError(f"{value!r}: the port must be a number from 1 to 65535")
    return HostPort(host, int(port_text))
