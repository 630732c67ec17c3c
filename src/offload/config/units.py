"""Durations, sizes and addresses as operators write them (``"10s"``, ``"64KiB"``, ``"[::1]:443"``).

Bare numbers are refused for durations: HAProxy reads them as milliseconds, nginx as seconds,
and a config that means one and gets the other is a classic outage.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network

from offload.config.base import Invalid, show

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
_SIZE_FIX = "write a number with a unit: B, KiB, MiB, GiB (or KB, MB, GB), like \"64KiB\""
_RATE_FIX = ("write events per second, minute or hour, with an optional burst: \"20/s\", "
             "\"100/m\", \"20/s burst 40\"")
_BYTE_RATE_FIX = "write a size per second, like \"500B/s\" or \"1KiB/s\", or \"off\""
_RATE_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*/\s*(s|m|h)(?:\s+burst\s+([0-9]+))?")


def parse_duration(value: object) -> float:
    """Return seconds for ``"500ms"``, ``"10s"``, ``"1m30s"``, ``"2h"``, ``"1d"``."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise Invalid(f"a duration needs a unit (got {show(value)})",
                      "write a number with a unit in quotes, like \"10s\" or \"500ms\"")
    text = value.strip().lower()
    pos, total = 0, 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise Invalid(f"{show(value)} is not a duration",
                      "write a number with a unit: ms, s, m, h, d (\"10s\", \"500ms\", \"1m30s\")")
    return total


def parse_size(value: object) -> int:
    """Return bytes for ``"64KiB"``, ``"1MiB"``, ``"10MB"`` or a plain integer of bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise Invalid(f"{value}: a size cannot be negative", _SIZE_FIX)
        return value
    match = _SIZE_RE.fullmatch(value.strip()) if isinstance(value, str) else None
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise Invalid(f"{show(value)} is not a size", _SIZE_FIX)
    return int(match.group(1)) * _SIZE_UNITS[unit]


def format_size(size: int) -> str:
    """The shortest exact way to write a size back (for summaries): ``"64KiB"``, ``"100B"``."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


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
        raise Invalid(f"{show(value)} is not a rate", _RATE_FIX)
    per_second = float(match.group(1)) / _RATE_UNITS[match.group(2)]
    if per_second <= 0:
        raise Invalid(f"{show(value)}: a rate must be above zero",
                      "to turn a limit off, write \"off\" or leave the key out")
    burst = float(match.group(3)) if match.group(3) else max(1.0, float(math.ceil(per_second)))
    if burst < 1:
        raise Invalid(f"{show(value)}: the burst must be at least 1",
                      "write a burst of 1 or more, like \"20/s burst 40\"")
    return EventRate(per_second, burst)


def parse_byte_rate(value: object) -> float:
    """Bytes per second for ``"500B/s"``, ``"1KiB/s"``; ``"off"`` is 0 (no minimum)."""
    if isinstance(value, str) and value.strip().lower() == "off":
        return 0.0
    size, slash, unit = value.rpartition("/") if isinstance(value, str) else ("", "", "")
    if not slash or unit.strip() != "s":
        raise Invalid(f"{show(value)} is not a byte rate", _BYTE_RATE_FIX)
    try:
        return float(parse_size(size.strip()))
    except ValueError:
        raise Invalid(f"{show(value)} is not a byte rate", _BYTE_RATE_FIX) from None


def format_duration(seconds: float) -> str:
    """The shortest exact way to write a duration back (for summaries)."""
    ms = round(seconds * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0 and ms >= size:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


ALL_ADDRESSES = ""
"""The host of ``":443"``: every address, IPv4 and IPv6 (one dual-stack socket)."""


@dataclass(frozen=True)
class HostPort:
    """A host (name, IPv4 or IPv6 literal without brackets) and a TCP port.

    The host :data:`ALL_ADDRESSES` (written ``":443"``) means every address of the machine,
    IPv4 and IPv6; ``"0.0.0.0"`` every IPv4 address, ``"::"`` every IPv6 address."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def all_addresses(self) -> bool:
        return self.host == ALL_ADDRESSES


def parse_network(value: object) -> IPv4Network | IPv6Network:
    """A CIDR network or a single address (``"10.0.0.0/8"``, ``"192.0.2.7"``)."""
    if isinstance(value, IPv4Network | IPv6Network):
        return value
    fix = "write an address or a CIDR network: \"10.0.0.0/8\", \"192.0.2.7\", \"2001:db8::/32\""
    if not isinstance(value, str):
        raise Invalid(f"{show(value)} is not a network", fix)
    try:
        return ip_network(value, strict=False)
    except ValueError:
        raise Invalid(f"{show(value)} is not an IP address or CIDR network", fix) from None


def port_only_fix(port: str, *, wildcard_ok: bool) -> str:
    if wildcard_ok:
        return (f"write \":{port}\" to listen on every address (IPv4 and IPv6), or a host "
                f"and the port, like \"127.0.0.1:{port}\"")
    return f"write the host and the port, like \"127.0.0.1:{port}\" or \"app.internal:{port}\""


def parse_hostport(value: str, *, wildcard_ok: bool = False) -> HostPort:
    """Parse ``host:port`` and ``[v6]:port``; to listen (``wildcard_ok``), also ``:port`` (every
    address, IPv4 and IPv6) and ``*:port`` (every IPv4 address, as in HAProxy and nginx).

    Every refusal says exactly what is missing or wrong, and how to write it."""
    text = value.strip()
    example = "\":8443\" or \"127.0.0.1:8443\"" if wildcard_ok else "\"127.0.0.1:8080\""
    if not text:
        raise Invalid("the address is empty", f"write a host and a port, like {example}")
    if text.isascii() and text.isdigit():
        raise Invalid(f"{show(value)} is a port without a host",
                      port_only_fix(text, wildcard_ok=wildcard_ok))
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not text[end + 1 :].startswith(":"):
            raise Invalid(f"{show(value)} is not an IPv6 address and port",
                          "write an IPv6 address in brackets, then the port: \"[::1]:443\"")
        host, port_text = text[1:end], text[end + 2 :]
        if ":" not in host:
            raise Invalid(f"{show(value)}: brackets are for IPv6 addresses",
                          f"write \"{host}:{port_text}\" without brackets")
    else:
        host, sep, port_text = text.rpartition(":")
        if ":" in host:
            raise Invalid(f"{show(value)}: an IPv6 address needs brackets around it",
                          "write it like \"[::1]:443\"")
        if not sep:
            raise Invalid(f"{show(value)} has no port",
                          f"write the port after a colon, like \"{text}:8443\"")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        shown = f"[{host}]" if ":" in host else host
        raise Invalid(f"{show(value)}: the port must be a number from 1 to 65535",
                      f"write a port after the colon, like \"{shown}:8443\"")
    if host in ("", "*"):
        if not wildcard_ok:
            raise Invalid(f"{show(value)} has no host",
                          f"write the host before the port, like \"127.0.0.1:{port_text}\"; "
                          "\":PORT\" (every address) is only for listening")
        host = ALL_ADDRESSES if host == "" else "0.0.0.0"
    return HostPort(host, int(port_text))
