"""The configuration as typed, frozen models (HAProxy's vocabulary: global, defaults, frontends,
backends, servers).

Built once by :mod:`offload.config.loader`; the running code reads these objects and never a raw
dict. Every key is documented in ``docs/config.md``.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    PlainSerializer,
    PlainValidator,
    Strict,
)

from offload.config.base import HttpOnly, Invalid, Model, form, show
from offload.config.units import (
    EventRate,
    HostPort,
    parse_byte_rate,
    parse_duration,
    parse_hostport,
    parse_network,
    parse_rate,
    parse_size,
    port_only_fix,
)
from offload.observe.admin_guard import AllowedHost, parse_allowed_host
from offload.security.icap_config import IcapConfig
from offload.security.rules_config import RuleSetConfig
from offload.security.waf_config import WafConfig

Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds, written with a unit in the file (``"10s"``)."""
Timeout = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
"""A duration that must be longer than zero."""
Count = Annotated[int, Strict(), Field(ge=1)]
"""A whole number of at least 1, written without quotes."""
Flag = Annotated[bool, Strict()]
"""true or false, written without quotes."""
AlpnName = Annotated[str, Field(min_length=1, max_length=255)]
Size = Annotated[int, BeforeValidator(parse_size)]
"""Bytes, written with a unit in the file (``"64KiB"``)."""
ByteRate = Annotated[float, BeforeValidator(parse_byte_rate)]
"""Bytes per second, written ``"500B/s"``; ``"off"`` is 0."""


def _off_is_none(value: object) -> object:
    """``"off"`` turns a limit off (to override a limit set in ``[defaults]``)."""
    return None if isinstance(value, str) and value.strip().lower() == "off" else value


def _rate_or_off(value: object) -> EventRate | None:
    return None if _off_is_none(value) is None else parse_rate(value)


Rate = Annotated[EventRate | None, PlainValidator(_rate_or_off),
                 PlainSerializer(lambda rate: None if rate is None else str(rate))]
"""Events per time, ``"20/s"`` or ``"20/s burst 40"``; ``"off"`` is no limit."""
Ceiling = Annotated[Count | None, BeforeValidator(_off_is_none)]
"""A whole number of at least 1, or ``"off"``: no limit."""

Mode = Literal["tcp", "http"]
TlsPolicyName = Literal["modern", "intermediate", "legacy"]
ProxyProtocolVersion = Literal["none", "v1", "v2"]
BalanceAlgorithm = Literal["roundrobin", "leastconn", "hash", "random"]
LogLevel = Literal["debug", "info", "warning", "error"]


@dataclass(frozen=True)
class UnixAddress:
    """A backend reached over a Unix domain socket (``unix:/run/app.sock``)."""

    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


ServerAddress = HostPort | UnixAddress


def _address_text(value: object, *, listen: bool) -> str:
    """The text of an address; a number alone is a port without a host, said as such."""
    if isinstance(value, int) and not isinstance(value, bool):
        raise Invalid(f"{value} is a port without a host", port_only_fix(str(value), wildcard_ok=listen))
    if not isinstance(value, str):
        example = "\":443\" or \"127.0.0.1:8443\"" if listen else "\"127.0.0.1:8080\""
        raise Invalid(f"{show(value)} is not an address", f"write a host and a port in quotes, "
                      f"like {example}")
    return value


def _listen_address(value: object) -> HostPort:
    if isinstance(value, HostPort):
        return value
    return parse_hostport(_address_text(value, listen=True), wildcard_ok=True)


def _server_address(value: object) -> ServerAddress:
    if isinstance(value, HostPort | UnixAddress):
        return value
    text = _address_text(value, listen=False)
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path.startswith("/"):
            raise Invalid(f"{show(text)}: a unix socket path must be absolute",
                          "write the whole path, like \"unix:/run/app.sock\"")
        return UnixAddress(path)
    return parse_hostport(text)


