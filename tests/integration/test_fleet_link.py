"""The fleet's Redis link against real redis-server processes on 127.0.0.1: it never raises,
counts round trips and failures, comes back without being rebuilt, and speaks TLS with a
client certificate and a password read from a file."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path

import pytest
from fleet_harness import RedisServer
from harness import free_port, need

from offload.config.model import FleetConfig
from offload.demo.pki import write_private
from offload.fleet import store
from offload.fleet.link import UNAVAILABLE, FleetLink, redis_client
from offload.server.fleet_part import _without_password

pytestmark = pytest.mark.peers


def link_for(**fleet: object) -> FleetLink:
    config = FleetConfig.model_validate({"connect_timeout": "300ms",
                                         "operation_timeout": "300ms", **fleet})
    return FleetLink(redis_client(config), config)


async def ping(link: FleetLink) -> object:
    return await link.call("ping", lambda c: store.command(c, "PING"))


def test_unreachable_store_answers_unavailable_counted_and_logged_once(caplog) -> None:
    link = link_for(redis=f"redis://127.0.0.1:{free_port()}/0")

    async def run() -> list[object]:
        try:
            return [await ping(link) for _ in range(3)]
        finally:
            await link.close()
    with caplog.at_level(logging.WARNING, logger="offload.fleet"):
        results = asyncio.run(run())
    assert results == [UNAVAILABLE] * 3
    assert link.stats.failures == 3 and link.stats.outages == 1 and not link.stats.up
    assert link.stats.round_trips == {"ping": 3}
    assert sum("fleet store unavailable" in r.getMessage() for r in caplog.records) == 1


def test_link_comes_back_when_redis_does(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    link = link_for(redis=server.url)

    async def run() -> list[object]:
        try:
            first = await ping(link)
            await asyncio.to_thread(server.kill)
            down = await ping(link)
            await asyncio.to_thread(server.start)
            again = await ping(link)
            if again is UNAVAILABLE:  # the first call after a restart may find a dead socket
                again = await ping(link)
            return [first, down, again]
        finally:
            await link.close()
    try:
        first, down, again = asyncio.run(run())
    finally:
        server.kill()
    assert first is True and down is UNAVAILABLE and again is True
    assert link.stats.up and link.stats.outages == 1 and link.stats.latency is not None


def test_tls_with_client_certificate_and_password_file(tmp_path: Path, pki) -> None:
    directory = tmp_path / "redis"
    directory.mkdir()
    bundle = pki.bundle(["127.0.0.1", "localhost"], directory=directory)
    client_bundle = directory / "client.pem"
    write_private(client_bundle, pki.authority.issue(["offload-node"], client=True).bundle())
    port = free_port()
    password = tmp_path / "redis-password"
    password.write_text("s3cret-fleet-password\n")
    process = subprocess.Popen(
        [need("redis-server", "redis-server"), "--port", "0", "--tls-port", str(port),
         "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(directory),
         "--tls-cert-file", str(bundle), "--tls-key-file", str(bundle),
         "--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "yes",
         "--requirepass", "s3cret-fleet-password"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        good = link_for(redis=f"rediss://127.0.0.1:{port}/0", tls_ca=str(pki.ca),
                        tls_certificate=str(client_bundle), tls_key=str(client_bundle),
                        password_file=str(password))
        no_password = link_for(redis=f"rediss://127.0.0.1:{port}/0", tls_ca=str(pki.ca),
                               tls_certificate=str(client_bundle), tls_key=str(client_bundle))
        no_certificate = link_for(redis=f"rediss://127.0.0.1:{port}/0", tls_ca=str(pki.ca),
                                  password_file=str(password))

        async def run() -> list[object]:
            results = []
            for link in (good, no_password, no_certificate):
                for _ in range(50):  # until redis-server listens
                    result = await ping(link)
                    if result is not UNAVAILABLE or link is not good:
                        break
                    await asyncio.sleep(0.1)
                results.append(result)
                await link.close()
            return results
        outcome = asyncio.run(run())
        assert outcome == [True, UNAVAILABLE, UNAVAILABLE]
        assert "Authentication" in (no_password.stats.last_error or "") or \
            "NOAUTH" in (no_password.stats.last_error or "")
    finally:
        process.kill()
        process.wait(timeout=10)


def test_api_never_shows_the_password() -> None:
    assert _without_password("redis://:secret@10.0.0.1:6379/0") == "redis://***@10.0.0.1:6379/0"
    assert _without_password("rediss://user:pw@r:6380/1") == "rediss://***@r:6380/1"
    assert _without_password("redis://10.0.0.1:6379/0") == "redis://10.0.0.1:6379/0"
