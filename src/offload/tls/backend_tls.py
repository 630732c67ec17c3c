"""TLS to the backend servers: settings, contexts, the choice of SNI, and session resumption.

Why verification is on by default: an offloader that re-encrypts without checking the server's
certificate only moves the man in the middle one hop inward. So ``tls = true`` verifies the
chain against the system trust store (or ``ca``) with OpenSSL's unlimited default depth, and
the certificate's name against the name the connection is for:

    verify_name set           that name (a DNS name or an IP address)
    else an SNI is sent       the SNI
    else                      the server's address as written in the configuration

When that name is also the SNI (or an IP address with no SNI) OpenSSL checks it during the
handshake (``check_hostname``); otherwise offload checks it right after the handshake, before
the first request byte is sent (:func:`certificate_matches`). ``verify = false`` must be
written out, and is announced at start, in ``offload check``, the metrics and the status page.

Everything that can fail (CA files, the client certificate and its key) is read once by the
supervisor (:func:`load_backend_tls`), before any worker starts; the contexts are built there
too and inherited by the workers. Sessions are per worker: one per server and SNI, offered on
the next connection so that most backend handshakes are resumed ones.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from offload.config.model import BackendConfig, CertificateRef, Config, ServerConfig, UnixAddress
from offload.errors import Issue
from offload.tls.certs import CERT_SUFFIXES, LoadedCertificate, load_into_context
from offload.tls.groups import restrict_groups
from offload.tls.policy import POLICIES
from offload.tls.sources import FrontendSources

HTTP_BACKEND_ALPN = ("http/1.1",)
"""What offload offers an HTTP-mode backend (it speaks HTTP/1.1 to servers)."""
MAX_SESSIONS = 256
"""Sessions kept per server (one per SNI): SNI follows the clients' Host, so it is bounded."""
MAX_SNI_MEMO = 1024


@dataclass(frozen=True)
class TlsSettings:
    """One server's TLS settings: the backend's keys, overridden by the server's own."""

    verify: bool = True
    ca: tuple[str, ...] = ()
    verify_name: str | None = None
    sni: str = "auto"
    client_certificate: CertificateRef | None = None
    tls_policy: str = "intermediate"

    def describe(self, fallback_name: str) -> str:
        """What the server will be checked for, for ``offload check`` and the logs."""
        if not self.verify:
            trust = "NOT VERIFIED (verify = false)"
        else:
            store = ", ".join(self.ca) if self.ca else "the system trust store"
            if self.verify_name:
                name = self.verify_name
            elif self.sni == "auto":
                name = f"the SNI sent (else {fallback_name})"
            else:
                name = fallback_name if self.sni == "none" else self.sni
            trust = f"verified against {store}, name {name}"
        sni = {"auto": "auto (the request's Host; TCP mode: the client's SNI)",
               "none": "none"}.get(self.sni, f"\"{self.sni}\"")
        client = (f", client certificate {self.client_certificate.cert}"
                  if self.client_certificate is not None else "")
        return f"TLS ({self.tls_policy}) {trust}; SNI {sni}{client}"


def effective_settings(backend: BackendConfig, server: ServerConfig) -> TlsSettings | None:
    """The server's TLS settings, or None when it is reached over plain TCP."""
    def pick(name: str) -> object:
        own = getattr(server, name)
        return own if own is not None else getattr(backend, name)

    if not pick("tls"):
        return None
    defaults = TlsSettings()
    values = {name: pick(name) for name in ("verify", "ca", "verify_name", "sni",
                                            "client_certificate", "tls_policy")}
    return TlsSettings(**{name: value if value is not None else getattr(defaults, name)
                          for name, value in values.items()})  # type: ignore[arg-type]


def fallback_name(server: ServerConfig) -> str:
    """The name a certificate is checked for when neither SNI nor ``verify_name`` gives one:
    the server's host as written (a name, or an address)."""
    address = server.address
    return "" if isinstance(address, UnixAddress) else address.host.strip("[]").lower()


# ------------------------------------------------------------------ names


def is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def sni_from_host(host: bytes) -> str | None:
    """The SNI for a request's authority (``host[:port]``): the host in lower case without a
    trailing dot; None for an address (never sent as SNI, RFC 6066 §3) or no Host at all.
    The parser has already checked the authority's form (RFC 3986 §3.2.2)."""
    if not host or host.startswith(b"["):
        return None
    name = host.partition(b":")[0].rstrip(b".").lower()
    if not name:
        return None
    text = name.decode("ascii", "replace")
    if text.replace(".", "").isdigit() and is_address(text):
        return None
    return text