def _table_from_string(key: str) -> Any:
    """Let ``"path"`` stand for ``{key = "path"}`` (``certificates = ["site.pem"]``); any
    other value that is not a table too, so that its key's own check explains it."""

    def convert(value: object) -> object:
        return value if isinstance(value, dict | BaseModel) else {key: value}

    return BeforeValidator(convert)


def _status_range(value: object) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str):
        low, _, high = value.partition("-")
        high = high or low
        if low.isascii() and low.isdigit() and high.isascii() and high.isdigit():
            first, last = int(low), int(high)
            if 100 <= first <= last <= 599:
                return first, last
    raise Invalid(f"{show(value)} is not a status or range of statuses",
                  "write a status from 100 to 599, or a range: 200 or \"200-399\"")


_OWN_HEADER = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_NOT_OWN_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade",
    "http2-settings", "transfer-encoding", "content-length", "host", "expect", "content-type",
    "cookie", "authorization", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
    "x-forwarded-port", "forwarded", "x-request-id",
})


def _own_header(value: object) -> str:
    """A field name offload sends itself (``""``: none); never one that frames the request
    or one the client's own fields are judged by."""
    if not isinstance(value, str):
        raise Invalid(f"{show(value)} is not a header field name", "write one in quotes, like "
                      "\"X-JA4\", or \"\" to send none")
    if value and not _OWN_HEADER.fullmatch(value):
        raise Invalid(f"{show(value)} is not a header field name", "write one like \"X-JA4\"")
    if value.lower() in _NOT_OWN_HEADERS:
        raise Invalid(f"{show(value)} already means something to the backend",
                      "use a name of your own, like \"X-JA4\"")
    return value


OwnHeader = Annotated[str, PlainValidator(_own_header)]
"""A field offload adds to requests and drops from clients' (``""``: not sent)."""
ListenAddress = Annotated[HostPort, PlainValidator(_listen_address)]
Network = Annotated[IPv4Network | IPv6Network, PlainValidator(parse_network)]
StatusRange = Annotated[tuple[int, int], PlainValidator(_status_range)]
BackendServerAddress = Annotated[ServerAddress, PlainValidator(_server_address)]


def default_workers() -> int:
    """One worker per CPU this process may run on."""
    return len(os.sched_getaffinity(0)) or 1


class GlobalConfig(Model):
    """Process-wide settings."""

    workers: Annotated[Count, Field(le=1024)] = Field(default_factory=default_workers)
    user: str | None = None
    group: str | None = None
    max_connections: Count = 10_000
    drain_timeout: Timeout = 30.0
    reuseport: Flag = True
    allow_readable_keys: Flag = False
    log_level: LogLevel = "info"
    log_format: Literal["json", "text"] = "json"
    audit_log: str = "stderr"
    """Where admin actions and certificate changes are recorded: stderr, off or a file."""
    tune_malloc: Flag = True


class CertificateRef(Model):
    """A PEM bundle (chain and key), a chain with a separate key, or a directory of bundles.

    An encrypted key's passphrase is read from a file or an environment variable, never
    written in the configuration itself."""

    cert: str = Field(min_length=1)
    key: str | None = None
    passphrase_file: str | None = None
    passphrase_env: Annotated[str, form(r"[A-Za-z_][A-Za-z0-9_]*", "an environment variable name",
                                        "SITE_KEY_PASS")] | None = None


