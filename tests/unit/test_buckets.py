"""Rate and connection limits (offload.security.buckets), driven by a fake clock: plain floats.

Properties checked with hypothesis: a bucket never admits more than ``burst + rate * elapsed``
over any interval; keyed tables stay within ``max_keys`` under address spraying; concurrency
counts match a model and never exceed their limits; client keys are idempotent and contain
their address; Limits never admits more than either its per-client or its global rate allows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offload.config.model import FrontendLimits
from offload.config.units import EventRate
from offload.security.buckets import (
    ConcurrencyLimit,
    KeyedBuckets,
    TokenBucket,
    client_key,
    parse_address,
)
from offload.security.limits import (
    ALLOWED,
    LimitDecision,
    Limits,
    LimitsConfig,
    Rate,
    worker_limits,
)

EPSILON = 1e-9

# ---------------------------------------------------------------------------------- client keys


@pytest.mark.parametrize(("address", "key"), [
    ("192.0.2.1", "192.0.2.1"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
    ("::ffff:192.0.2.1", "192.0.2.1"),
    ("fe80::1%eth0", "fe80::/64"),
    ("2001:db8:1:2::/64", "2001:db8:1:2::/64"),
    ("192.0.2.1/32", "192.0.2.1"),
    ("10.1.2.3/8", "10.0.0.0/8"),
    ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
])
def test_client_key_defaults(address: str, key: str) -> None:
    assert client_key(address) == key


def test_client_key_prefixes() -> None:
    assert client_key("192.0.2.77", v4_prefix=24) == "192.0.2.0/24"
    assert client_key("2001:db8::7", v6_prefix=128) == "2001:db8::7"
    assert client_key("2001:db8:1:2:3::", v6_prefix=48) == "2001:db8:1::/48"
    assert client_key("198.51.100.9", v4_prefix=0) == "0.0.0.0/0"


@pytest.mark.parametrize("address", ["", "example.com", "1.2.3", "01.2.3.4", "1.2.3.4 ",
                                     "1::2::3", "1.2.3.4/33", "::1/129", "1.2.3.4/x"])
def test_client_key_refuses_non_addresses(address: str) -> None:
    with pytest.raises(ValueError):
        client_key(address)


@pytest.mark.parametrize(("v4", "v6"), [(33, 64), (-1, 64), (32, 129), (32, -1)])
def test_client_key_refuses_bad_prefixes(v4: int, v6: int) -> None:
    with pytest.raises(ValueError, match="prefix"):
        client_key("192.0.2.1", v4_prefix=v4, v6_prefix=v6)


def test_parse_address_normalises_like_client_key() -> None:
    assert parse_address("::ffff:192.0.2.1") == IPv4Address("192.0.2.1")
    assert parse_address("fe80::1%eth0") == IPv6Address("fe80::1")
    with pytest.raises(ValueError):
        parse_address("nope")


@settings(max_examples=300)
@given(ip=st.ip_addresses(), v4=st.integers(0, 32), v6=st.integers(0, 128))
def test_client_key_contains_address_and_is_idempotent(
        ip: IPv4Address | IPv6Address, v4: int, v6: int) -> None:
    key = client_key(str(ip), v4_prefix=v4, v6_prefix=v6)
    plain = ip.ipv4_mapped if isinstance(ip, IPv6Address) and ip.ipv4_mapped else ip
    network = ip_network(key)
    assert plain in network
    assert network.prefixlen == (v4 if plain.version == 4 else v6)
    assert client_key(key, v4_prefix=v4, v6_prefix=v6) == key


@given(high=st.integers(0, 2**64 - 1), low1=st.integers(0, 2**64 - 1),
       low2=st.integers(0, 2**64 - 1))
def test_one_ipv6_64_is_one_client(high: int, low1: int, low2: int) -> None:
    first = str(IPv6Address(high << 64 | low1))
    second = str(IPv6Address(high << 64 | low2))
    other = str(IPv6Address((high ^ 1) << 64 | low1))
    assert client_key(first) == client_key(second) != client_key(other)


# ---------------------------------------------------------------------------------- TokenBucket


def test_bucket_starts_full_and_refills_at_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(0.49)
    assert bucket.take(0.5)
    assert not bucket.take(0.5)
    assert bucket.tokens(10.0) == 3.0  # capped at burst
    assert bucket.full(10.0)


def test_bucket_retry_after_is_exact() -> None:
    bucket = TokenBucket(rate=4.0, burst=2.0)
    assert bucket.retry_after(0.0) == 0.0
    assert bucket.take(0.0, cost=2.0)
    assert bucket.retry_after(0.0) == pytest.approx(0.25)
    assert bucket.retry_after(0.0, cost=2.0) == pytest.approx(0.5)
    assert bucket.retry_after(0.1) == pytest.approx(0.15)
    assert not bucket.take(0.2)
    assert bucket.take(0.25)


def test_refused_take_spends_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=2.0)
    assert bucket.take(0.0, cost=2.0)
    for _ in range(100):
        assert not bucket.take(0.5)
    assert bucket.tokens(0.5) == pytest.approx(0.5)
    assert bucket.take(1.0)


def test_refund_is_capped_at_burst() -> None:
    bucket = TokenBucket(rate=1.0, burst=2.0)
    assert bucket.take(0.0)
    bucket.refund()
    bucket.refund()
    assert bucket.tokens(0.0) == 2.0


def test_clock_going_backwards_gives_no_refill() -> None:
    bucket = TokenBucket(rate=1.0, burst=1.0)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)
    assert not bucket.take(10.5)  # the refill is still measured from 10.0
    assert bucket.take(11.0)


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.0),
                                             (math.inf, 1.0), (1.0, math.inf), (math.nan, 1.0)])
def test_bucket_refuses_bad_parameters(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


@pytest.mark.parametrize("cost", [0.0, -1.0, 2.5])
def test_bucket_refuses_impossible_costs(cost: float) -> None:
    bucket = TokenBucket(rate=1.0, burst=2.0)
    with pytest.raises(ValueError, match="cost"):
        bucket.take(0.0, cost)
    with pytest.raises(ValueError, match="cost"):
        bucket.retry_after(0.0, cost)


@settings(max_examples=300)
@given(rate=st.floats(0.1, 100.0), burst=st.floats(1.0, 20.0),
       steps=st.lists(st.tuples(st.floats(0.0, 2.0), st.floats(0.1, 1.0)), max_size=60))
def test_bucket_never_admits_more_than_burst_plus_rate_times_elapsed(
        rate: float, burst: float, steps: list[tuple[float, float]]) -> None:
    bucket = TokenBucket(rate, burst)
    now = 0.0
    admitted: list[tuple[float, float]] = []
    for gap, fraction in steps:
        now += gap
        cost = fraction * burst
        if bucket.take(now, cost):
            admitted.append((now, cost))
    for first in range(len(admitted)):
        spent = 0.0
        for last in range(first, len(admitted)):
            spent += admitted[last][1]
            elapsed = admitted[last][0] - admitted[first][0]
            assert spent <= burst + rate * elapsed + 1e-6 * (1 + spent)


@given(rate=st.floats(0.1, 100.0), burst=st.integers(1, 10), start=st.floats(0.0, 1e6))
def test_retry_after_is_when_the_bucket_admits_again(rate: float, burst: int,
                                                     start: float) -> None:
    bucket = TokenBucket(rate, float(burst))
    while bucket.take(start):
        pass
    wait = bucket.retry_after(start)
    assert wait > 0
    assert not bucket.take(start + wait * 0.99)
    assert bucket.take(start + wait + EPSILON * (1 + start))


# --------------------------------------------------------------------------------- KeyedBuckets


def test_keyed_buckets_are_independent() -> None:
    buckets = KeyedBuckets(rate=1.0, burst=1.0)
    assert buckets.take("a", 0.0)
    assert not buckets.take("a", 0.0)
    assert buckets.take("b", 0.0)
    assert buckets.retry_after("a", 0.0) == pytest.approx(1.0)
    assert buckets.retry_after("unknown", 0.0) == 0.0
    buckets.refund("unknown")  # no bucket: nothing to refund, nothing created
    assert len(buckets) == 2
    assert "unknown" not in buckets


def test_full_table_evicts_a_full_bucket_before_the_least_recently_used() -> None:
    buckets = KeyedBuckets(rate=1.0, burst=2.0, max_keys=2)
    assert buckets.take("a", 0.0, cost=2.0)  # empty until 2.0
    assert buckets.take("b", 0.1)  # full again at 1.1
    assert buckets.take("c", 1.5)
    assert "a" in buckets
    assert "b" not in buckets
    assert buckets.take("a", 1.5)  # a kept its state: 1.5 tokens
    assert not buckets.take("a", 1.5)


def test_full_table_without_idle_buckets_evicts_the_least_recently_used() -> None:
    buckets = KeyedBuckets(rate=1.0, burst=1.0, max_keys=2)
    assert buckets.take("a", 0.0)
    assert buckets.take("b", 0.1)
    assert not buckets.take("a", 0.2)  # a refused take still counts as use
    assert buckets.take("c", 0.3)
    assert "a" in buckets
    assert "b" not in buckets
    assert not buckets.take("a", 0.3)


def test_prune_forgets_only_full_buckets() -> None:
    buckets = KeyedBuckets(rate=1.0, burst=2.0)
    assert buckets.take("a", 0.0)
    assert buckets.take("b", 0.5, cost=2.0)
    assert buckets.prune(1.0) == 1
    assert "a" not in buckets
    assert "b" in buckets
    assert buckets.prune(2.5) == 1
    assert len(buckets) == 0


def test_keyed_buckets_refuse_bad_parameters() -> None:
    with pytest.raises(ValueError):
        KeyedBuckets(rate=0.0, burst=1.0)
    with pytest.raises(ValueError, match="max_keys"):
        KeyedBuckets(rate=1.0, burst=1.0, max_keys=0)


@settings(max_examples=200)
@given(max_keys=st.integers(1, 8),
       steps=st.lists(st.tuples(st.integers(0, 10_000), st.floats(0.0, 0.5)), max_size=200))
def test_keyed_buckets_stay_bounded_under_address_spraying(
        max_keys: int, steps: list[tuple[int, float]]) -> None:
    buckets = KeyedBuckets(rate=1.0, burst=2.0, max_keys=max_keys)
    now = 0.0
    for key, gap in steps:
        now += gap
        buckets.take(str(key), now)
        assert len(buckets) <= max_keys
        assert str(key) in buckets  # the key just used is never the one evicted


# ----------------------------------------------------------------------------- ConcurrencyLimit


def test_concurrency_per_key_and_total() -> None:
    limit = ConcurrencyLimit(total=3, per_key=2)
    assert limit.acquire("a") is None
    assert limit.acquire("a") is None
    assert limit.acquire("a") == "per_key"
    assert limit.acquire("b") is None
    assert limit.acquire("c") == "total"
    assert (limit.active, limit.active_for("a"), limit.active_for("c"), len(limit)) == (3, 2, 0, 2)
    limit.release("b")
    assert len(limit) == 1  # a key with nothing in progress is forgotten
    assert limit.acquire("c") is None


def test_concurrency_table_full_refuses_new_keys_only() -> None:
    limit = ConcurrencyLimit(per_key=5, max_keys=1)
    assert limit.acquire("a") is None
    assert limit.acquire("b") == "table_full"
    assert limit.acquire("a") is None
    assert limit.active == 2
    limit.release("a")
    limit.release("a")
    assert limit.acquire("b") is None


def test_concurrency_without_per_key_tracks_no_keys() -> None:
    limit = ConcurrencyLimit(total=2)
    assert limit.acquire("a") is None
    assert limit.acquire("b") is None
    assert limit.acquire("c") == "total"
    assert len(limit) == 0
    limit.release("anything")
    assert limit.active == 1


def test_release_without_acquire_is_an_error() -> None:
    limit = ConcurrencyLimit(total=2, per_key=1)
    assert limit.acquire("a") is None
    with pytest.raises(ValueError, match="release without acquire"):
        limit.release("b")
    limit.release("a")
    with pytest.raises(ValueError, match="release without acquire"):
        limit.release("a")
    assert limit.active == 0


@pytest.mark.parametrize("kwargs", [{"total": 0}, {"per_key": 0}, {"max_keys": 0}])
def test_concurrency_refuses_bad_parameters(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        ConcurrencyLimit(**kwargs)


@settings(max_examples=200)
@given(total=st.none() | st.integers(1, 6), per_key=st.none() | st.integers(1, 3),
       max_keys=st.integers(1, 4),
       steps=st.lists(st.tuples(st.booleans(), st.integers(0, 6)), max_size=100))
def test_concurrency_matches_a_model(total: int | None, per_key: int | None, max_keys: int,
                                     steps: list[tuple[bool, int]]) -> None:
    limit = ConcurrencyLimit(total=total, per_key=per_key, max_keys=max_keys)
    model: dict[str, int] = {}
    for acquire, number in steps:
        key = str(number)
        held = model.get(key, 0)
        if acquire:
            refusal = limit.acquire(key)
            if refusal is None:
                model[key] = held + 1
            elif refusal == "per_key":
                assert per_key is not None and held >= per_key
            elif refusal == "table_full":
                assert per_key is not None and held == 0 and len(model) >= max_keys
            else:
                assert total is not None and sum(model.values()) >= total
        elif held:
            limit.release(key)
            if held == 1:
                del model[key]
            else:
                model[key] = held - 1
        assert limit.active == sum(model.values())
        assert total is None or limit.active <= total
        assert per_key is None or all(limit.active_for(k) == n <= per_key for k, n in model.items())
        assert len(limit) <= max_keys


# ---------------------------------------------------------------------------------------- Limits


def test_no_limits_admit_everything() -> None:
    limits = Limits(LimitsConfig())
    for step in range(100):
        assert limits.on_connect("192.0.2.1", step / 100) is ALLOWED
        assert limits.on_full_handshake("192.0.2.1", step / 100) is ALLOWED
        assert limits.on_request("192.0.2.1", step / 100) is ALLOWED
    assert limits.connections == 100
    assert limits.tracked_clients() == 0


def test_decision_properties() -> None:
    assert ALLOWED.allowed
    assert not ALLOWED.per_client
    refused = LimitDecision("per_ip_request_rate", 3)
    assert not refused.allowed
    assert refused.per_client
    assert not LimitDecision("global_request_rate", 1).per_client
    assert not LimitDecision("client_table_full", 1).per_client


def test_per_ip_connections() -> None:
    limits = Limits(LimitsConfig(per_ip_connections=2))
    assert limits.on_connect("a", 0.0).allowed
    assert limits.on_connect("a", 0.0).allowed
    assert limits.on_connect("a", 0.0) == LimitDecision("per_ip_connections", 1)
    assert limits.on_connect("b", 0.0).allowed
    limits.on_disconnect("a")
    assert limits.on_connect("a", 0.0).allowed
    assert limits.connections == 3


def test_global_connections() -> None:
    limits = Limits(LimitsConfig(global_connections=2))
    assert limits.on_connect("a", 0.0).allowed
    assert limits.on_connect("b", 0.0).allowed
    assert limits.on_connect("c", 0.0) == LimitDecision("global_connections", 1)
    limits.on_disconnect("a")
    assert limits.on_connect("c", 0.0).allowed


def test_client_table_full_is_not_the_clients_fault() -> None:
    limits = Limits(LimitsConfig(per_ip_connections=5, max_clients=1))
    assert limits.on_connect("a", 0.0).allowed
    decision = limits.on_connect("b", 0.0)
    assert decision == LimitDecision("client_table_full", 1)
    assert not decision.per_client


def test_connection_rates_and_retry_after() -> None:
    limits = Limits(LimitsConfig(per_ip_connection_rate=Rate(0.5, 1),
                                 global_connection_rate=Rate(10, 2)))
    assert limits.on_connect("a", 0.0).allowed
    assert limits.on_connect("a", 0.0) == LimitDecision("per_ip_connection_rate", 2)
    assert limits.on_connect("b", 0.0).allowed
    assert limits.on_connect("c", 0.0) == LimitDecision("global_connection_rate", 1)
    assert limits.connections == 2  # refused connections hold no slot


def test_global_refusal_refunds_the_clients_tokens_and_slot() -> None:
    limits = Limits(LimitsConfig(per_ip_connections=1, per_ip_connection_rate=Rate(0.01, 1),
                                 global_connection_rate=Rate(1, 1)))
    assert limits.on_connect("a", 0.0).allowed
    limits.on_disconnect("a")
    assert limits.on_connect("b", 0.0).limit == "global_connection_rate"
    assert limits.connections == 0
    assert limits.on_connect("b", 1.0).allowed  # b's own token and slot were given back


def test_concurrency_refusal_refunds_the_connection_rate_token() -> None:
    limits = Limits(LimitsConfig(per_ip_connections=1, per_ip_connection_rate=Rate(0.01, 2)))
    assert limits.on_connect("a", 0.0).allowed
    for _ in range(5):
        assert limits.on_connect("a", 0.0).limit == "per_ip_connections"
    limits.on_disconnect("a")
    assert limits.on_connect("a", 0.0).allowed  # the refused attempts cost no tokens


def test_per_client_refusal_leaves_the_global_budget_alone() -> None:
    limits = Limits(LimitsConfig(per_ip_request_rate=Rate(1, 1), global_request_rate=Rate(1, 2)))
    assert limits.on_request("attacker", 0.0).allowed
    for _ in range(50):
        assert limits.on_request("attacker", 0.0).limit == "per_ip_request_rate"
    assert limits.on_request("client", 0.0).allowed
    assert limits.on_request("other", 0.0).limit == "global_request_rate"


def test_per_client_checks_come_first() -> None:
    limits = Limits(LimitsConfig(global_connections=1, per_ip_connection_rate=Rate(1, 1)))
    assert limits.on_connect("a", 0.0).allowed
    assert limits.on_connect("a", 0.0).limit == "per_ip_connection_rate"
    assert limits.on_connect("b", 0.0).limit == "global_connections"


def test_handshake_and_request_limits_name_themselves() -> None:
    limits = Limits(LimitsConfig(per_ip_handshake_rate=Rate(0.1, 1),
                                 global_handshake_rate=Rate(100, 2),
                                 per_ip_request_rate=Rate(100, 1),
                                 global_request_rate=Rate(0.25, 2)))
    assert limits.on_full_handshake("a", 0.0).allowed
    assert limits.on_full_handshake("a", 0.0) == LimitDecision("per_ip_handshake_rate", 10)
    assert limits.on_full_handshake("b", 0.0).allowed
    assert limits.on_full_handshake("c", 0.0) == LimitDecision("global_handshake_rate", 1)
    assert limits.on_request("a", 0.0).allowed
    assert limits.on_request("a", 0.0) == LimitDecision("per_ip_request_rate", 1)
    assert limits.on_request("b", 0.0).allowed
    assert limits.on_request("c", 0.0) == LimitDecision("global_request_rate", 4)


def test_disconnect_without_connect_is_an_error() -> None:
    limits = Limits(LimitsConfig(per_ip_connections=1))
    with pytest.raises(ValueError, match="release without acquire"):
        limits.on_disconnect("a")


def test_limits_client_key_and_prune() -> None:
    limits = Limits(LimitsConfig(per_ip_request_rate=Rate(1, 2), v4_prefix=24, v6_prefix=48))
    assert limits.client_key("192.0.2.9") == "192.0.2.0/24"
    assert limits.client_key("2001:db8:1:2::1") == "2001:db8:1::/48"
    assert limits.on_request("a", 0.0).allowed
    assert limits.on_request("b", 0.5).allowed
    assert limits.tracked_clients() == 2
    assert limits.prune(1.0) == 1
    assert limits.tracked_clients() == 1


@pytest.mark.parametrize("make", [
    lambda: LimitsConfig(per_ip_connections=0),
    lambda: LimitsConfig(global_connections=-1),
    lambda: LimitsConfig(max_clients=0),
    lambda: LimitsConfig(v6_prefix=129),
    lambda: Rate(0, 1),
    lambda: Rate(1, 0.5),
    lambda: Rate(math.inf, 1),
])
def test_limits_config_is_validated(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()


@settings(max_examples=200)
@given(per_ip=st.tuples(st.floats(0.5, 20.0), st.integers(1, 5)),
       total=st.tuples(st.floats(0.5, 50.0), st.integers(1, 10)),
       steps=st.lists(st.tuples(st.integers(0, 3), st.floats(0.0, 0.3)), max_size=120))
def test_limits_never_exceed_either_rate(per_ip: tuple[float, int], total: tuple[float, int],
                                         steps: list[tuple[int, float]]) -> None:
    limits = Limits(LimitsConfig(per_ip_request_rate=Rate(*per_ip),
                                 global_request_rate=Rate(*total)))
    now = 0.0
    admitted: list[tuple[float, str]] = []
    for client, gap in steps:
        now += gap
        decision = limits.on_request(str(client), now)
        if decision.allowed:
            admitted.append((now, str(client)))
        else:
            assert decision.retry_after >= 1
    clients = {client for _, client in admitted}
    for (rate, burst), who in [(total, None), *((per_ip, client) for client in clients)]:
        times = [when for when, client in admitted if who is None or client == who]
        for first in range(len(times)):
            for last in range(first, len(times)):
                assert last - first + 1 <= burst + rate * (times[last] - times[first]) + 1e-6


def test_parsed_addresses_agree_with_keys() -> None:
    assert ip_address(client_key("::ffff:198.51.100.7")) == parse_address("::ffff:198.51.100.7")


# ------------------------------------------------------------------- configured limits per worker


def test_worker_limits_share_global_limits_and_keep_per_client_ones() -> None:
    settings = FrontendLimits(
        max_connections=1000, max_connections_per_ip=20, connection_rate=EventRate(100, 200),
        connection_rate_per_ip=EventRate(5, 10), handshake_rate=EventRate(9, 9),
        handshake_rate_per_ip=EventRate(2, 4), request_rate=EventRate(300, 3),
        request_rate_per_ip=EventRate(20, 40), ipv4_prefix=24, ipv6_prefix=48,
        max_tracked_clients=1000)
    config = worker_limits(settings, 4)
    assert config == LimitsConfig(
        global_connections=250, per_ip_connections=20,
        global_connection_rate=Rate(25, 50), per_ip_connection_rate=Rate(5, 10),
        global_handshake_rate=Rate(2.25, 2.25), per_ip_handshake_rate=Rate(2, 4),
        global_request_rate=Rate(75, 1), per_ip_request_rate=Rate(20, 40),  # burst 3/4 -> 1
        max_clients=1000, v4_prefix=24, v6_prefix=48)
    assert worker_limits(FrontendLimits(max_connections=10), 3) == LimitsConfig(
        global_connections=4)  # rounded up: the workers together allow at least the figure
    assert worker_limits(settings, 1) == LimitsConfig(
        global_connections=1000, per_ip_connections=20,
        global_connection_rate=Rate(100, 200), per_ip_connection_rate=Rate(5, 10),
        global_handshake_rate=Rate(9, 9), per_ip_handshake_rate=Rate(2, 4),
        global_request_rate=Rate(300, 3), per_ip_request_rate=Rate(20, 40),
        max_clients=1000, v4_prefix=24, v6_prefix=48)


def test_worker_limits_none_when_nothing_is_limited() -> None:
    assert worker_limits(FrontendLimits(), 8) is None
    assert worker_limits(FrontendLimits(ipv6_prefix=56, max_tracked_clients=10), 8) is None
    only = worker_limits(FrontendLimits(request_rate_per_ip=EventRate(1, 1)), 8)
    assert only == LimitsConfig(per_ip_request_rate=Rate(1, 1))


# ------------------------------------------------------------------- per-fingerprint rates


class Fingerprint:
    """A connection's fingerprints as the limits see them; counts how often JA4 is asked."""

    def __init__(self, ja4: str | None) -> None:
        self._ja4 = ja4
        self.asked = 0

    @property
    def ja4(self) -> str | None:
        self.asked += 1
        return self._ja4