def _dns_match(pattern: str, name: str) -> bool:
    """RFC 6125 §6.4.3, as OpenSSL does with partial wildcards off: ``*`` only as the whole
    leftmost label, matching exactly one label, and never against an address."""
    pattern = pattern.lower().rstrip(".")
    if pattern == name:
        return True
    if not pattern.startswith("*.") or "*" in pattern[2:]:
        return False
    head, _, rest = name.partition(".")
    return bool(head) and rest == pattern[2:] and rest.count(".") >= 1


def certificate_matches(der: bytes, name: str) -> bool:
    """Whether the certificate (DER) is issued for ``name`` (a DNS name or an address), by its
    subjectAltName only, as browsers do (RFC 6125 §6.4.4: the CN is not looked at)."""
    try:
        certificate = x509.load_der_x509_certificate(der)
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    if is_address(name):
        wanted = ipaddress.ip_address(name)
        return any(address == wanted for address in san.get_values_for_type(x509.IPAddress))
    return any(_dns_match(pattern, name) for pattern in san.get_values_for_type(x509.DNSName))


# ------------------------------------------------------------------ failures

_VERIFY_REASONS = {  # OpenSSL's X509_V_ERR_* codes -> why a server certificate was refused
    10: "expired", 9: "not_yet_valid",
    2: "unknown_ca", 18: "unknown_ca", 19: "unknown_ca", 20: "unknown_ca", 21: "unknown_ca",
    62: "name_mismatch", 64: "name_mismatch", 23: "revoked", 26: "wrong_purpose",
}
VERIFY_REASONS = frozenset(_VERIFY_REASONS.values()) | {"bad_certificate"}
"""The reasons that mean the server's certificate was refused (the rest: the handshake)."""


def classify_failure(error: BaseException) -> str:
    """A short, low-cardinality reason for a failed backend handshake (counters, logs)."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return _VERIFY_REASONS.get(error.verify_code, "bad_certificate")
    reason = str(getattr(error, "reason", None) or "")
    if isinstance(error, ssl.SSLEOFError | ssl.SSLZeroReturnError | ConnectionError):
        return "closed_in_handshake"
    if "CERTIFICATE_REQUIRED" in reason or reason in (
            "SSLV3_ALERT_BAD_CERTIFICATE", "TLSV1_ALERT_UNKNOWN_CA",
            "SSLV3_ALERT_CERTIFICATE_UNKNOWN", "TLSV1_ALERT_ACCESS_DENIED",
            "SSLV3_ALERT_CERTIFICATE_EXPIRED", "SSLV3_ALERT_CERTIFICATE_REVOKED"):
        return "client_certificate_refused"
    if reason in ("WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE",
                  "HTTP_REQUEST"):
        return "not_tls"
    if reason in ("UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION",
                  "NO_PROTOCOLS_AVAILABLE", "VERSION_TOO_LOW"):
        return "protocol_version"
    if reason in ("SSLV3_ALERT_HANDSHAKE_FAILURE", "NO_SHARED_CIPHER", "NO_CIPHERS_AVAILABLE",
                  "TLSV1_ALERT_INSUFFICIENT_SECURITY"):
        return "handshake_failure"
    return "tls_error"


# ------------------------------------------------------------------ contexts


def client_context(settings: TlsSettings, authorities: str | None, alpn: tuple[str, ...],
                   certificate: LoadedCertificate | None, *, check_hostname: bool
                   ) -> ssl.SSLContext:
    """A client context for these settings: the policy's versions and suites, verification
    (``authorities``: PEM CA certificates; None: the system trust store), ALPN and the client
    certificate. Verification depth is OpenSSL's default (100), so long chains verify."""
    policy = POLICIES[settings.tls_policy]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = policy.minimum
    context.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    context.set_ciphers(policy.ciphers)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.options &= ~ssl.OP_NO_TICKET
    if settings.verify:
        context.check_hostname = check_hostname
        context.verify_mode = ssl.CERT_REQUIRED
        if authorities is None:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            context.load_verify_locations(cadata=authorities)
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(list(alpn))
    if certificate is not None:
        load_into_context(context, certificate)
    restrict_groups(context)
    return context