class FrontendLimits(Model):
    """A frontend's flood limits (``[frontends.limits]``), every one off unless set.

    The plain keys hold for the whole frontend and are shared out evenly between the workers;
    the ``_per_ip`` keys hold for one client (an address, IPv6 by its ``ipv6_prefix``) in each
    worker (see docs/security.md)."""

    max_connections: Ceiling = None
    max_connections_per_ip: Ceiling = None
    connection_rate: Rate = None
    connection_rate_per_ip: Rate = None
    handshake_rate: Rate = None
    handshake_rate_per_ip: Rate = None
    handshake_rate_per_fingerprint: Rate = None
    request_rate: Annotated[Rate, HttpOnly()] = None
    request_rate_per_ip: Annotated[Rate, HttpOnly()] = None
    request_rate_per_fingerprint: Annotated[Rate, HttpOnly()] = None
    ipv4_prefix: Annotated[int, Strict(), Field(ge=0, le=32)] = 32
    ipv6_prefix: Annotated[int, Strict(), Field(ge=0, le=128)] = 64
    max_tracked_clients: Count = 65536
    scope: Literal["instance", "fleet"] = "instance"
    """``fleet``: the rate limits count for every instance of the ``[fleet]`` together
    (docs/fleet.md); concurrent connections stay per instance."""
    on_store_failure: Literal["local", "deny"] = "local"
    """With ``scope = "fleet"`` and Redis unreachable: ``local`` keeps per-instance limits,
    ``deny`` refuses what the fleet limits cover."""

    @property
    def any(self) -> bool:
        """Whether any limit is set."""
        return any(getattr(self, name) is not None for name in LIMIT_KEYS)


LIMIT_KEYS = (
    "max_connections", "max_connections_per_ip", "connection_rate", "connection_rate_per_ip",
    "handshake_rate", "handshake_rate_per_ip", "handshake_rate_per_fingerprint", "request_rate",
    "request_rate_per_ip", "request_rate_per_fingerprint",
)


def _table_from_flag(key: str) -> Any:
    """Let ``true``/``false`` stand for ``{key = true}`` (``http2 = false``)."""

    def convert(value: object) -> object:
        return {key: value} if isinstance(value, bool) else value

    return BeforeValidator(convert)


class Http2Config(Model):
    """HTTP/2 on an HTTP-mode frontend (ALPN ``h2``; docs/http2.md): on by default, with limits
    no ordinary client comes near, each counted when it fires."""

    enabled: Flag = True
    max_concurrent_streams: Annotated[int, Strict(), Field(ge=1, le=2**31 - 1)] = 100
    max_requests: Count = 1000
    """Streams per connection; then GOAWAY, and the client opens a new connection."""
    max_header_list_size: Annotated[Size, Field(ge=1024)] = 64 * 1024
    """The decoded request head, each field counted as name + value + 32 (RFC 9113 §6.5.2);
    ``max_header_count`` (frontend) counts its fields, each cookie crumb as one."""
    max_continuations: Annotated[int, Strict(), Field(ge=0, le=1000)] = 8
    """CONTINUATION frames per header block."""
    early_resets: Rate = EventRate(50.0, 200.0)
    """Streams ended early, by the client's RST_STREAM or by offload's answer to a stream
    error the client caused (Rapid Reset, MadeYouReset); over it: GOAWAY."""
    control_frames: Rate = EventRate(10.0, 50.0)
    """SETTINGS and PING frames (each forces a reply), each kind counted on its own."""
    priority_frames: Rate = EventRate(100.0, 1000.0)
    max_empty_frames: Annotated[int, Strict(), Field(ge=1)] = 20
    """Empty DATA frames that do not end the stream, in a row."""
    stream_window: Annotated[Size, Field(ge=1024, le=2**31 - 1)] = 256 * 1024
    """How much of one request body may be on the way before offload has passed it on."""
    connection_window: Annotated[Size, Field(ge=65535, le=2**31 - 1)] = 1024 * 1024
    """The same for all the streams of a connection together."""
    engine: Literal["auto", "nghttp2", "h2"] = "auto"
    """``auto``: libnghttp2 where offload's binding was built, else python-hyper h2."""


