"""Load balancing as pure decisions: given the servers' state, the order in which to try them.

Nothing here does I/O or reads a clock: the caller passes ``now`` (the same clock it uses for
ejection deadlines, normally ``loop.time()``) and keeps ``ServerState.active`` up to date. Each
worker owns its own states and balancer, so nothing is shared or locked.

Every algorithm answers the same question the same way at the edges:

* only *usable* servers are returned (up, not ejected, enabled, weight above zero, below their
  connection cap), each at most once, first choice first;
* primaries come first; backup servers appear only when no primary is usable;
* an empty list means nothing is usable (the caller answers 503).

A server at its ``max_connections`` is simply unusable for now, so its load spills over to the
other servers (and to the backups once every primary is full); offload does not queue.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol

if TYPE_CHECKING:
    from offload.config.model import BackendConfig, ServerConfig

AdminState = Literal["enabled", "drain", "disabled"]
"""``drain``: no new requests, the ones in flight finish; ``disabled``: out of rotation."""


@dataclass(slots=True)
class ServerState:
    """What balancing needs to know about one server, in one worker.

    ``index`` is the server's position in its backend's list; the balancers return these.
    ``active`` (requests or connections in flight) is maintained by the caller, ``up`` by active
    health checks and ``ejected_until`` by passive ones (see :mod:`offload.upstream.health`).
    """

    index: int
    weight: int
    max_connections: int = 0  # 0 = unlimited
    backup: bool = False
    active: int = 0
    up: bool = True
    ejected_until: float = 0.0
    admin: AdminState = "enabled"

    @classmethod
    def from_config(cls, index: int, config: ServerConfig) -> ServerState:
        """The starting state of the configured server at ``index``."""
        return cls(index=index, weight=config.weight, max_connections=config.max_connections,
                   backup=config.backup)

    def usable(self, now: float) -> bool:
        """Whether a new request may go to this server at time ``now``."""
        return (self.up and now >= self.ejected_until and self.admin == "enabled"
                and self.weight > 0
                and (self.max_connections == 0 or self.active < self.max_connections))

    def load(self) -> float:
        """Requests in flight per unit of weight (only meaningful when ``weight > 0``)."""
        return self.active / self.weight


def server_states(backend: BackendConfig) -> list[ServerState]:
    """Fresh states for every server of a backend, in configuration order."""
    return [ServerState.from_config(index, server) for index, server in enumerate(backend.servers)]


def candidates(servers: Sequence[ServerState], now: float) -> list[ServerState]:
    """The usable primaries or, when there is none, the usable backups (in list order)."""
    usable = [server for server in servers if server.usable(now)]
    primaries = [server for server in usable if not server.backup]
    return primaries or usable


class Balancer(Protocol):
    """A balancing algorithm with its own per-worker state."""

    def order(self, servers: Sequence[ServerState], now: float, key: bytes = b"") -> list[int]:
        """Indices of the servers to try, first choice first (see the module docstring).

        ``key`` identifies the client (its address bytes); only ``hash`` uses it.
        """
        ...


def _span(servers: Sequence[ServerState]) -> int:
    """A modulus for rotation distances between indices."""
    return max((server.index for server in servers), default=0) + 1


class SmoothWeightedRoundRobin:
    """nginx's smooth weighted round robin.

    On each pick every candidate's *current* weight grows by its weight, the largest is chosen
    and the sum of the candidates' weights is taken off it. Over a full cycle (the sum of the
    weights) each server is chosen exactly ``weight`` times, interleaved (5,1,1 gives
    a a b a c a a), and equal weights reduce to plain rotation. Fallbacks follow by descending
    current weight (the servers next due), ties in rotation order after the first choice.
    """

    __slots__ = ("_current",)

    def __init__(self) -> None:
        self._current: dict[int, int] = {}

    def order(self, servers: Sequence[ServerState], now: float, key: bytes = b"") -> list[int]:
        tier = candidates(servers, now)
        if not tier:
            return []
        current = self._current
        total = 0
        best = tier[0]
        for server in tier:
            current[server.index] = current.get(server.index, 0) + server.weight
            total += server.weight
            if current[server.index] > current[best.index]:
                best = server
        current[best.index] -= total
        if len(tier) == 1:
            return [best.index]
        chosen, span = best.index, _span(servers)
        rest = sorted((server.index for server in tier if server is not best),
                      key=lambda index: (-current[index], (index - chosen) % span))
        return [chosen, *rest]


class LeastConnections:
    """Fewest requests in flight per unit of weight; ties go to the next server in rotation
    after the previous first choice, so idle equal servers share the load."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = -1

    def order(self, servers: Sequence[ServerState], now: float, key: bytes = b"") -> list[int]:
        tier = candidates(servers, now)
        if not tier:
            return []
        last, span = self._last, _span(servers)
        ranked = sorted(tier, key=lambda server: (server.load(), (server.index - last - 1) % span))
        self._last = ranked[0].index
        return [server.index for server in ranked]