@dataclass
class TlsClient:
    """The contexts one set of settings needs, shared by every server that has them.

    ``named`` lets OpenSSL check the name during the handshake; ``unnamed`` verifies the chain
    only, for connections whose name offload checks itself. A new client certificate (hot
    reload) replaces both and bumps ``generation``: pooled connections and sessions made with
    the old one are never used again."""

    settings: TlsSettings
    alpn: tuple[str, ...]
    authorities: str | None
    """The CA certificates (PEM), read once; None: the system trust store."""
    certificate: LoadedCertificate | None = None
    certificate_path: str = ""
    """The client certificate's file, as the supervisor watches it ("" without one)."""
    generation: int = 0
    named: ssl.SSLContext = field(init=False, repr=False)
    unnamed: ssl.SSLContext = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._build()

    def _build(self) -> None:
        self.named = client_context(self.settings, self.authorities, self.alpn,
                                    self.certificate, check_hostname=True)
        self.unnamed = client_context(self.settings, self.authorities, self.alpn,
                                      self.certificate, check_hostname=False)

    def replace_certificate(self, certificate: LoadedCertificate) -> None:
        """Use a new client certificate from now on (raises ssl.SSLError if it cannot)."""
        previous = self.certificate
        self.certificate = certificate
        try:
            self._build()
        except (ssl.SSLError, OSError):
            self.certificate = previous
            raise
        self.generation += 1


@dataclass(frozen=True)
class Handshake:
    """How to open one TLS connection: the context, the SNI, and the name to check after the
    handshake when OpenSSL did not check it (None: nothing more to check)."""

    context: ssl.SSLContext
    server_hostname: str | None
    check_after: str | None
    key: tuple[str | None, int]
    """What a pooled connection must match to be reused: (SNI, certificate generation)."""


class ServerTls:
    """TLS to one server in one worker: how each connection is made, and its sessions."""

    __slots__ = ("_hosts", "_keys", "_memo", "client", "fallback_name", "sessions")

    def __init__(self, client: TlsClient, fallback: str) -> None:
        self.client = client
        self.fallback_name = fallback
        self.sessions: dict[tuple[str | None, int], ssl.SSLSession] = {}
        """The newest session per (SNI, certificate generation), offered on reconnects."""
        self._memo: dict[tuple[str | None, int], Handshake] = {}
        self._hosts: dict[bytes, str | None] = {}
        """The SNI of each Host seen lately (a connection mostly asks for one)."""
        self._keys: dict[bytes, tuple[str | None, int]] = {}
        """The pool key of each Host seen lately (valid while its generation is current)."""

    @property
    def verified(self) -> bool:
        return self.client.settings.verify

    def sni(self, host: bytes | str | None) -> str | None:
        """The SNI a connection carries: the fixed one, none, or (``auto``) the request's Host
        (HTTP mode, bytes) or the client's SNI (TCP mode, str)."""
        mode = self.client.settings.sni
        if mode == "none":
            return None
        if mode != "auto":
            return mode
        if isinstance(host, bytes):
            memo = self._hosts
            if host in memo:
                return memo[host]
            if len(memo) >= MAX_SNI_MEMO:
                memo.clear()
            sni = memo[host] = sni_from_host(host)
            return sni
        return host.lower().rstrip(".") if host else None

    def pool_key(self, host: bytes) -> tuple[str | None, int]:
        """The key of the pooled connections a request to ``host`` may reuse: the same as
        ``handshake(sni(host)).key``, in one look-up (it is asked on every request)."""
        key = self._keys.get(host)
        if key is not None and key[1] == self.client.generation:
            return key
        key = self.handshake(self.sni(host)).key
        if len(self._keys) >= MAX_SNI_MEMO:
            self._keys.clear()
        self._keys[host] = key
        return key

    def handshake(self, sni: str | None) -> Handshake:
        """The plan for a connection carrying ``sni`` (memoised: one per SNI)."""
        client = self.client
        key = (sni, client.generation)
        plan = self._memo.get(key)
        if plan is not None:
            return plan
        settings = client.settings
        expected = settings.verify_name or sni or self.fallback_name
        if not settings.verify:
            plan = Handshake(client.unnamed, sni, None, key)
        elif expected == sni:
            plan = Handshake(client.named, sni, None, key)
        elif sni is None and is_address(expected):
            plan = Handshake(client.named, expected, None, key)  # Python sends no SNI for it
        else:
            plan = Handshake(client.unnamed, sni, expected, key)
        if len(self._memo) >= MAX_SNI_MEMO:
            self._memo.clear()
        self._memo[key] = plan
        return plan

    def session(self, key: tuple[str | None, int]) -> ssl.SSLSession | None:
        return self.sessions.get(key)

    def keep_session(self, key: tuple[str | None, int], session: ssl.SSLSession) -> None:
        sessions = self.sessions
        if key not in sessions and len(sessions) >= MAX_SESSIONS:
            del sessions[next(iter(sessions))]  # the oldest SNI goes first
        sessions[key] = session

    def forget_sessions(self) -> None:
        self.sessions.clear()
        self._memo.clear()