BOT, BROWSER = Fingerprint("t12i190800_d83cc789557e_7af1ed941c26"), Fingerprint(
    "t13d1516h2_8daaf6152771_e5627efa2ab1")


def test_a_fingerprint_rate_spans_addresses() -> None:
    """A tool rotating its addresses keeps its fingerprint: one budget for all of them."""
    limits = Limits(LimitsConfig(per_ip_request_rate=Rate(100, 100),
                                 per_fingerprint_request_rate=Rate(1, 3)))
    assert limits.keys_fingerprints
    for address in ("198.51.100.1", "198.51.100.2", "198.51.100.3"):
        assert limits.on_request(address, 0.0, BOT).allowed  # type: ignore[arg-type]
    refused = limits.on_request("198.51.100.4", 0.0, BOT)  # type: ignore[arg-type]
    assert refused == LimitDecision("per_fingerprint_request_rate", 1)
    assert not refused.per_client  # many clients share a fingerprint: no ban offence
    assert limits.on_request("198.51.100.4", 0.0, BROWSER).allowed  # type: ignore[arg-type]
    assert limits.on_request("198.51.100.5", 0.0).allowed  # no fingerprint: not counted
    assert limits.on_request("198.51.100.4", 1.0, BOT).allowed  # type: ignore[arg-type]


