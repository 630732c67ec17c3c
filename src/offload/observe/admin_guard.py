"""Whether a request to the admin listener may come from where it says, sans-IO.

A loopback admin listener is reachable from every web page the operator's browser shows: a page
can send a cross-site ``fetch(..., {mode: "no-cors"})`` POST (it cannot read the answer, but the
change is made), and DNS rebinding (a name of the attacker's that first resolves to the
attacker's server, then to 127.0.0.1) lets a page read the API as if it were its own origin. A
token does not help against the first: the browser adds its cached Basic credentials to
cross-site requests too. :class:`AdminGuard` decides from the request's method, Host, Origin,
Fetch Metadata and one custom header alone:

1. **Host** (every request but the health endpoints): the address the connection arrived on, as
   an IP literal, with the listener's port; ``localhost`` when that address is a loopback one;
   or a name listed in ``admin.hosts``. A rebinding page's requests carry the attacker's name
   and get ``421 Misdirected Request`` (RFC 9110 §15.5.20: this server does not answer for that
   name). This is what defeats DNS rebinding: the browser always sends the name it resolved.
2. **Reads** (GET, HEAD) whose Fetch Metadata say another site asked (``Sec-Fetch-Site:
   cross-site`` or ``same-site``) are refused unless they are a top-level navigation (a link to
   the status page still works): another page has no business embedding the API.
3. **Changes** (every other method) are refused with ``403`` when ``Sec-Fetch-Site`` is
   anything but ``same-origin``, when ``Origin`` is present and is not the listener's own
   origin (``null`` included: sandboxed frames and ``file:`` pages send it), or when the
   ``Offload-Admin`` header is missing. A browser sends a custom header cross-origin only after
   a CORS preflight that this listener never approves, so a page on another origin cannot make
   a change even with the operator's credentials riding along; curl and scripts add one header
   (docs/admin.md).

``/healthz`` and ``/readyz`` skip these checks: they change nothing, tell nothing worth
stealing, and a load balancer's health check may send any Host (or none, in HTTP/1.0).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

ADMIN_HEADER = "offload-admin"
"""The header every change must carry (any non-empty value; ``Offload-Admin: 1``)."""
HEALTH_PATHS = frozenset({"/healthz", "/readyz"})
SAFE_METHODS = frozenset({"GET", "HEAD"})
DEFAULT_PORTS = {"http": 80, "https": 443}

_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")
_PORT_RE = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True)
class AllowedHost:
    """A name (or IP literal) the admin listener answers for, from ``admin.hosts``; with
    ``port`` None, on any port (behind a reverse proxy the port is the proxy's)."""

    host: str
    port: int | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: the status, a short reason for the audit log, the answer."""

    status: int
    reason: str
    message: str


def split_authority(text: str) -> tuple[str, int | None] | None:
    """``host[:port]`` (RFC 3986 §3.2.2, the Host header's form) as a normalised host (lower
    case; an IP literal in its canonical form, without brackets) and the port if one is given;
    None when it is not one."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        host, rest = text[1:end], text[end + 1:]
        try:
            address = ip_address(host)
        except ValueError:
            return None
        if not isinstance(address, IPv6Address) or address.scope_id:
            return None
        host = str(address)
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, port_text = text, ""
        rest = ":" + port_text if sep else ""
        canonical = _canonical(host.lower())
        if canonical is None:
            return None
        host = canonical
    if not rest:
        return host, None
    port_text = rest[1:]
    if not rest.startswith(":") or not _PORT_RE.fullmatch(port_text):
        return None
    port = int(port_text)
    return (host, port) if 0 < port < 65536 else None


def _canonical(host: str) -> str | None:
    """An IPv4 literal in dotted-quad form, or a DNS name (RFC 1123 labels); else None."""
    if ":" in host:
        return None
    try:
        address = ip_address(host)
    except ValueError:
        return host if _NAME_RE.fullmatch(host) and len(host) <= 253 else None
    return str(address) if isinstance(address, IPv4Address) else None


def parse_allowed_host(value: object) -> AllowedHost:
    """An ``admin.hosts`` entry: ``"admin.example.com"``, ``"admin.example.com:8404"``,
    ``"192.0.2.7"``, ``"[2001:db8::7]:8404"``."""
    if isinstance(value, AllowedHost):
        return value
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a host name; write \"admin.example.com\" or "
                         "\"admin.example.com:8404\"")
    parsed = split_authority(value.strip())
    if parsed is None:
        raise ValueError(f"{value!r} is not a host name, IP address or host:port; write "
                         "\"admin.example.com\", \"admin.example.com:8404\" or \"[2001:db8::7]\"")
    return AllowedHost(*parsed)