def _hash64(data: bytes) -> int:
    """A stable 64-bit hash (the same in every process and run, unlike ``hash()``)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class ConsistentHash:
    """Consistent hashing of the client key on a ring of virtual nodes.

    Each server with weight ``w`` owns about ``POINTS_PER_WEIGHT * w`` points (scaled down
    together when the ring would exceed ``MAX_POINTS``). The ring holds every server with a
    weight, usable or not, and is rebuilt only when weights change; unusable servers are
    skipped while walking it. So a key keeps its server while that server is usable, and when
    a server becomes unusable only its keys move (to the next server along the ring). Fallbacks
    are the next distinct servers along the ring. A point's position depends on the server's
    index, so reordering the configured servers remaps keys.
    """

    POINTS_PER_WEIGHT: ClassVar[int] = 100
    MAX_POINTS: ClassVar[int] = 20_000

    __slots__ = ("_hashes", "_owners", "_weights")

    def __init__(self, servers: Sequence[ServerState] = ()) -> None:
        self._weights: tuple[tuple[int, int], ...] | None = None
        self._hashes: list[int] = []
        self._owners: list[int] = []
        self._ring(servers)

    def _ring(self, servers: Sequence[ServerState]) -> None:
        weights = tuple((server.index, server.weight) for server in servers)
        if weights == self._weights:
            return
        self._weights = weights
        total = sum(weight for _, weight in weights if weight > 0)
        scale = min(float(self.POINTS_PER_WEIGHT), self.MAX_POINTS / total) if total else 0.0
        points = sorted(
            (_hash64(b"%d-%d" % (index, point)), index)
            for index, weight in weights if weight > 0
            for point in range(max(1, round(weight * scale)))
        )
        self._hashes = [point for point, _ in points]
        self._owners = [index for _, index in points]

    @property
    def points(self) -> int:
        """How many points the ring has now."""
        return len(self._owners)

    def order(self, servers: Sequence[ServerState], now: float, key: bytes = b"") -> list[int]:
        self._ring(servers)
        wanted = {server.index for server in candidates(servers, now)}
        if not wanted:
            return []
        owners = self._owners
        size = len(owners)
        start = bisect.bisect_left(self._hashes, _hash64(key))
        found: list[int] = []
        for step in range(size):
            index = owners[(start + step) % size]
            if index in wanted:
                wanted.discard(index)
                found.append(index)
                if not wanted:
                    break
        return found


class PowerOfTwoChoices:
    """Random with two choices: draw two distinct candidates (weighted by weight), try the one
    with fewer requests in flight per unit of weight first (the first drawn on a tie), the other
    second, and the rest in random order. The ``rng`` is injected so tests are repeatable."""

    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def _draw(self, pool: Sequence[ServerState]) -> ServerState:
        return self._rng.choices(pool, weights=[server.weight for server in pool])[0]

    def order(self, servers: Sequence[ServerState], now: float, key: bytes = b"") -> list[int]:
        tier = candidates(servers, now)
        if len(tier) < 2:
            return [server.index for server in tier]
        first = self._draw(tier)
        rest = [server for server in tier if server is not first]
        second = self._draw(rest)
        others = [server.index for server in rest if server is not second]
        self._rng.shuffle(others)
        if second.load() < first.load():
            first, second = second, first
        return [first.index, second.index, *others]


def make_balancer(name: str, servers: Sequence[ServerState],
                  rng: random.Random | None = None) -> Balancer:
    """The balancer called ``name`` (a ``balance`` value of the configuration) for ``servers``.

    ``rng`` is used by ``random`` only; without one it gets its own, seeded from the OS.
    """
    match name:
        case "roundrobin":
            return SmoothWeightedRoundRobin()
        case "leastconn":
            return LeastConnections()
        case "hash":
            return ConsistentHash(servers)
        case "random":
            return PowerOfTwoChoices(rng if rng is not None else random.Random())  # noqa: S311 - balancing, not secrets
        case _:
            raise ValueError(f"unknown balancing algorithm {name!r}")


__all__ = [
    "AdminState",
    "Balancer",
    "ConsistentHash",
    "LeastConnections",
    "PowerOfTwoChoices",
    "ServerState",
    "SmoothWeightedRoundRobin",
    "candidates",
    "make_balancer",
    "server_states",
]