class FrontendConfig(Model):
    """Where offload accepts TLS, with which certificates and policy, and where it sends traffic."""

    name: str = Field(min_length=1)
    bind: tuple[ListenAddress, ...] = Field(min_length=1)
    backend: str = Field(min_length=1)
    certificates: tuple[Annotated[CertificateRef, _table_from_string("cert")], ...] = ()
    """May be empty only when ``[acme]`` provides this frontend's certificates."""
    mode: Mode = "http"
    tls_policy: TlsPolicyName = "intermediate"
    alpn: tuple[AlpnName, ...] = ()
    handshake_timeout: Timeout = 10.0
    idle_timeout: Timeout = 300.0
    backlog: Count = 1024
    accept_proxy: Flag = False
    """Read a PROXY protocol header (v1 or v2) before TLS on every connection: the client is
    the address it names (an L4 balancer in front). Needs ``proxy_sources``."""
    proxy_sources: tuple[Network, ...] = ()
    """The balancers that may send it; connections from anywhere else are refused."""
    fingerprints: Flag = False
    """Keep each ClientHello for its JA4 and JA3 fingerprints, computed when first needed: the
    access log, ``ja4``/``ja3`` rules, ``_per_fingerprint`` limits, the fingerprint headers."""
    client_auth: Literal["none", "optional", "required"] = "none"
    client_ca: tuple[str, ...] = ()
    client_crl: tuple[str, ...] = ()
    client_crl_fetch: Flag = False
    """Also check client certificates against the CRLs at their http:// distribution points."""
    client_crl_failure: Literal["hard-fail", "soft-fail"] = "hard-fail"
    """When no current, correctly signed CRL can be had: refuse the client, or let it in."""
    client_crl_timeout: Timeout = 5.0
    client_crl_max_size: Annotated[Size, Field(gt=0)] = 10 * 1024 * 1024
    client_crl_refresh: Timeout = 3600.0
    """Fetch a CRL again after this long even if its nextUpdate is later."""
    client_crl_retry: Timeout = 30.0
    """After a failed fetch, wait this long before trying that URL again."""
    limits: FrontendLimits = Field(default_factory=FrontendLimits)
    send_timeout: Timeout = 60.0
    redirect_http: tuple[ListenAddress, ...] = ()
    """Plain-HTTP listeners answering with a redirect (and ACME http-01), in either mode."""
    # mode http only: an error on a TCP frontend, left out of them when set in [defaults]
    trusted_proxies: Annotated[tuple[Network, ...], HttpOnly()] = ()
    forwarded: Annotated[Flag, HttpOnly()] = False
    hsts: Annotated[str | None, HttpOnly()] = None
    server_header: Annotated[str | None, HttpOnly()] = None
    max_request_line: Annotated[Size, HttpOnly()] = 8 * 1024
    max_header_size: Annotated[Size, HttpOnly()] = 32 * 1024
    max_header_count: Annotated[Count, HttpOnly()] = 100
    max_body_size: Annotated[Size | None, HttpOnly()] = None
    request_timeout: Annotated[Timeout, HttpOnly(unless="redirect_http")] = 10.0
    keepalive_timeout: Annotated[Timeout, HttpOnly()] = 60.0
    body_timeout: Annotated[Timeout, HttpOnly()] = 60.0
    min_body_rate: Annotated[ByteRate, HttpOnly()] = 500.0
    access_log: Annotated[str, HttpOnly()] = "stderr"
    access_log_format: Annotated[Literal["json", "combined"], HttpOnly()] = "json"
    http2: Annotated[Http2Config, HttpOnly(), _table_from_flag("enabled")] = Field(
        default_factory=Http2Config)
    icap: Annotated[IcapConfig | None, HttpOnly()] = None
    """Malware scanning of uploads (and downloads) through an ICAP service
    (docs/inspection.md)."""
    ja4_header: Annotated[OwnHeader, HttpOnly()] = "X-JA4"
    """With fingerprints: the field carrying the client's JA4 to the backend ("": none)."""
    ja3_header: Annotated[OwnHeader, HttpOnly()] = ""
    inspect: Annotated[RuleSetConfig, HttpOnly()] = Field(default_factory=RuleSetConfig)
    """Inspection rules evaluated on every request (mode http only; docs/security.md)."""
    waf: Annotated[WafConfig | None, HttpOnly()] = None
    """The web application firewall (OWASP CRS on libmodsecurity3; docs/inspection.md)."""


