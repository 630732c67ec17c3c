"""Fleet rate limits over real processes, all on 127.0.0.1: three offload instances behind
HAProxy (``mode tcp``, round robin, ``send-proxy-v2``; offload takes the client address from
the PROXY header), one redis-server. One client opens three keep-alive connections through
HAProxy (one lands on each instance) and sends requests over them in turn; the limit key is
the client address the PROXY header names."""

from __future__ import annotations

import http.client
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import http_config
from fleet_harness import HaProxy, RedisServer
from harness import Offload, free_port
from http_client import https
from test_admin import samples, value

pytestmark = pytest.mark.peers

RATE = 40
"""Requests per second the client may make across the fleet."""
BURST = 2
WINDOW = 5.0


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    instance = RedisServer(tmp_path / "redis")
    yield instance
    instance.kill()


def fleet(tmp_path: Path, pki, bundle: Path, backend: str, redis: RedisServer, offload, *,
          on_failure: str = "local", rate: str = f"{RATE}/s burst {BURST}"
          ) -> tuple[HaProxy, list[int], list[Offload]]:
    ports, admins, instances = [], [], []
    for index in range(3):
        port, admin = free_port(), free_port()
        config = http_config(
            port, [bundle], [backend], access_log="off",
            frontend=(f'limits = {{ scope = "fleet", on_store_failure = "{on_failure}", '
                      f'request_rate_per_ip = "{rate}" }}\n'
                      'accept_proxy = true\nproxy_sources = ["127.0.0.1/32"]'),
            global_="")
        config += (f'\n[fleet]\nredis = "{redis.url}"\nnode = "edge-{index}"\n'
                   f'name = "limits-test"\n[admin]\nbind = "127.0.0.1:{admin}"\n')
        ports.append(port)
        admins.append(admin)
        instances.append(offload(config))
    return HaProxy(tmp_path, ports), admins, instances


def hammer(connections: list[http.client.HTTPSConnection], seconds: float,
           during: float | None = None, action=None) -> Counter[object]:
    """Requests round robin over ``connections`` for ``seconds``; outcomes by status (or
    by exception name for a request that failed outright). ``action`` runs once, ``during``
    seconds in."""
    outcomes: Counter[object] = Counter()
    start = time.monotonic()
    index = 0
    acted = action is None
    while (now := time.monotonic()) - start < seconds:
        if not acted and during is not None and now - start >= during:
            action()
            acted = True
        conn = connections[index % len(connections)]
        index += 1
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            response.read()
            outcomes[response.status] += 1
        except (OSError, http.client.HTTPException) as error:
            outcomes[type(error).__name__] += 1
    return outcomes


def connect_through(proxy: HaProxy, pki, admins: list[int]) -> list[http.client.HTTPSConnection]:
    """One keep-alive connection through the balancer on each instance. Round robin does not
    promise that (HAProxy's own threads, its port probe), so each connection's instance is
    read from the instances' open-connection gauges; a second one on an instance is closed."""
    placed: dict[int, http.client.HTTPSConnection] = {}
    for _ in range(12):
        conn = https(proxy.port, pki.ca)
        conn.request("GET", "/")  # through TLS and the PROXY header: the instance counts it
        conn.getresponse().read()
        open_now = [value(samples(admin), "offload_connections_active") for admin in admins]
        new = [index for index, count in enumerate(open_now)
               if count > (1 if index in placed else 0)]
        if len(new) == 1 and new[0] not in placed:
            placed[new[0]] = conn
            if len(placed) == len(admins):
                return [placed[index] for index in sorted(placed)]
        else:
            conn.close()
    raise AssertionError(f"the balancer did not reach every instance: {sorted(placed)}")


def test_a_per_client_limit_holds_for_the_fleet(pki, localhost_bundle, http_backend, offload,
                                                redis_server, tmp_path):
    backend = http_backend()
    proxy, admins, _ = fleet(tmp_path, pki, localhost_bundle, backend.address, redis_server,
                             offload)
    try:
        outcomes = hammer(connect_through(proxy, pki, admins), WINDOW)
    finally:
        proxy.kill()
    admitted = outcomes[200]
    expected = RATE * WINDOW + BURST
    assert set(outcomes) <= {200, 429}, outcomes
    assert outcomes[429] > admitted, "the client did not go over the limit: nothing measured"
    # without the fleet each instance would admit RATE/s: three times as many
    assert 0.9 * expected <= admitted <= 1.1 * expected, outcomes
    per_instance = [value(samples(admin), "offload_http_requests_total") for admin in admins]
    assert all(count > 0 for count in per_instance), per_instance  # all three took part
    round_trips = [samples(admin) for admin in admins]
    for metrics in round_trips:
        assert value(metrics, "offload_fleet_limit_round_trips_total", path="request") == 0
        assert value(metrics, "offload_fleet_limit_round_trips_total", path="batch") > 0
        assert value(metrics, "offload_fleet_limit_batch_keys_total") > 0


def test_redis_stopping_mid_load_fails_no_request(pki, localhost_bundle, http_backend, offload,
                                                  redis_server, tmp_path):
    backend = http_backend()
    # a limit this client stays under: every instance admits, counts and sends all along
    proxy, admins, instances = fleet(tmp_path, pki, localhost_bundle, backend.address,
                                     redis_server, offload, rate="5000/s")
    connections = connect_through(proxy, pki, admins)
    outcomes = hammer(connections, 3.0, during=1.0, action=redis_server.kill)
    assert set(outcomes) <= {200, 429}, outcomes  # no request failed because Redis did
    assert outcomes[200] > 0
    for instance in instances:
        instance.wait_for(lambda event: event.get("event") == "fleet_limits_local")
    metrics = [samples(admin) for admin in admins]
    assert sum(value(m, "offload_fleet_limit_local_decisions_total") for m in metrics) > 0
    assert all(value(m, "offload_fleet_limit_store_failures_total") > 0 for m in metrics)
    redis_server.start()
    for instance in instances:
        instance.wait_for(lambda event: event.get("event") == "fleet_limits_shared")
    outcomes = hammer(connections, 1.0)
    proxy.kill()
    assert set(outcomes) <= {200, 429}, outcomes