# ------------------------------------------------------------------ loading


def _ca_files(path: Path) -> list[Path]:
    if path.is_dir():
        return [entry for entry in sorted(path.iterdir())
                if entry.suffix.lower() in CERT_SUFFIXES and entry.is_file()]
    return [path]


def read_authorities(names: tuple[str, ...], base_dir: Path, where: str
                     ) -> tuple[str | None, int, list[Issue]]:
    """The CA certificates of ``ca`` as one PEM text (None: the system trust store), how many,
    and problems. A directory stands for every ``.pem``, ``.crt`` and ``.cer`` file in it."""
    if not names:
        return None, 0, []
    pem: list[str] = []
    issues: list[Issue] = []
    count = 0
    for index, name in enumerate(names):
        here = f"{where}.ca[{index}]"
        path = base_dir / name
        try:
            files = _ca_files(path)
        except OSError as error:
            issues.append(Issue(here, f"cannot list {path}: {error.strerror}",
                                "check the path and its permissions"))
            continue
        if not files:
            issues.append(Issue(here, f"{path} holds no .pem, .crt or .cer file",
                                "put the CA certificates there in PEM format"))
        for file in files:
            try:
                data = file.read_bytes()
            except OSError as error:
                issues.append(Issue(here, f"cannot read {file}: {error.strerror}",
                                    "check the path and its permissions"))
                continue
            try:
                certificates = x509.load_pem_x509_certificates(data)
            except ValueError:
                issues.append(Issue(here, f"{file} holds no PEM certificate",
                                    "give the CA certificate(s) in PEM format"))
                continue
            count += len(certificates)
            pem.extend(c.public_bytes(Encoding.PEM).decode("ascii")
                       for c in certificates)
    return "".join(pem), count, issues


@dataclass
class BackendTls:
    """Every backend's TLS, loaded: per (backend, mode) one entry per server (None: plain)."""

    servers: dict[tuple[str, str], tuple[ServerTls | None, ...]] = field(default_factory=dict)
    clients: list[TlsClient] = field(default_factory=list)
    sources: dict[str, FrontendSources] = field(default_factory=dict)
    """The client certificate files, by path, for the supervisor to watch and reload."""
    descriptions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Per backend, what each server will verify (``offload check``)."""

    def for_backend(self, name: str, mode: str) -> tuple[ServerTls | None, ...] | None:
        """The servers' TLS for a backend used in ``mode`` (None: no server uses TLS)."""
        return self.servers.get((name, mode))

    def clients_using(self, path: str) -> Iterator[TlsClient]:
        return (client for client in self.clients if client.certificate_path == path)

    def watch_paths(self) -> list[str]:
        """The client certificate files (and key files) to watch for changes."""
        return [path for sources in self.sources.values() for path in sources.watch_paths()]

    def refresh(self, now: dt.datetime, *, settle: float, clock: float) -> CertificateRefresh:
        """Look at the client certificate files again (in the supervisor): what changed and
        has settled is loaded with the same checks as at start; a broken or removed file
        is rejected and the certificate in use stays."""
        outcome = CertificateRefresh()
        for path, sources in self.sources.items():
            current = next(self.clients_using(path), None)
            if current is None or current.certificate is None:
                continue
            result = sources.refresh(now, {path: (current.certificate,)}, settle=settle,
                                     clock=clock)
            outcome.unsettled |= result.unsettled
            outcome.rejected += result.rejected
            outcome.warnings += result.warnings
            group = result.changed.get(path, ())
            if group is None:
                outcome.rejected.append((path, "the file is gone; the certificate loaded "
                                         "before stays in use"))
            elif group:
                outcome.changed[path] = group[0]
        return outcome

    def use_certificate(self, path: str, certificate: LoadedCertificate) -> None:
        """Make every connection opened from now on present ``certificate`` (from ``path``);
        sessions and pooled connections made with the previous one are not used again.
        Raises ssl.SSLError if OpenSSL refuses it (the previous one then stays)."""
        changed = set()
        for client in self.clients_using(path):
            client.replace_certificate(certificate)
            changed.add(id(client))
        for servers in self.servers.values():
            for server in servers:
                if server is not None and id(server.client) in changed:
                    server.forget_sessions()


@dataclass
class CertificateRefresh:
    """What a look at the client certificate files found."""

    changed: dict[str, LoadedCertificate] = field(default_factory=dict)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    unsettled: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)