def _sni_setting(value: object) -> str:
    """``"auto"``, ``"none"`` or the DNS name to send as SNI (an address cannot be one)."""
    if not isinstance(value, str):
        raise Invalid(f"{show(value)} is not an SNI setting",
                      "write \"auto\", \"none\" or a name in quotes, like \"app.internal\"")
    text = value.strip().rstrip(".").lower()
    if text in ("auto", "none"):
        return text
    try:
        ip_address(text.strip("[]"))
    except ValueError:
        pass
    else:
        raise Invalid(f"{show(value)}: an IP address is never sent as SNI (RFC 6066 §3)",
                      "set sni = \"none\" and verify_name to the address")
    if not _DNS_NAME.fullmatch(text):
        raise Invalid(f"{show(value)} is not a DNS name",
                      "write \"auto\", \"none\" or a name like \"app.internal\"")
    return text


def _verify_name(value: object) -> str:
    """A DNS name or an IP address the backend's certificate must be issued for."""
    if not isinstance(value, str):
        raise Invalid(f"{show(value)} is not a name", "write a name in quotes, like "
                      "\"app.internal\", or an IP address")
    text = value.strip().rstrip(".").lower()
    try:
        return str(ip_address(text.strip("[]")))
    except ValueError:
        pass
    if not _DNS_NAME.fullmatch(text):
        raise Invalid(f"{show(value)} is not a DNS name or an IP address",
                      "write the name the certificate is issued for, like \"app.internal\"")
    return text


_DNS_NAME = re.compile(r"(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)"
                       r"(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*")
SniSetting = Annotated[str, PlainValidator(_sni_setting)]
"""How a backend connection's SNI is chosen: ``"auto"`` (HTTP mode: the request's Host; TCP
mode: the client's SNI), ``"none"``, or a fixed name."""
VerifyName = Annotated[str, PlainValidator(_verify_name)]
ClientCertificate = Annotated[CertificateRef, _table_from_string("cert")]


class BackendTlsKeys(Model):
    """The keys of TLS to the servers, on a backend or (overriding it) on one server.

    Kept in one place so that a backend and a server take exactly the same ones; a server's
    key left unset (None) takes the backend's value (docs/backend-tls.md)."""

    tls: Flag | None = None
    verify: Flag | None = None
    ca: tuple[str, ...] | None = None
    """CA files or directories of PEM files; none: the system trust store."""
    verify_name: VerifyName | None = None
    sni: SniSetting | None = None
    client_certificate: ClientCertificate | None = None
    tls_policy: TlsPolicyName | None = None


BACKEND_TLS_KEYS = tuple(BackendTlsKeys.model_fields)
"""The names of the TLS keys a backend and a server share."""


class ServerConfig(BackendTlsKeys):
    """One backend server."""

    address: BackendServerAddress
    name: str = ""
    weight: Annotated[int, Strict(), Field(ge=0, le=1000)] = 1
    max_connections: Annotated[int, Strict(), Field(ge=0)] = 0
    backup: Flag = False

    @property
    def label(self) -> str:
        """The name to show in logs: the configured name, else the address."""
        return self.name or str(self.address)


class HealthCheckConfig(Model):
    """Active health checks: probe every server, mark it down after ``fall`` failures in a row
    and up again after ``rise`` successes."""

    kind: Literal["http", "tcp"] = "http"
    path: Annotated[str, form(r"/[\x21-\x7e]*", "a path starting with /, without spaces",
                              "/health")] = "/"
    host: str | None = None
    expect: StatusRange = (200, 399)
    interval: Timeout = 5.0
    timeout: Timeout = 2.0
    rise: Count = 2
    fall: Count = 3