def test_fingerprint_handshake_rate_and_order() -> None:
    limits = Limits(LimitsConfig(per_ip_handshake_rate=Rate(1, 1),
                                 per_fingerprint_handshake_rate=Rate(1, 2),
                                 global_handshake_rate=Rate(1, 3)))
    assert limits.on_full_handshake("a", 0.0, BOT).allowed  # type: ignore[arg-type]
    # per client first: refused there, the fingerprint's budget is not spent
    assert limits.on_full_handshake("a", 0.0, BOT).limit == "per_ip_handshake_rate"  # type: ignore[arg-type]
    assert limits.on_full_handshake("b", 0.0, BOT).allowed  # type: ignore[arg-type]
    # the fingerprint's budget is spent: the client's token is given back
    assert limits.on_full_handshake("c", 0.0, BOT).limit == "per_fingerprint_handshake_rate"  # type: ignore[arg-type]
    assert limits.on_full_handshake("c", 0.0, BROWSER).allowed  # type: ignore[arg-type]
    # global last: refused there, the fingerprint's token is given back
    assert limits.on_full_handshake("d", 0.0, BROWSER).limit == "global_handshake_rate"  # type: ignore[arg-type]
    assert limits.on_full_handshake("d", 1.0, BROWSER).allowed  # type: ignore[arg-type]
    assert limits.tracked_clients() == 4 + 2


def test_fingerprints_are_computed_only_when_a_limit_counts_them() -> None:
    probe = Fingerprint("t13d1516h2_8daaf6152771_e5627efa2ab1")
    limits = Limits(LimitsConfig(per_ip_request_rate=Rate(1, 1)))
    assert not limits.keys_fingerprints
    assert limits.on_request("a", 0.0, probe).allowed  # type: ignore[arg-type]
    assert limits.on_full_handshake("a", 0.0, probe).allowed  # type: ignore[arg-type]
    assert probe.asked == 0


def test_worker_limits_share_fingerprint_rates() -> None:
    config = worker_limits(FrontendLimits(handshake_rate_per_fingerprint=EventRate(40, 80),
                                          request_rate_per_fingerprint=EventRate(100, 8)), 4)
    assert config == LimitsConfig(per_fingerprint_handshake_rate=Rate(10, 20),
                                  per_fingerprint_request_rate=Rate(25, 2))
