"""A frontend in HTTP mode, inside one worker: what all of its client connections share."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from offload.config.model import FrontendConfig
from offload.config.units import EventRate
from offload.http.gate import Inspector
from offload.http.inspection import Inspection, RulesInspector
from offload.http.upstream import HttpBackend
from offload.observe.access_log import AccessLog
from offload.observe.stats import Counters
from offload.proto.fingerprint import FingerprintHeaders
from offload.proto.forwarding import ClientFacts, ForwardPolicy, ResponsePolicy
from offload.proto.h2_engine import EngineFactory, H2Settings
from offload.proto.h2_engines import engine_factory
from offload.proto.h2_guard import FloodLimits
from offload.proto.h2_request import HeadLimits
from offload.proto.http1 import HttpLimits
from offload.security.ban_list import BannedClients
from offload.security.events import SecurityEvents
from offload.security.limits import Limits
from offload.security.rules import compile_rules
from offload.timers import Clock
from offload.tls.ca_bundle import CaBundle
from offload.tls.client_certs import identity_fields
from offload.tls.stream import TLSServerStream


class RequestIds:
    """Request ids unique across workers and restarts: a random per-process prefix and a
    counter (cheaper than a UUID per request)."""

    __slots__ = ("_count", "_prefix")

    def __init__(self) -> None:
        self._prefix = os.urandom(5).hex().encode()
        self._count = 0

    def next(self) -> bytes:
        self._count += 1
        return b"%b%08x" % (self._prefix, self._count & 0xFFFFFFFF)


def limits_of(frontend: FrontendConfig) -> HttpLimits:
    return HttpLimits(
        max_request_line=frontend.max_request_line,
        max_header_size=frontend.max_header_size,
        max_header_count=frontend.max_header_count,
        max_body_size=frontend.max_body_size,
    )


def h2_limits_of(frontend: FrontendConfig, limits: HttpLimits
                 ) -> tuple[H2Settings, FloodLimits, HeadLimits]:
    """The frontend's ``http2`` table as the engine's settings, the flood budgets and the
    request head limits."""
    h2 = frontend.http2
    settings = H2Settings(max_concurrent_streams=h2.max_concurrent_streams,
                          initial_window_size=h2.stream_window,
                          connection_window_size=h2.connection_window,
                          max_header_list_size=h2.max_header_list_size)
    never = EventRate(1e9, 1e9)  # "off": no budget
    flood = FloodLimits(max_continuations=h2.max_continuations,
                        settings=h2.control_frames or never, pings=h2.control_frames or never,
                        priority=h2.priority_frames or never,
                        max_empty_frames=h2.max_empty_frames,
                        early_resets=h2.early_resets or never)
    return settings, flood, HeadLimits.of(limits, h2.max_header_list_size)


def response_policy_of(frontend: FrontendConfig) -> ResponsePolicy:
    server = frontend.server_header
    return ResponsePolicy(
        hsts=frontend.hsts.encode("latin-1") if frontend.hsts else None,
        server=server.encode("latin-1") if server else None,
        strip_server=server == "",
    )


@dataclass
class HttpSite:
    """Shared by the client connections of one HTTP frontend in one worker."""

    frontend: FrontendConfig
    backend: HttpBackend
    counters: Counters
    access_log: AccessLog | None
    security: SecurityEvents
    clock: Clock
    """The worker's clock: every deadline and duration on the request path."""
    limits: HttpLimits = field(init=False)
    rate_limits: Limits | None = None
    """The frontend's flood limits in this worker (shared with its listener); None: none set."""
    fingerprint_headers: FingerprintHeaders = field(init=False)
    """The fields carrying the client's TLS fingerprints to the backend (none unless the
    frontend keeps fingerprints); dropped from every client request either way."""
    forward_policy: ForwardPolicy = field(init=False)
    response_policy: ResponsePolicy = field(init=False)
    client_auth: bool = field(init=False)
    """Clients present certificates: forward who they are, and keep Host to the SNI."""
    inspection: Inspection | None = field(init=False)
    """The frontend's inspection rules, compiled once here; None when it has none."""
    inspectors: tuple[Inspector, ...] = field(init=False)
    """What the inspection gate asks about each request (the rules first)."""
    extra_inspectors: tuple[Inspector, ...] = ()
    """Inspectors the worker made for this frontend (a WAF, a scanner), after the rules."""
    client_cas: CaBundle | None = None
    """The client CAs, to name the chain in Client-Cert-Chain (frontends with client_auth)."""
    request_ids: RequestIds = field(default_factory=RequestIds)
    banned: BannedClients = field(default_factory=BannedClients)
    """The worker's ban list: behind a trusted proxy, a banned forwarded client gets 403."""
    draining: bool = False
    h2_settings: H2Settings = field(init=False)
    h2_flood_limits: FloodLimits = field(init=False)
    h2_head_limits: HeadLimits = field(init=False)
    h2_engine: EngineFactory = field(init=False)
    """Makes each HTTP/2 connection's engine (chosen once, when the site is made)."""

    def __post_init__(self) -> None:
        self.limits = limits_of(self.frontend)
        self.h2_settings, self.h2_flood_limits, self.h2_head_limits = h2_limits_of(
            self.frontend, self.limits)
        self.h2_engine = engine_factory(self.frontend.http2.engine)
        frontend = self.frontend
        headers = FingerprintHeaders.of(frontend.ja4_header, frontend.ja3_header)
        self.fingerprint_headers = headers if frontend.fingerprints else FingerprintHeaders(None)
        self.forward_policy = ForwardPolicy(trusted_proxies=frontend.trusted_proxies,
                                            forwarded=frontend.forwarded, own_fields=headers.names)
        self.response_policy = response_policy_of(self.frontend)
        self.client_auth = self.frontend.client_auth != "none"
        rules = compile_rules(self.frontend.inspect)
        self.inspection = (Inspection(rules, self.security, self.frontend.name)
                           if rules.rules else None)
        own = (RulesInspector(self.inspection),) if self.inspection is not None else ()
        self.inspectors = own + self.extra_inspectors

    @property
    def name(self) -> str:
        return self.frontend.name

    def client_facts(self, stream: TLSServerStream) -> ClientFacts:
        """Who a new client connection is, for every request it carries (HTTP/1.1 or HTTP/2):
        its address and ports, its verified certificate's fields, its TLS fingerprints."""
        peer = stream.get_extra_info("peername") or ("", 0)
        local = stream.get_extra_info("sockname") or ("", 0)
        identity = (identity_fields(stream.peer_certificate, self.client_cas)
                    if self.client_auth else [])
        identity += self.fingerprint_headers.fields(stream.fingerprints)
        return ClientFacts(address=str(peer[0]), port=int(peer[1]), local_port=int(local[1]),
                           identity=identity, fingerprints=stream.fingerprints)