class EjectionConfig(Model):
    """Passive health: eject a server for ``duration`` after ``failures`` consecutive failed
    requests (0 turns it off). Connect failures, resets, timeouts and malformed answers count;
    5xx answers only with ``count_5xx`` (a client can make any server answer 500). Passive
    ejection never holds out more than ``max_ejected_percent`` of the servers, and never the
    last one in rotation."""

    failures: Annotated[int, Strict(), Field(ge=0)] = 5
    duration: Timeout = 30.0
    count_5xx: Flag = False
    max_ejected_percent: Annotated[int, Strict(), Field(ge=0, le=100)] = 50


class BackendConfig(BackendTlsKeys):
    """A group of servers and how offload connects to them (TLS keys: :class:`BackendTlsKeys`,
    every one unset meaning plain TCP)."""

    name: str = Field(min_length=1)
    servers: tuple[Annotated[ServerConfig, _table_from_string("address")], ...] = Field(min_length=1)
    balance: BalanceAlgorithm = "roundrobin"
    connect_timeout: Timeout = 5.0
    server_timeout: Timeout = 60.0
    proxy_protocol: ProxyProtocolVersion = "none"
    health_check: HealthCheckConfig | None = None
    ejection: EjectionConfig = Field(default_factory=EjectionConfig)
    pool_max_idle: Annotated[int, Strict(), Field(ge=0)] = 256
    pool_idle_timeout: Timeout = 30.0


class DefaultsConfig(Model):
    """Values every frontend and backend takes unless it sets its own (HAProxy's ``defaults``)."""

    mode: Mode | None = None
    tls_policy: TlsPolicyName | None = None
    alpn: tuple[AlpnName, ...] | None = None
    handshake_timeout: Timeout | None = None
    idle_timeout: Timeout | None = None
    trusted_proxies: tuple[Network, ...] | None = None
    forwarded: Flag | None = None
    hsts: str | None = None
    server_header: str | None = None
    max_request_line: Size | None = None
    max_header_size: Size | None = None
    max_header_count: Count | None = None
    max_body_size: Size | None = None
    request_timeout: Timeout | None = None
    keepalive_timeout: Timeout | None = None
    body_timeout: Timeout | None = None
    min_body_rate: ByteRate | None = None
    send_timeout: Timeout | None = None
    limits: FrontendLimits | None = None
    access_log: str | None = None
    access_log_format: Literal["json", "combined"] | None = None
    balance: BalanceAlgorithm | None = None
    connect_timeout: Timeout | None = None
    server_timeout: Timeout | None = None
    proxy_protocol: ProxyProtocolVersion | None = None


FRONTEND_DEFAULT_KEYS = (
    "mode", "tls_policy", "alpn", "handshake_timeout", "idle_timeout", "trusted_proxies",
    "forwarded", "hsts", "server_header", "max_request_line", "max_header_size",
    "max_header_count", "max_body_size", "request_timeout", "keepalive_timeout", "body_timeout",
    "access_log", "access_log_format", "min_body_rate", "send_timeout", "limits",
)
BACKEND_DEFAULT_KEYS = ("balance", "connect_timeout", "server_timeout", "proxy_protocol")


LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
AcmeChallenge = Literal["tls-alpn-01", "http-01"]
DnsName = Annotated[str, Field(max_length=253),
                    form(r"([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?",
                         "a lower-case DNS name without a wildcard", "www.example.com")]
"""A lower-case DNS name with at least two labels (no wildcard: that needs DNS-01)."""


class AcmeCertificateConfig(Model):
    """One certificate to obtain: its names (the first is its file name and subject)."""

    names: tuple[DnsName, ...] = Field(min_length=1, max_length=100)


