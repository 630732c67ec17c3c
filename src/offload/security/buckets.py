"""Rate and connection limits as pure decisions: token buckets and counters with an injected clock.

Every method that depends on time takes ``now`` (monotonic seconds, normally ``loop.time()``);
nothing here reads a clock, sleeps or does I/O, so tests drive time with plain floats. A clock
that goes backwards is treated as standing still (no refill), never as a refund.

The pieces, bottom up:

* :func:`client_key` names a client the way limits and bans count it: its address, with IPv6
  addresses grouped by /64 (one subscriber usually owns a whole /64, so counting single IPv6
  addresses would hand an attacker 2**64 fresh buckets);
* :class:`TokenBucket` — ``rate`` tokens per second refill up to ``burst``; an event costs
  tokens and is refused, at no cost, when too few are left;
* :class:`KeyedBuckets` — one bucket per client key, with a hard cap on the number of keys so
  an attacker spraying source addresses cannot exhaust memory;
* :class:`ConcurrencyLimit` — events in progress (open connections), in total and per key.

:mod:`offload.security.limits` puts them together into the configured limits.
"""

from __future__ import annotations

import math
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from itertools import islice
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton
from typing import Final, Literal

IPAddress = IPv4Address | IPv6Address

EVICTION_SCAN: Final = 8
"""How many of the least recently used keys a full table inspects for a lossless eviction
before it falls back to evicting the least recently used one (bounded work per new key)."""


_MAPPED: Final = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96, IPv4-mapped IPv6 (RFC 4291 §2.5.5.2)


def _pack(address: str) -> bytes:
    """4 or 16 bytes: the zone dropped, an IPv4-mapped IPv6 address as IPv4."""
    text = address.partition("%")[0]
    try:
        if ":" not in text:
            return inet_pton(AF_INET, text)
        packed = inet_pton(AF_INET6, text)
    except OSError:
        raise ValueError(f"not an IP address: {address!r}") from None
    return packed[12:] if packed[:12] == _MAPPED else packed


def parse_address(address: str) -> IPAddress:
    """The client's address as an :mod:`ipaddress` object, normalised as :func:`client_key`
    normalises it (zone dropped, IPv4-mapped IPv6 as IPv4). Raises ``ValueError``."""
    return ip_address(_pack(address))


def client_key(address: str, *, v4_prefix: int = 32, v6_prefix: int = 64) -> str:
    """The name limits and bans count ``address`` under: its network of the given prefix length.

    A full-length prefix gives the plain address (``"192.0.2.1"``), a shorter one the network
    (``"2001:db8:1:2::/64"``). An IPv6 zone (``fe80::1%eth0``) is dropped and an IPv4-mapped
    address (``::ffff:192.0.2.1``, what a dual-stack socket reports) counts as the IPv4 one, so
    a client has one name whichever socket it came in on. ``address`` may also be a network,
    such as a key shown by the admin API: a key maps to itself, a wider network stays as wide.
    Raises ``ValueError`` for anything else, or for a prefix length out of range.

    Cheap enough for every connection (about a microsecond on CPython): the
    address strings a socket reports are parsed and formatted by the C library, not by
    :mod:`ipaddress`.
    """
    if not 0 <= v4_prefix <= 32 or not 0 <= v6_prefix <= 128:
        raise ValueError(f"prefix lengths must be 0-32 (IPv4) and 0-128 (IPv6), "
                         f"not {v4_prefix} and {v6_prefix}")
    if "/" in address:
        text, _, length = address.partition("/")
        network = ip_network(f"{text.partition('%')[0]}/{length}", strict=False)
        packed, width = network.network_address.packed, network.prefixlen
        if packed[:12] == _MAPPED and width >= 96:
            packed, width = packed[12:], width - 96
    else:
        packed = _pack(address)
        width = len(packed) * 8
    family, bits = (AF_INET, 32) if len(packed) == 4 else (AF_INET6, 128)
    prefix = min(width, v4_prefix if bits == 32 else v6_prefix)
    if prefix == bits:
        return inet_ntop(family, packed)
    shift = bits - prefix
    masked = (int.from_bytes(packed, "big") >> shift << shift).to_bytes(len(packed), "big")
    return f"{inet_ntop(family, masked)}/{prefix}"


class TokenBucket:
    """``rate`` tokens per second accumulate up to ``burst``; an admitted event spends ``cost``.

    Over any interval of length ``t`` at most ``burst + rate * t`` tokens are spent, which is
    the guarantee a limit needs; a refused event spends nothing, so a client hammering a limit
    does not push its own recovery further away. A new bucket is full.
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        if not rate > 0 or not burst > 0 or math.isinf(rate) or math.isinf(burst):
            raise ValueError(f"a token bucket needs a finite rate and burst above 0, "
                             f"not rate={rate} burst={burst}")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = -math.inf

    def _refill(self, now: float) -> float:
        elapsed = now - self._last
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._last = now
        return self._tokens

    def _check_cost(self, cost: float) -> None:
        if not 0 < cost <= self.burst:
            raise ValueError(f"cost {cost} must be above 0 and at most the burst {self.burst}")

    def tokens(self, now: float) -> float:
        """Tokens available at ``now``."""
        return self._refill(now)

    def full(self, now: float) -> bool:
        """Whether the bucket is back at ``burst``: forgetting it then loses nothing."""
        return self._refill(now) >= self.burst

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if there are that many; whether the event is admitted."""
        self._check_cost(cost)
        if self._refill(now) >= cost:
            self._tokens -= cost
            return True
        return False

    def retry_after(self, now: float, cost: float = 1.0) -> float:
        """Seconds until ``take(cost)`` would succeed (0.0 if it would now)."""
        self._check_cost(cost)
        missing = cost - self._refill(now)
        return missing / self.rate if missing > 0 else 0.0

    def refund(self, cost: float = 1.0) -> None:
        """Give back tokens of an admitted event that another limit then refused."""
        self._tokens = min(self.burst, self._tokens + cost)