def _modes(config: Config) -> dict[str, set[str]]:
    modes: dict[str, set[str]] = {}
    for frontend in config.frontends:
        modes.setdefault(frontend.backend, set()).add(frontend.mode)
    return modes


def load_backend_tls(config: Config, base_dir: Path, now: dt.datetime
                     ) -> tuple[BackendTls, list[Issue], list[str]]:
    """Read every backend's CAs and client certificates and build the contexts:
    (the result, problems, warnings)."""
    result = BackendTls()
    issues: list[Issue] = []
    warnings: list[str] = []
    authorities: dict[tuple[str, ...], tuple[str | None, int]] = {}
    certificates: dict[str, LoadedCertificate | None] = {}
    clients: dict[tuple[TlsSettings, tuple[str, ...]], TlsClient] = {}
    modes = _modes(config)
    allow_readable = config.global_.allow_readable_keys
    for b_index, backend in enumerate(config.backends):
        where = f"backends[{b_index}]"
        per_mode: dict[str, list[ServerTls | None]] = {mode: [] for mode in modes.get(
            backend.name, set())}
        descriptions: list[str] = []
        for s_index, server in enumerate(backend.servers):
            settings = effective_settings(backend, server)
            here = where if server.tls is None else f"{where}.servers[{s_index}]"
            if settings is None:
                descriptions.append(f"{server.label}: plain TCP")
                for servers in per_mode.values():
                    servers.append(None)
                continue
            name = fallback_name(server)
            descriptions.append(f"{server.label}: {settings.describe(name or '(none)')}")
            if not settings.verify:
                warnings.append(f"{where} ({backend.name}), server {server.label}: TLS without "
                                "verification (verify = false): anyone on the path to the "
                                "server can read and change the traffic")
            if settings.ca not in authorities:
                ca_where = where if server.ca is None else f"{where}.servers[{s_index}]"
                pem, count, problems = read_authorities(settings.ca, base_dir, ca_where)
                issues.extend(problems)
                authorities[settings.ca] = (pem, count)
            pem, _count = authorities[settings.ca]
            certificate, path = None, ""
            ref = settings.client_certificate
            if ref is not None:
                path = str(base_dir / ref.cert)
                if path not in certificates:
                    cert_where = (where if server.client_certificate is None
                                  else f"{where}.servers[{s_index}]")
                    loaded, sources, problems, loaded_warnings = _load_client_certificate(
                        ref, base_dir, f"{cert_where}.client_certificate",
                        allow_readable=allow_readable, now=now)
                    issues.extend(problems)
                    warnings.extend(loaded_warnings)
                    certificates[path] = loaded
                    if sources is not None:
                        result.sources[path] = sources
                certificate = certificates[path]
            if issues:
                continue
            for mode, servers in per_mode.items():
                alpn = HTTP_BACKEND_ALPN if mode == "http" else ()
                client = clients.get((settings, alpn))
                if client is None:
                    try:
                        client = TlsClient(settings, alpn, pem, certificate, path)
                    except (ssl.SSLError, OSError) as error:
                        issues.append(Issue(here, f"cannot set up TLS to {server.label}: "
                                            f"{error}", "check tls_policy, ca and "
                                            "client_certificate"))
                        break
                    clients[settings, alpn] = client
                    result.clients.append(client)
                servers.append(ServerTls(client, name))
        result.descriptions[backend.name] = tuple(descriptions)
        if not issues:
            for mode, servers in per_mode.items():
                if any(entry is not None for entry in servers):
                    result.servers[backend.name, mode] = tuple(servers)
    return result, issues, warnings


def _load_client_certificate(ref: CertificateRef, base_dir: Path, where: str, *,
                             allow_readable: bool, now: dt.datetime
                             ) -> tuple[LoadedCertificate | None, FrontendSources | None,
                                        list[Issue], list[str]]:
    """The client certificate and key, with the rules of frontend keys (not readable by
    others, passphrase from a file or the environment, not expired): (the certificate, its
    source to watch, problems, warnings)."""
    path = str(base_dir / ref.cert)
    if os.path.isdir(path):
        return None, None, [Issue(where, f"{path} is a directory",
                                  "name one PEM file (certificate and key, or key in `key`)")], []
    sources = FrontendSources((ref,), base_dir, where, allow_readable=allow_readable)
    loaded, problems, warnings = sources.load(now)
    issues = [Issue(where, problem.what, problem.fix) for problem in problems]
    if issues or not loaded:
        return None, None, issues, warnings
    return loaded[0][1][0], sources, [], warnings