class AcmeConfig(Model):
    """Automatic certificates from an ACME CA (RFC 8555): Let's Encrypt unless told otherwise."""

    directory: Annotated[str, form(r"https://\S+", "an https:// URL",
                                   "https://acme-staging-v02.api.letsencrypt.org/directory")
                         ] = LETS_ENCRYPT
    email: Annotated[str, form(r"[^@\s]+@[^@\s]+", "an e-mail address",
                               "ops@example.com")] | None = None
    agree_to_terms: Flag = False
    storage: str = "acme"
    directory_ca: str | None = None
    key_type: Literal["ecdsa", "rsa"] = "ecdsa"
    challenges: tuple[AcmeChallenge, ...] = Field(default=("tls-alpn-01", "http-01"),
                                                  min_length=1)
    frontends: tuple[str, ...] = ()
    retry_after: Timeout = 60.0
    certificates: tuple[AcmeCertificateConfig, ...] = Field(min_length=1)
    shared: Flag = False
    """Keep issued certificates and the account key in the ``[fleet]``'s Redis, encrypted, so
    one node orders each name and every node serves it (docs/fleet.md)."""
    shared_key_file: str | None = None
    """The secret that encrypts them (at least 32 characters), in a file..."""
    shared_key_env: Annotated[str, form(r"[A-Za-z_][A-Za-z0-9_]*",
                                        "an environment variable name",
                                        "OFFLOAD_ACME_KEY")] | None = None
    """... or in this environment variable."""

    def serves(self, frontend: str) -> bool:
        """Whether ``frontend`` serves the ACME certificates (all frontends when none named)."""
        return not self.frontends or frontend in self.frontends


BanEventName = Literal["handshake_failure", "rule_denied", "backend_auth_failure", "limit_hit"]


class BansConfig(Model):
    """Automatic bans, like fail2ban (docs/security.md): ``threshold`` offences from one client
    within ``window`` ban it for ``ban_time``, on every worker."""

    threshold: Annotated[int, Strict(), Field(ge=1, le=100_000)] = 10
    window: Timeout = 60.0
    ban_time: Timeout = 600.0
    events: tuple[BanEventName, ...] = Field(
        default=("handshake_failure", "rule_denied", "backend_auth_failure", "limit_hit"),
        min_length=1)
    allow: tuple[Network, ...] = ()
    """Never banned: the health checker, the operators' own networks."""


ADMIN_DEFAULT_PORT = 8404
"""The admin listener's port when only a host is given (HAProxy's customary stats port)."""


def _admin_address(value: object) -> HostPort:
    """The rules of every listen address, and two shorthands of the admin listener's own: a
    port alone is on 127.0.0.1 (the admin API stays on this machine unless told otherwise),
    a host alone gets port 8404. ``":PORT"`` means every address, as everywhere."""
    if isinstance(value, HostPort):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    text = _address_text(value, listen=True).strip()
    if text.isascii() and text.isdigit():
        text = f"127.0.0.1:{text}"
    elif text and (":" not in text or (text.startswith("[") and text.endswith("]"))):
        text = f"{text}:{ADMIN_DEFAULT_PORT}"
    return _listen_address(text)


def is_loopback(address: HostPort) -> bool:
    """Whether only this machine can reach ``address``."""
    host = address.host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False  # a name, or a wildcard: reachable from elsewhere


class AdminConfig(Model):
    """The admin listener: metrics, health, JSON API and status page (docs/admin.md)."""

    bind: Annotated[HostPort, PlainValidator(_admin_address)] = HostPort(
        "127.0.0.1", ADMIN_DEFAULT_PORT)
    token_file: str | None = None
    """A file holding the access token; requests then need ``Authorization: Bearer``."""
    health_without_token: Flag = False
    """Answer /healthz and /readyz without the token, for balancers that cannot send one."""
    hosts: tuple[Annotated[AllowedHost, PlainValidator(parse_allowed_host)], ...] = ()
    """Host names (``name`` or ``name:port``) the listener answers for besides its own address
    and ``localhost``: a reverse proxy's name, an SSH tunnel's other port (docs/admin.md)."""