class KeyedBuckets:
    """One :class:`TokenBucket` per key (client), at most ``max_keys`` of them.

    When a new key arrives and the table is full, a bucket is evicted: a full one among the
    :data:`EVICTION_SCAN` least recently used if there is one (a full bucket is the same as a
    new one, so nothing is lost), otherwise the least recently used one, whose client then
    starts again with a full bucket. That is the price of bounded memory under address
    spraying; the global limits still hold. Call :meth:`prune` from a timer to hand memory
    back after a burst of clients.
    """

    __slots__ = ("_buckets", "burst", "max_keys", "rate")

    def __init__(self, rate: float, burst: float, *, max_keys: int = 65536) -> None:
        TokenBucket(rate, burst)  # validates rate and burst up front
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {max_keys}")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[str, TokenBucket] = {}  # least recently used first

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def take(self, key: str, now: float, cost: float = 1.0) -> bool:
        """:meth:`TokenBucket.take` on ``key``'s bucket (created full if needed)."""
        buckets = self._buckets
        bucket = buckets.pop(key, None)
        if bucket is None:
            if len(buckets) >= self.max_keys:
                self._evict(now)
            bucket = TokenBucket(self.rate, self.burst)
        buckets[key] = bucket  # most recently used last
        return bucket.take(now, cost)

    def retry_after(self, key: str, now: float, cost: float = 1.0) -> float:
        """:meth:`TokenBucket.retry_after` for ``key`` (0.0 for a key without a bucket)."""
        bucket = self._buckets.get(key)
        return 0.0 if bucket is None else bucket.retry_after(now, cost)

    def refund(self, key: str, cost: float = 1.0) -> None:
        """:meth:`TokenBucket.refund` for ``key``, if it still has a bucket."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.refund(cost)

    def prune(self, now: float) -> int:
        """Forget every full bucket (a full scan, for a timer); how many were forgotten."""
        idle = [key for key, bucket in self._buckets.items() if bucket.full(now)]
        for key in idle:
            del self._buckets[key]
        return len(idle)

    def _evict(self, now: float) -> None:
        buckets = self._buckets
        idle = [key for key, bucket in islice(buckets.items(), EVICTION_SCAN) if bucket.full(now)]
        for key in idle or [next(iter(buckets))]:
            del buckets[key]


ConcurrencyRefusal = Literal["per_key", "table_full", "total"]


class ConcurrencyLimit:
    """Events in progress (open connections): at most ``total`` overall and ``per_key`` per key.

    Only keys with something in progress are tracked, so the table never holds more keys than
    there are open connections, and at most ``max_keys``: a new key beyond that is refused
    ("table_full") rather than tracked loosely, because a forgotten count could not be released
    correctly. ``None`` means no limit; without ``per_key`` no keys are tracked at all.
    """

    __slots__ = ("_active", "_counts", "max_keys", "per_key", "total")

    def __init__(self, *, total: int | None = None, per_key: int | None = None,
                 max_keys: int = 65536) -> None:
        if (total is not None and total < 1) or (per_key is not None and per_key < 1):
            raise ValueError(f"concurrency limits must be at least 1, not total={total} "
                             f"per_key={per_key}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {max_keys}")
        self.total = total
        self.per_key = per_key
        self.max_keys = max_keys
        self._active = 0
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._counts)

    @property
    def active(self) -> int:
        """Events in progress overall."""
        return self._active

    def active_for(self, key: str) -> int:
        """Events in progress for ``key`` (0 when ``per_key`` is off: keys are not tracked)."""
        return self._counts.get(key, 0)

    def acquire(self, key: str) -> ConcurrencyRefusal | None:
        """Count one more event for ``key``; ``None`` if admitted, else which limit refused it.

        The per-key checks come first, so a client over its own limit is told so even when the
        total is also reached. A refused event changes nothing.
        """
        counts = self._counts
        count = counts.get(key, 0) if self.per_key is not None else 0
        if self.per_key is not None:
            if count >= self.per_key:
                return "per_key"
            if count == 0 and len(counts) >= self.max_keys:
                return "table_full"
        if self.total is not None and self._active >= self.total:
            return "total"
        self._active += 1
        if self.per_key is not None:
            counts[key] = count + 1
        return None

    def release(self, key: str) -> None:
        """End one admitted event for ``key``; ``ValueError`` if nothing was in progress.

        Call it exactly once per admitted :meth:`acquire`, on the same object (keep a reference
        on the connection, so a configuration reload that builds a new one never sees it).
        """
        count = self._counts.get(key, 0)
        if self._active == 0 or (self.per_key is not None and count == 0):
            raise ValueError(f"release without acquire for {key!r}")
        self._active -= 1
        if self.per_key is None:
            return
        if count == 1:
            del self._counts[key]
        else:
            self._counts[key] = count - 1


__all__ = [
    "EVICTION_SCAN", "ConcurrencyLimit", "ConcurrencyRefusal", "IPAddress", "KeyedBuckets",
    "TokenBucket", "client_key", "parse_address",
]
