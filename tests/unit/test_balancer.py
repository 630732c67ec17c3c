"""Balancing: ServerState.usable, every algorithm of make_balancer, and
the per-worker Counters.

Properties checked for every algorithm (hypothesis): only usable servers, each at most once,
exactly the usable primaries (or, when none, the usable backups).
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offload.config.model import BackendConfig
from offload.observe.stats import Counters
from offload.upstream.balancer import (
    ConsistentHash,
    LeastConnections,
    PowerOfTwoChoices,
    ServerState,
    SmoothWeightedRoundRobin,
    candidates,
    make_balancer,
    server_states,
)

ALGORITHMS = ["roundrobin", "leastconn", "hash", "random"]
NOW = 100.0


def states(*weights: int, backups: Sequence[int] = ()) -> list[ServerState]:
    return [ServerState(index=index, weight=weight, backup=index in backups)
            for index, weight in enumerate(weights)]


def firsts(balancer_name: str, servers: list[ServerState], picks: int, *,
           key: bytes = b"", seed: int = 1) -> Counter[int]:
    balancer = make_balancer(balancer_name, servers, random.Random(seed))
    return Counter(balancer.order(servers, NOW, key)[0] for _ in range(picks))


# ------------------------------------------------------------------ ServerState


def test_usable_requires_every_condition() -> None:
    assert ServerState(0, 1).usable(NOW)
    assert not ServerState(0, 1, up=False).usable(NOW)
    assert not ServerState(0, 1, ejected_until=NOW + 1).usable(NOW)
    assert ServerState(0, 1, ejected_until=NOW).usable(NOW)  # the ejection ends at that instant
    assert not ServerState(0, 1, admin="drain").usable(NOW)
    assert not ServerState(0, 1, admin="disabled").usable(NOW)
    assert not ServerState(0, 0).usable(NOW)
    assert ServerState(0, 1, max_connections=2, active=1).usable(NOW)
    assert not ServerState(0, 1, max_connections=2, active=2).usable(NOW)
    assert ServerState(0, 1, max_connections=0, active=10_000).usable(NOW)


def test_server_states_from_config() -> None:
    config = BackendConfig.model_validate({"name": "app", "servers": [
        "127.0.0.1:8080",
        {"address": "127.0.0.1:8081", "weight": 3, "max_connections": 10, "backup": True},
    ]})
    assert server_states(config) == [
        ServerState(index=0, weight=1),
        ServerState(index=1, weight=3, max_connections=10, backup=True),
    ]


def test_candidates_prefers_primaries_then_backups() -> None:
    servers = states(1, 1, 1, backups=[2])
    assert [s.index for s in candidates(servers, NOW)] == [0, 1]
    servers[0].up = False
    assert [s.index for s in candidates(servers, NOW)] == [1]
    servers[1].admin = "drain"
    assert [s.index for s in candidates(servers, NOW)] == [2]
    servers[2].weight = 0
    assert candidates(servers, NOW) == []


def test_unknown_algorithm_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown balancing algorithm 'fastest'"):
        make_balancer("fastest", states(1))


def test_factory_builds_each_algorithm() -> None:
    servers = states(1, 1)
    assert isinstance(make_balancer("roundrobin", servers), SmoothWeightedRoundRobin)
    assert isinstance(make_balancer("leastconn", servers), LeastConnections)
    assert isinstance(make_balancer("hash", servers), ConsistentHash)
    assert isinstance(make_balancer("random", servers), PowerOfTwoChoices)
    assert isinstance(make_balancer("random", servers, random.Random(3)), PowerOfTwoChoices)


# ------------------------------------------------------------------ shared rules, every algorithm


@pytest.mark.parametrize("name", ALGORITHMS)
def test_backups_only_when_no_primary_is_usable(name: str) -> None:
    servers = states(1, 1, 1, 1, backups=[2, 3])
    balancer = make_balancer(name, servers, random.Random(5))
    for _ in range(20):
        assert sorted(balancer.order(servers, NOW, b"client")) == [0, 1]
    servers[0].up = False
    for _ in range(20):
        assert balancer.order(servers, NOW, b"client") == [1]
    servers[1].ejected_until = NOW + 5
    for _ in range(20):
        assert sorted(balancer.order(servers, NOW, b"client")) == [2, 3]
    # the ejection is over: back to the primary alone
    assert balancer.order(servers, NOW + 5, b"client") == [1]


@pytest.mark.parametrize("name", ALGORITHMS)
def test_nothing_usable_gives_empty_order(name: str) -> None:
    servers = states(1, 1, 1, backups=[2])
    servers[0].up = False
    servers[1].admin = "disabled"
    servers[2].ejected_until = NOW + 1
    balancer = make_balancer(name, servers, random.Random(5))
    assert balancer.order(servers, NOW, b"k") == []
    assert balancer.order([], NOW, b"k") == []


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("condition", ["down", "ejected", "drain", "disabled", "weight0", "full"])
def test_unusable_server_is_never_returned(name: str, condition: str) -> None:
    servers = states(1, 1, 1)
    target = servers[1]
    match condition:
        case "down":
            target.up = False
        case "ejected":
            target.ejected_until = NOW + 30
        case "drain":
            target.admin = "drain"
        case "disabled":
            target.admin = "disabled"
        case "weight0":
            target.weight = 0
        case "full":
            target.max_connections, target.active = 3, 3
    balancer = make_balancer(name, servers, random.Random(9))
    for number in range(50):
        assert sorted(balancer.order(servers, NOW, b"%d" % number)) == [0, 2]


@pytest.mark.parametrize("name", ALGORITHMS)
def test_max_connections_overflow_goes_to_backup(name: str) -> None:
    servers = states(1, 1, backups=[1])
    servers[0].max_connections = 2
    balancer = make_balancer(name, servers, random.Random(2))
    chosen = []
    for _ in range(4):
        first = balancer.order(servers, NOW, b"c")[0]
        servers[first].active += 1
        chosen.append(first)
    assert chosen == [0, 0, 1, 1]
    servers[0].active -= 1  # a request to the primary finished
    assert balancer.order(servers, NOW, b"c") == [0]


server_state = st.builds(
    ServerState,
    index=st.just(0),
    weight=st.integers(min_value=0, max_value=5),
    max_connections=st.integers(min_value=0, max_value=3),
    backup=st.booleans(),
    active=st.integers(min_value=0, max_value=4),
    up=st.booleans(),
    ejected_until=st.sampled_from([0.0, NOW, NOW + 1]),
    admin=st.sampled_from(["enabled", "enabled", "drain", "disabled"]),
)


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(ALGORITHMS), servers=st.lists(server_state, max_size=8),
       keys=st.lists(st.binary(max_size=16), min_size=1, max_size=5), seed=st.integers(0, 1000))
def test_order_is_exactly_the_usable_tier(name: str, servers: list[ServerState], keys: list[bytes],
                                          seed: int) -> None:
    for index, server in enumerate(servers):
        server.index = index
    usable = {s.index for s in servers if s.usable(NOW)}
    primaries = {i for i in usable if not servers[i].backup}
    expected = primaries or usable
    balancer = make_balancer(name, servers, random.Random(seed))
    for key in keys:
        order = balancer.order(servers, NOW, key)
        assert len(order) == len(set(order))
        assert set(order) == expected
        assert all(servers[i].usable(NOW) for i in order)


# ------------------------------------------------------------------ roundrobin (smooth weighted)


def test_smooth_weighted_sequence_is_interleaved() -> None:
    servers = states(5, 1, 1)
    balancer = make_balancer("roundrobin", servers)
    picks = [balancer.order(servers, NOW, b"")[0] for _ in range(70)]
    assert picks == [0, 0, 1, 0, 2, 0, 0] * 10  # nginx's a a b a c a a
    # at most two in a row within a cycle, four across the seam, never all five
    assert max(len(list(run)) for _, run in itertools.groupby(picks[:7])) == 2
    assert max(len(list(run)) for _, run in itertools.groupby(picks)) == 4


@settings(deadline=None)
@given(weights=st.lists(st.integers(min_value=1, max_value=10), min_size=1, max_size=8),
       cycles=st.integers(min_value=1, max_value=3))
def test_smooth_weighted_matches_weights_over_each_cycle(weights: list[int], cycles: int) -> None:
    servers = states(*weights)
    balancer = make_balancer("roundrobin", servers)
    for _ in range(cycles):
        counts = Counter(balancer.order(servers, NOW, b"")[0] for _ in range(sum(weights)))
        assert [counts[i] for i in range(len(weights))] == weights


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8])
def test_equal_weights_reduce_to_plain_rotation(count: int) -> None:
    servers = states(*[4] * count)
    weighted = make_balancer("roundrobin", servers)
    for call in range(3 * count):
        start = call % count
        assert weighted.order(servers, NOW, b"") == [*range(start, count), *range(start)]


def test_roundrobin_skips_an_unusable_server_and_keeps_rotating() -> None:
    servers = states(1, 1, 1)
    balancer = make_balancer("roundrobin", servers)
    servers[1].up = False
    picks = [balancer.order(servers, NOW, b"")[0] for _ in range(6)]
    assert Counter(picks) == {0: 3, 2: 3}
    assert all(a != b for a, b in itertools.pairwise(picks))


def test_roundrobin_fallbacks_cover_every_usable_server() -> None:
    servers = states(3, 2, 1)
    balancer = make_balancer("roundrobin", servers)
    for _ in range(12):
        assert sorted(balancer.order(servers, NOW, b"")) == [0, 1, 2]


# ------------------------------------------------------------------ leastconn


def test_leastconn_picks_least_loaded_and_orders_by_load() -> None:
    servers = states(1, 1, 1)
    servers[0].active, servers[1].active, servers[2].active = 5, 1, 3
    balancer = make_balancer("leastconn", servers)
    assert balancer.order(servers, NOW, b"") == [1, 2, 0]


def test_leastconn_divides_by_weight() -> None:
    servers = states(1, 4)
    servers[0].active, servers[1].active = 1, 3  # 1.0 against 0.75 per unit of weight
    assert make_balancer("leastconn", servers).order(servers, NOW, b"")[0] == 1


def test_leastconn_ties_rotate() -> None:
    servers = states(1, 1, 1, 1)
    servers[1].up = False
    balancer = make_balancer("leastconn", servers)
    assert [balancer.order(servers, NOW, b"")[0] for _ in range(6)] == [0, 2, 3, 0, 2, 3]


def test_leastconn_spreads_concurrent_requests() -> None:
    servers = states(2, 1)
    balancer = make_balancer("leastconn", servers)
    for _ in range(30):
        servers[balancer.order(servers, NOW, b"")[0]].active += 1
    assert (servers[0].active, servers[1].active) == (20, 10)


# ------------------------------------------------------------------ hash


def keys(count: int) -> list[bytes]:
    return [bytes([10, (n >> 16) & 255, (n >> 8) & 255, n & 255]) for n in range(count)]


def test_hash_same_key_same_server() -> None:
    servers = states(1, 1, 1, 1, 1)
    balancer = make_balancer("hash", servers)
    for key in keys(200):
        first = balancer.order(servers, NOW, key)
        assert all(balancer.order(servers, NOW, key) == first for _ in range(3))
        assert make_balancer("hash", servers).order(servers, NOW, key) == first


def test_hash_is_stable_across_processes() -> None:
    script = ("from offload.upstream.balancer import make_balancer, ServerState\n"
              "s = [ServerState(i, 1) for i in range(5)]\n"
              "b = make_balancer('hash', s)\n"
              "print([b.order(s, 0.0, bytes([10, 0, 0, n]))[0] for n in range(40)])\n")
    servers = states(1, 1, 1, 1, 1)
    balancer = make_balancer("hash", servers)
    here = str([balancer.order(servers, 0.0, bytes([10, 0, 0, n]))[0] for n in range(40)])
    for seed in ("1", "2"):
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                check=True, timeout=60, env={**os.environ, "PYTHONHASHSEED": seed})
        assert result.stdout.strip() == here


def test_hash_removing_a_server_moves_only_its_keys() -> None:
    servers = states(1, 1, 1, 1, 1)
    balancer = make_balancer("hash", servers)
    sample = keys(10_000)
    before = {key: balancer.order(servers, NOW, key)[0] for key in sample}
    shares = Counter(before.values())
    assert all(1_000 < shares[i] < 3_000 for i in range(5))  # roughly a fifth each
    servers[2].up = False
    after = {key: balancer.order(servers, NOW, key)[0] for key in sample}
    moved = [key for key in sample if before[key] != after[key]]
    assert all(before[key] == 2 for key in moved)
    assert len(moved) == shares[2]
    # the moved keys spread over the others instead of all landing on one neighbour
    assert len({after[key] for key in moved}) >= 3
    servers[2].up = True
    assert {key: balancer.order(servers, NOW, key)[0] for key in sample} == before


def test_hash_adding_a_server_takes_keys_only_for_itself() -> None:
    servers = states(1, 1, 1, 1, 1)
    balancer = make_balancer("hash", servers)
    sample = keys(10_000)
    servers[4].admin = "disabled"
    before = {key: balancer.order(servers, NOW, key)[0] for key in sample}
    servers[4].admin = "enabled"
    after = {key: balancer.order(servers, NOW, key)[0] for key in sample}
    moved = [key for key in sample if before[key] != after[key]]
    assert all(after[key] == 4 for key in moved)
    assert 1_000 < len(moved) < 3_000


def test_hash_shares_follow_weights() -> None:
    servers = states(1, 3)
    balancer = make_balancer("hash", servers)
    counts = Counter(balancer.order(servers, NOW, key)[0] for key in keys(10_000))
    assert 0.68 < counts[1] / 10_000 < 0.82


def test_hash_fallback_is_next_distinct_server_on_ring() -> None:
    servers = states(1, 1, 1, 1)
    balancer = make_balancer("hash", servers)
    for key in keys(300):
        order = balancer.order(servers, NOW, key)
        servers[order[0]].up = False
        assert balancer.order(servers, NOW, key) == order[1:]
        servers[order[0]].up = True


def test_hash_ring_follows_weight_changes() -> None:
    servers = states(1, 1)
    balancer = make_balancer("hash", servers)
    servers[0].weight = 9
    counts = Counter(balancer.order(servers, NOW, key)[0] for key in keys(5_000))
    assert counts[0] > 4_000


def test_hash_ring_size_is_capped_for_large_weights() -> None:
    servers = states(1000, 1000, 500)
    balancer = ConsistentHash(servers)
    counts = Counter(balancer.order(servers, NOW, key)[0] for key in keys(5_000))
    assert counts[2] < counts[0] and counts[2] < counts[1]
    assert balancer.points <= ConsistentHash.MAX_POINTS + len(servers)


# ------------------------------------------------------------------ random (two choices)


def test_random_is_repeatable_with_a_seeded_rng() -> None:
    servers = states(1, 2, 3, 1)
    first = make_balancer("random", servers, random.Random(42))
    second = make_balancer("random", servers, random.Random(42))
    assert ([first.order(servers, NOW, b"") for _ in range(50)]
            == [second.order(servers, NOW, b"") for _ in range(50)])


def test_random_prefers_the_less_loaded_of_two() -> None:
    servers = states(1, 1)
    servers[0].active = 4
    balancer = make_balancer("random", servers, random.Random(1))
    assert all(balancer.order(servers, NOW, b"") == [1, 0] for _ in range(50))


def test_random_never_puts_the_most_loaded_first() -> None:
    servers = states(1, 1, 1, 1)
    servers[3].active = 10
    counts = firsts("random", servers, 2_000, seed=11)
    assert counts[3] == 0
    assert all(counts[i] > 400 for i in range(3))


def test_random_draws_by_weight() -> None:
    counts = firsts("random", states(3, 1), 4_000, seed=3)
    assert 0.70 < counts[0] / 4_000 < 0.80


def test_random_fallbacks_cover_every_usable_server() -> None:
    servers = states(1, 1, 1, 1, 1)
    balancer = make_balancer("random", servers, random.Random(8))
    orders = [balancer.order(servers, NOW, b"") for _ in range(200)]
    assert all(sorted(order) == [0, 1, 2, 3, 4] for order in orders)
    assert len({tuple(order[2:]) for order in orders}) > 10  # the rest really is shuffled


# ------------------------------------------------------------------ Counters


def test_counter_starts_at_zero() -> None:
    counters = Counters()
    assert counters.get("handshake_failed", "timeout") == 0
    assert counters.get() == 0


def test_counter_inc_by_one_and_by_amount() -> None:
    counters = Counters()
    counters.inc("handshake_failed", "timeout")
    counters.inc("handshake_failed", "timeout")
    assert counters.get("handshake_failed", "timeout") == 2
    counters.inc("handshake_failed", "timeout", amount=5)
    assert counters.get("handshake_failed", "timeout") == 7
    counters.inc("bytes", amount=0)
    assert counters.get("bytes") == 0


def test_counter_keys_are_distinct_tuples() -> None:
    counters = Counters()
    counters.inc("handshake_failed", "timeout")
    counters.inc("handshake_failed", "alert", amount=3)
    counters.inc("handshake_failed")
    assert counters.get("handshake_failed", "timeout") == 1
    assert counters.get("handshake_failed", "alert") == 3
    assert counters.get("handshake_failed") == 1
    assert counters.get("timeout", "handshake_failed") == 0
    assert dict(counters.values) == {
        ("handshake_failed", "timeout"): 1,
        ("handshake_failed", "alert"): 3,
        ("handshake_failed",): 1,
    }


def test_counters_instances_are_independent() -> None:
    first, second = Counters(), Counters()
    first.inc("accepted")
    assert first.get("accepted") == 1
    assert second.get("accepted") == 0