def _default_node() -> str:
    """The machine's host name: what an operator calls the node anyway."""
    return socket.gethostname() or "offload"


def _redis_url(value: object) -> object:
    if isinstance(value, str) and not re.fullmatch(r"rediss?://\S+", value.strip()):
        raise Invalid(f"{show(value)} is not a Redis URL",
                      'write redis://host:port/db, or rediss://host:port/db for TLS, like '
                      '"redis://127.0.0.1:6379/0"')
    return value.strip() if isinstance(value, str) else value


def _sentinel_address(value: object) -> object:
    if isinstance(value, str) and not re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}",
                                                   value.strip()):
        raise Invalid(f"{show(value)} is not a Sentinel address",
                      'write host:port, like "10.0.0.5:26379"')
    return value.strip() if isinstance(value, str) else value


FleetName = Annotated[str, Field(min_length=1, max_length=64),
                      form(r"[A-Za-z0-9_.-]+", "a key prefix of letters, digits, _ . -",
                           "offload")]
MAX_TICKET_KEY_LIFETIME = 7 * 86400.0
"""RFC 8446 §4.6.1: a ticket may be used for at most seven days."""


class FleetConfig(Model):
    """Fleet mode (docs/fleet.md): instances behind an L4 balancer share session-ticket keys,
    bans and a node registry through Redis (or Valkey), optionally found through Sentinel."""

    redis: Annotated[str, BeforeValidator(_redis_url)]
    """``redis://host:port/db`` or ``rediss://`` (TLS); with ``sentinels``, only its scheme,
    database and password are used: the address comes from Sentinel."""
    sentinels: tuple[Annotated[str, BeforeValidator(_sentinel_address)], ...] = ()
    master: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    name: FleetName = "offload"
    node: Annotated[str, Field(min_length=1, max_length=128),
                    form(r"[A-Za-z0-9_.:-]+", "a node name of letters, digits, _ . : -",
                         "edge-1")] = Field(default_factory=_default_node)
    connect_timeout: Timeout = 2.0
    operation_timeout: Timeout = 1.0
    tls_ca: str | None = None
    tls_certificate: str | None = None
    tls_key: str | None = None
    password_file: str | None = None
    share_ticket_keys: Flag = True
    ticket_key_rotation: Annotated[float, BeforeValidator(parse_duration),
                                   Field(ge=1.0, le=MAX_TICKET_KEY_LIFETIME)] = 12 * 3600.0
    """A new session-ticket key this often."""
    ticket_key_lifetime: Annotated[float, BeforeValidator(parse_duration),
                                   Field(ge=1.0, le=MAX_TICKET_KEY_LIFETIME)] = 36 * 3600.0
    """How long a key decrypts tickets after it was made (then it is retired)."""


class Config(Model):
    """The whole configuration."""

    global_: GlobalConfig = Field(default_factory=GlobalConfig, alias="global")
    defaults: DefaultsConfig = Field(default_factory=DefaultsConfig)
    frontends: tuple[FrontendConfig, ...] = Field(min_length=1)
    backends: tuple[BackendConfig, ...] = Field(min_length=1)
    acme: AcmeConfig | None = None
    admin: AdminConfig | None = None
    bans: BansConfig | None = None
    fleet: FleetConfig | None = None

    def backend(self, name: str) -> BackendConfig:
        """The backend called ``name`` (the loader has checked that it exists)."""
        for backend in self.backends:
            if backend.name == name:
                return backend
        raise KeyError(name)


__all__ = [
    "BACKEND_TLS_KEYS",
    "AcmeCertificateConfig",
    "AcmeConfig",
    "BackendConfig",
    "BackendTlsKeys",
    "CertificateRef",
    "Config",
    "DefaultsConfig",
    "Duration",
    "FleetConfig",
    "FrontendConfig",
    "FrontendLimits",
    "GlobalConfig",
    "ServerConfig",
    "Size",
    "UnixAddress",
]
