"""The configured global and per-client limits behind one call per event.

:class:`Limits` answers connect, full handshake and request events with a
:class:`LimitDecision` that names the limit that fired, built from the pieces of
:mod:`offload.security.buckets`. Time is passed in (monotonic seconds).

State is per worker process: each worker owns its own :class:`Limits`, so a global limit
applies per worker, and so does a per-client one (the kernel spreads one client's connections
over the workers). The caller divides global limits by the worker count if it wants a
process-wide figure.

Per-fingerprint limits count full handshakes and requests per JA4 fingerprint (a tool that
rotates its addresses keeps its fingerprint), checked after the per-client ones. Many clients
share a fingerprint (every user of one browser version), so they are sized like global limits,
shared out between the workers, and a refusal is not held against the client (no ban offence).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from offload.security.buckets import ConcurrencyLimit, KeyedBuckets, TokenBucket, client_key

if TYPE_CHECKING:
    from offload.config.model import FrontendLimits
    from offload.config.units import EventRate
    from offload.fleet.tally import FleetTally
    from offload.proto.fingerprint import Fingerprints

LimitName = Literal[
    "per_ip_connections", "per_ip_connection_rate", "per_ip_handshake_rate",
    "per_ip_request_rate", "client_table_full", "global_connections",
    "global_connection_rate", "global_handshake_rate", "global_request_rate",
    "per_fingerprint_handshake_rate", "per_fingerprint_request_rate",
]
"""What refused an event: a :class:`LimitsConfig` field, or ``client_table_full`` when the
per-client connection table is full (see :class:`ConcurrencyLimit`)."""


@dataclass(frozen=True, slots=True)
class Rate:
    """A rate limit: ``per_second`` on average, up to ``burst`` at once (``burst`` >= 1)."""

    per_second: float
    burst: float

    def __post_init__(self) -> None:
        if not self.per_second > 0 or not self.burst >= 1 or math.isinf(self.per_second) \
                or math.isinf(self.burst):
            raise ValueError(f"a rate needs a finite per_second above 0 and a burst of at "
                             f"least 1, not {self.per_second}/s burst {self.burst}")


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Which limits apply; ``None`` means unlimited. ``per_ip`` limits count per client key.

    ``*_connections`` are concurrent connections; the rates are events per second: accepted
    connections, *full* TLS handshakes (resumptions are cheap and not counted), HTTP requests.
    ``max_clients`` caps each per-client table; ``v4_prefix``/``v6_prefix`` are the prefix
    lengths :meth:`Limits.client_key` groups addresses by.
    """

    global_connections: int | None = None
    per_ip_connections: int | None = None
    global_connection_rate: Rate | None = None
    per_ip_connection_rate: Rate | None = None
    global_handshake_rate: Rate | None = None
    per_ip_handshake_rate: Rate | None = None
    global_request_rate: Rate | None = None
    per_ip_request_rate: Rate | None = None
    per_fingerprint_handshake_rate: Rate | None = None
    per_fingerprint_request_rate: Rate | None = None
    max_clients: int = 65536
    v4_prefix: int = 32
    v6_prefix: int = 64

    def __post_init__(self) -> None:
        for name, value in (("global_connections", self.global_connections),
                            ("per_ip_connections", self.per_ip_connections),
                            ("max_clients", self.max_clients)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
        client_key("0.0.0.0", v4_prefix=self.v4_prefix, v6_prefix=self.v6_prefix)  # validates


@dataclass(frozen=True, slots=True)
class LimitDecision:
    """The answer to one event: admitted (``limit is None``) or refused by ``limit``.

    ``retry_after`` is whole seconds, at least 1 when refused, for a 429's Retry-After header
    (RFC 9110 §10.2.3): the time until the refusing rate limit admits one event, rounded up;
    1 for a concurrency limit, which has no schedule.
    """

    limit: LimitName | None = None
    retry_after: int = 0

    @property
    def allowed(self) -> bool:
        return self.limit is None

    @property
    def per_client(self) -> bool:
        """Whether the client itself went over a limit (what a ban may count as a limit hit);
        a global limit or a full table is not the fault of the client that met it."""
        return self.limit is not None and self.limit.startswith("per_ip_")


ALLOWED: Final = LimitDecision()


def _refused(limit: LimitName, seconds: float) -> LimitDecision:
    return LimitDecision(limit, max(1, math.ceil(seconds)))


class _RateGate:
    """A per-client and a global rate limit for one kind of event, the per-client one first.

    With a fleet ``tally`` covering a limit, the fleet's cached refusal is asked first and an
    event the local bucket admits is counted for the fleet (:mod:`offload.fleet.tally`); dict
    operations only, never a round trip.
    """

    __slots__ = ("_fleet_global", "_fleet_per_ip", "_frontend", "_global", "_global_name",
                 "_per_ip", "_per_ip_name", "_tally")

    def __init__(self, per_ip: Rate | None, total: Rate | None, max_clients: int,
                 per_ip_name: LimitName, global_name: LimitName, *,
                 tally: FleetTally | None = None, frontend: str = "") -> None:
        self._per_ip = (None if per_ip is None
                        else KeyedBuckets(per_ip.per_second, per_ip.burst, max_keys=max_clients))
        self._global = None if total is None else TokenBucket(total.per_second, total.burst)
        self._per_ip_name = per_ip_name
        self._global_name = global_name
        self._tally = tally
        self._frontend = frontend
        self._fleet_per_ip = (tally is not None and per_ip is not None
                              and tally.covers(frontend, per_ip_name))
        self._fleet_global = (tally is not None and total is not None
                              and tally.covers(frontend, global_name))

    def check(self, client: str, now: float) -> LimitDecision:
        """Admit one event, spending a token from each bucket, or refuse it spending none."""
        decision = self.take_client(client, now)
        return decision if decision.limit is not None else self.take_global(client, now)

    def take_client(self, client: str, now: float) -> LimitDecision:
        """The per-client half of :meth:`check`."""
        per_ip = self._per_ip
        if per_ip is None:
            return ALLOWED
        if self._fleet_per_ip:
            assert self._tally is not None
            key = (self._frontend, self._per_ip_name, client)
            wait = self._tally.refused(key, now)
            if wait is not None:
                return _refused(self._per_ip_name, wait)
            if not per_ip.take(client, now):
                return _refused(self._per_ip_name, per_ip.retry_after(client, now))
            self._tally.count(key)
            return ALLOWED
        if not per_ip.take(client, now):
            return _refused(self._per_ip_name, per_ip.retry_after(client, now))
        return ALLOWED

    def take_global(self, client: str, now: float) -> LimitDecision:
        """The global half of :meth:`check`; refunds the client's token when it refuses."""
        total = self._global
        if total is None:
            return ALLOWED
        if self._fleet_global:
            assert self._tally is not None
            key = (self._frontend, self._global_name, "*")
            wait = self._tally.refused(key, now)
            if wait is not None:
                self.refund_client(client)
                return _refused(self._global_name, wait)
            if not total.take(now):
                self.refund_client(client)
                return _refused(self._global_name, total.retry_after(now))
            self._tally.count(key)
            return ALLOWED
        if not total.take(now):
            self.refund_client(client)
            return _refused(self._global_name, total.retry_after(now))
        return ALLOWED

    def refund_client(self, client: str) -> None:
        if self._per_ip is not None:
            self._per_ip.refund(client)
            if self._fleet_per_ip:
                assert self._tally is not None
                self._tally.uncount((self._frontend, self._per_ip_name, client))

    def prune(self, now: float) -> int:
        return 0 if self._per_ip is None else self._per_ip.prune(now)

    def clients(self) -> int:
        return 0 if self._per_ip is None else len(self._per_ip)


class Limits:
    """The configured limits of one worker, one call per event.

    ``client`` is the client's key from :meth:`client_key`, computed once per connection (it
    parses the address: about a microsecond, too much to repeat per request). Per-client
    limits are checked before global ones and a refused event spends nothing anywhere, so one
    client over its own limit is blamed for it and cannot use up everyone else's global budget.

    The caller's part: refuse the connection (before the TLS handshake) or answer 429 with
    ``retry_after`` when a decision is not allowed; call :meth:`on_disconnect` exactly once for
    every connection :meth:`on_connect` admitted; call :meth:`on_full_handshake` when the
    ClientHello offers no session to resume (so the refusal comes before the expensive part),
    or, when it offers one, after the handshake if the session was not resumed (late, but an
    attacker offering bogus tickets must not dodge the limit).
    """

    __slots__ = ("_connect_rate", "_connections", "_handshakes", "_ja4_handshakes",
                 "_ja4_requests", "_requests", "config")

    def __init__(self, config: LimitsConfig, fleet: FleetTally | None = None,
                 frontend: str = "") -> None:
        self.config = config
        clients = config.max_clients
        self._connections = ConcurrencyLimit(total=config.global_connections,
                                             per_key=config.per_ip_connections,
                                             max_keys=clients)
        self._connect_rate = _RateGate(config.per_ip_connection_rate,
                                       config.global_connection_rate, clients,
                                       "per_ip_connection_rate", "global_connection_rate",
                                       tally=fleet, frontend=frontend)
        self._handshakes = _RateGate(config.per_ip_handshake_rate, config.global_handshake_rate,
                                     clients, "per_ip_handshake_rate", "global_handshake_rate",
                                     tally=fleet, frontend=frontend)
        self._requests = _RateGate(config.per_ip_request_rate, config.global_request_rate,
                                   clients, "per_ip_request_rate", "global_request_rate",
                                   tally=fleet, frontend=frontend)
        self._ja4_handshakes = _fingerprint_gate(config.per_fingerprint_handshake_rate, clients,
                                                 "per_fingerprint_handshake_rate", fleet,
                                                 frontend)
        self._ja4_requests = _fingerprint_gate(config.per_fingerprint_request_rate, clients,
                                               "per_fingerprint_request_rate", fleet, frontend)

    @property
    def keys_fingerprints(self) -> bool:
        """Whether a limit counts per TLS fingerprint (the stream must keep them)."""
        return self._ja4_handshakes is not None or self._ja4_requests is not None

    def client_key(self, address: str) -> str:
        """:func:`client_key` with the configured prefix lengths."""
        return client_key(address, v4_prefix=self.config.v4_prefix,
                          v6_prefix=self.config.v6_prefix)

    @property
    def connections(self) -> int:
        """Connections admitted and not yet disconnected."""
        return self._connections.active

    def tracked_clients(self) -> int:
        """Client keys held in all per-client tables together (for metrics)."""
        return (len(self._connections) + self._connect_rate.clients()
                + self._handshakes.clients() + self._requests.clients()
                + sum(gate.clients() for gate in (self._ja4_handshakes, self._ja4_requests)
                      if gate is not None))

    def on_connect(self, client: str, now: float) -> LimitDecision:
        """A new connection: counted against the connection rates and, if admitted, the
        concurrent connections until :meth:`on_disconnect`.

        Order: per-client rate, per-client concurrency (or a full client table), global
        concurrency, global rate.
        """
        rate, connections = self._connect_rate, self._connections
        decision = rate.take_client(client, now)
        if decision.limit is not None:
            return decision
        refusal = connections.acquire(client)
        if refusal is not None:
            rate.refund_client(client)
            return LimitDecision("per_ip_connections" if refusal == "per_key"
                                 else "client_table_full" if refusal == "table_full"
                                 else "global_connections", 1)
        decision = rate.take_global(client, now)
        if decision.limit is not None:
            connections.release(client)
        return decision

    def on_disconnect(self, client: str) -> None:
        """An admitted connection closed (see :meth:`ConcurrencyLimit.release`)."""
        self._connections.release(client)

    def on_full_handshake(self, client: str, now: float,
                          fingerprints: Fingerprints | None = None) -> LimitDecision:
        """A full TLS handshake is about to start (resumptions are not counted)."""
        return _check(self._handshakes, self._ja4_handshakes, client, fingerprints, now)

    def on_request(self, client: str, now: float,
                   fingerprints: Fingerprints | None = None) -> LimitDecision:
        """An HTTP request head arrived."""
        return _check(self._requests, self._ja4_requests, client, fingerprints, now)

    def prune(self, now: float) -> int:
        """Forget idle per-client buckets (call from a timer); how many were forgotten."""
        return (self._connect_rate.prune(now) + self._handshakes.prune(now)
                + self._requests.prune(now)
                + sum(gate.prune(now) for gate in (self._ja4_handshakes, self._ja4_requests)
                      if gate is not None))


def _fingerprint_gate(rate: Rate | None, max_keys: int, name: LimitName,
                      fleet: FleetTally | None, frontend: str) -> _RateGate | None:
    return None if rate is None else _RateGate(rate, None, max_keys, name, name,
                                               tally=fleet, frontend=frontend)


def _check(gate: _RateGate, by_fingerprint: _RateGate | None, client: str,
           fingerprints: Fingerprints | None, now: float) -> LimitDecision:
    """One event against the per-client, per-fingerprint and global rates, in that order; a
    refused event spends nothing anywhere. The fingerprint is computed only when limited."""
    ja4 = fingerprints.ja4 if by_fingerprint is not None and fingerprints is not None else None
    if ja4 is None:
        return gate.check(client, now)
    assert by_fingerprint is not None
    decision = gate.take_client(client, now)
    if decision.limit is not None:
        return decision
    decision = by_fingerprint.take_client(ja4, now)
    if decision.limit is not None:
        gate.refund_client(client)
        return decision
    decision = gate.take_global(client, now)
    if decision.limit is not None:
        by_fingerprint.refund_client(ja4)
    return decision


def worker_limits(settings: FrontendLimits, workers: int) -> LimitsConfig | None:
    """One worker's share of a frontend's configured limits; None when none is set.

    A global limit is a figure for the whole frontend (the machine's capacity), so each of the
    ``workers`` enforces an even share of it (rounded up): across many clients the kernel
    spreads connections evenly. A per-client limit is enforced whole in every worker: one
    client's few connections do not spread evenly, and a share would refuse it early.
    """
    if not settings.any:
        return None

    def share(rate: EventRate | None, divide: int) -> Rate | None:
        if rate is None:
            return None
        return Rate(rate.per_second / divide, max(1.0, rate.burst / divide))

    total = settings.max_connections
    return LimitsConfig(
        global_connections=None if total is None else -(-total // workers),
        per_ip_connections=settings.max_connections_per_ip,
        global_connection_rate=share(settings.connection_rate, workers),
        per_ip_connection_rate=share(settings.connection_rate_per_ip, 1),
        global_handshake_rate=share(settings.handshake_rate, workers),
        per_ip_handshake_rate=share(settings.handshake_rate_per_ip, 1),
        global_request_rate=share(settings.request_rate, workers),
        per_ip_request_rate=share(settings.request_rate_per_ip, 1),
        per_fingerprint_handshake_rate=share(settings.handshake_rate_per_fingerprint, workers),
        per_fingerprint_request_rate=share(settings.request_rate_per_fingerprint, workers),
        max_clients=settings.max_tracked_clients,
        v4_prefix=settings.ipv4_prefix,
        v6_prefix=settings.ipv6_prefix,
    )


FLEET_RATES: Final[tuple[tuple[LimitName, str], ...]] = (
    ("per_ip_connection_rate", "connection_rate_per_ip"),
    ("global_connection_rate", "connection_rate"),
    ("per_ip_handshake_rate", "handshake_rate_per_ip"),
    ("global_handshake_rate", "handshake_rate"),
    ("per_ip_request_rate", "request_rate_per_ip"),
    ("global_request_rate", "request_rate"),
    ("per_fingerprint_handshake_rate", "handshake_rate_per_fingerprint"),
    ("per_fingerprint_request_rate", "request_rate_per_fingerprint"),
)
"""Each rate limit and the ``[frontends.limits]`` key that sets it."""


def fleet_rates(settings: FrontendLimits) -> list[tuple[LimitName, float, float]]:
    """A frontend's rate limits as the fleet counts them: whole, not shared out (a global
    limit holds for the fleet, a ``_per_ip`` one for a client wherever it connects);
    (limit, per_second, burst). Empty unless ``scope = "fleet"``."""
    if settings.scope != "fleet":
        return []
    rates: list[tuple[LimitName, float, float]] = []
    for limit, key in FLEET_RATES:
        rate: EventRate | None = getattr(settings, key)
        if rate is not None:
            rates.append((limit, rate.per_second, rate.burst))
    return rates


__all__ = [
    "ALLOWED",
    "FLEET_RATES",
    "LimitDecision",
    "LimitName",
    "Limits",
    "LimitsConfig",
    "Rate",
    "fleet_rates",
    "worker_limits",
]