def _local(address: str) -> str:
    """The address a connection arrived on, canonical (an IPv4-mapped IPv6 one as IPv4)."""
    try:
        parsed = ip_address(address.partition("%")[0])
    except ValueError:
        return address.lower()
    if isinstance(parsed, IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(parsed)


def _is_loopback(address: str) -> bool:
    try:
        return ip_address(address).is_loopback
    except ValueError:
        return False


class AdminGuard:
    """The Host, Origin and Fetch Metadata checks of one admin listener (module docstring)."""

    def __init__(self, port: int, hosts: tuple[AllowedHost, ...] = ()) -> None:
        self.port = port
        self.hosts = hosts

    def check(self, method: str, path: str, headers: dict[str, str],
              local: str) -> Refusal | None:
        """None when the request may go on; else why not. ``headers`` has lower-case names;
        ``local`` is the address the connection arrived on (``getsockname()``)."""
        if path in HEALTH_PATHS and method in SAFE_METHODS:
            return None
        host_header = headers.get("host", "")
        authority = split_authority(host_header)
        if authority is None or not self._own_host(*authority, local=_local(local)):
            shown = host_header[:100] or "(none)"
            return Refusal(421, f"foreign Host {shown}", (
                f"this admin listener does not answer for Host {shown}; use its own address "
                "(or localhost) with its port, or list the name in admin.hosts"))
        site = headers.get("sec-fetch-site", "").lower()
        if method in SAFE_METHODS:
            if site in ("cross-site", "same-site") and headers.get(
                    "sec-fetch-mode", "").lower() != "navigate":
                return Refusal(403, f"{site} read", "the admin API does not answer requests "
                               "made by pages of other sites")
            return None
        if site and site != "same-origin":
            return Refusal(403, f"{site} {method}", "changes through the admin API are "
                           "refused when another site's page asks for them")
        origin = headers.get("origin")
        if origin is not None and not self._own_origin(origin, authority):
            return Refusal(403, f"foreign Origin {origin[:100]}", "changes through the admin "
                           "API are refused when another origin's page asks for them")
        if not headers.get(ADMIN_HEADER, "").strip():
            return Refusal(403, "no Offload-Admin header", (
                "a change needs the header Offload-Admin: 1 (curl -H 'Offload-Admin: 1'); "
                "browsers do not let other sites' pages send it"))
        return None

    def _own_host(self, host: str, port: int | None, *, local: str) -> bool:
        for allowed in self.hosts:
            if allowed.host == host and (allowed.port is None or allowed.port == port):
                return True
        if port != self.port and not (port is None and self.port == 80):
            return False
        return host == local or (host == "localhost" and _is_loopback(local))

    @staticmethod
    def _own_origin(origin: str, authority: tuple[str, int | None]) -> bool:
        """Whether ``Origin`` (RFC 6454 §7: ``scheme://host[:port]`` or ``null``) names the
        origin the request was sent to: the Host's, by ``http``, or ``https`` through a
        TLS-terminating proxy."""
        scheme, sep, rest = origin.strip().partition("://")
        default = DEFAULT_PORTS.get(scheme.lower())
        if not sep or default is None:
            return False
        parsed = split_authority(rest)
        if parsed is None:
            return False
        host, port = authority
        origin_host, origin_port = parsed
        return origin_host == host and (origin_port or default) == (port or default)
