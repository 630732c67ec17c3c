"""The shared ACME store's lease, fence and sealing against a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis
from fleet_harness import RedisServer

from offload.config.model import FleetConfig
from offload.fleet.acme_store import AcmeStore, Lease
from offload.fleet.link import FleetLink, redis_client
from offload.fleet.seal import Sealer

pytestmark = pytest.mark.peers
T = TypeVar("T")
SECRET = b"0123456789abcdef0123456789abcdef"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    instance = RedisServer(tmp_path / "redis")
    yield instance
    instance.kill()


def with_stores(server: RedisServer, body: Callable[[AcmeStore, AcmeStore], Awaitable[T]]) -> T:
    async def run() -> T:
        links = [FleetLink(redis_client(config), config) for config in (
            FleetConfig(redis=server.url, name="t", node="a"),
            FleetConfig(redis=server.url, name="t", node="b"))]
        try:
            return await body(AcmeStore(links[0], Sealer(SECRET), "a"),
                              AcmeStore(links[1], Sealer(SECRET), "b"))
        finally:
            for link in links:
                await link.close()
    return asyncio.run(run())


def test_one_node_holds_a_name_and_its_fence_stops_a_late_writer(server: RedisServer) -> None:
    async def body(a: AcmeStore, b: AcmeStore) -> None:
        lease = await a.acquire("site.test", 200)
        assert isinstance(lease, Lease)
        assert await b.acquire("site.test", 200) is False  # held
        assert await a.holder("site.test") == "a"
        assert await a.renew(lease, 200)
        await asyncio.sleep(0.3)  # a stalls past its lease (a paused VM)
        later = await b.acquire("site.test", 5000)
        assert isinstance(later, Lease) and later.token > lease.token
        assert not await a.renew(lease, 200)  # a finds out when it tries to renew
        assert await b.put_certificate("site.test", later, b"B's certificate") == 1
        assert await a.put_certificate("site.test", lease, b"A's late one") == -1
        stored = await a.certificate("site.test")
        assert stored is not None and stored.bundle == b"B's certificate"
        assert stored.fence == later.token
        await a.release(lease)  # releasing a lost lease leaves the new holder's lock alone
        assert await a.holder("site.test") == "b"
        await b.release(later)
        assert await a.holder("site.test") is None

    with_stores(server, body)


def test_an_older_token_never_overwrites_a_newer_certificate(server: RedisServer) -> None:
    async def body(a: AcmeStore, b: AcmeStore) -> None:
        old = await a.acquire("site.test", 5000)
        assert isinstance(old, Lease)
        await a.release(old)
        new = await b.acquire("site.test", 5000)
        assert isinstance(new, Lease)
        assert await b.put_certificate("site.test", new, b"new") == 1
        await b.release(new)
        # a forged lock value with the old token: the stored fence still refuses it
        client = redis.Redis(port=server.port)
        client.set(old.key, old.value)
        client.close()
        assert await a.put_certificate("site.test", old, b"old") == -2
        stored = await b.certificate("site.test")
        assert stored is not None and stored.bundle == b"new"

    with_stores(server, body)


def test_secrets_are_sealed_and_bound_to_their_key(server: RedisServer) -> None:
    async def body(a: AcmeStore, b: AcmeStore) -> None:
        assert await a.account_key(b"-----BEGIN PRIVATE KEY----- A") == (
            b"-----BEGIN PRIVATE KEY----- A")
        assert await b.account_key(b"-----BEGIN PRIVATE KEY----- B") == (
            b"-----BEGIN PRIVATE KEY----- A")  # the first node's key wins
        lease = await a.acquire("one.test", 5000)
        assert isinstance(lease, Lease)
        assert await a.put_certificate("one.test", lease, b"PRIVATE KEY of one") == 1
        client = redis.Redis(port=server.port)
        everything = b"".join(
            (client.get(key) or b"") if client.type(key) == b"string"
            else b"".join(client.hgetall(key).values()) if client.type(key) == b"hash" else b""
            for key in client.scan_iter("t:acme:*"))
        assert b"PRIVATE KEY" not in everything
        # one name's sealed certificate copied to another name's key does not open there
        client.hset("t:acme:cert:two.test", mapping=client.hgetall("t:acme:cert:one.test"))
        client.close()
        assert await b.certificate("two.test") is None
        assert (await b.certificate("one.test")) is not None

    with_stores(server, body)


def test_challenges_reach_other_nodes_with_acknowledgements(server: RedisServer) -> None:
    async def body(a: AcmeStore, b: AcmeStore) -> None:
        assert await a.heartbeat() == ["a"]
        assert sorted(await b.heartbeat() or []) == ["a", "b"]
        assert await a.put_challenge("http-01/tok", b"tok.thumb")
        assert await b.challenges() == {"http-01/tok": b"tok.thumb"}
        await b.ack("http-01/tok")
        assert await a.acks("http-01/tok") == {"b"}
        await a.remove_challenge("http-01/tok")
        assert await b.challenges() == {}
        assert await a.acks("http-01/tok") == set()

    with_stores(server, body)


def test_a_store_that_is_down_answers_none_and_never_raises(server: RedisServer) -> None:
    async def body(a: AcmeStore, b: AcmeStore) -> None:
        server.kill()
        assert await a.acquire("site.test", 1000) is None
        assert await a.certificate("site.test") is None
        assert await a.heartbeat() is None
        assert await a.account_key(b"k") is None

    with_stores(server, body)


def test_the_mirror_writes_challenge_files_by_safe_names_only(server: RedisServer,
                                                              tmp_path: Path) -> None:
    from offload.acme.shared import SharedAcme
    from offload.acme.storage import AcmeStorage
    from offload.fleet.loop_thread import LoopThread

    storage = AcmeStorage(tmp_path / "node-b")
    storage.create()
    config = FleetConfig(redis=server.url, name="t", node="b")
    thread = LoopThread(config)
    shared = SharedAcme(AcmeStore(thread.link, Sealer(SECRET), "b"), thread, storage,
                        (("site.test",),))
    thread.start()
    try:
        publisher = FleetConfig(redis=server.url, name="t", node="a")

        async def publish() -> None:
            link = FleetLink(redis_client(publisher), publisher)
            store = AcmeStore(link, Sealer(SECRET), "a")
            # a node holding the secret, but misbehaving (or a CA sending odd tokens)
            for field in ("http-01/../../escaped", "tls-alpn-01/../x", "dns-01/x",
                          "http-01/good-token"):
                assert await store.put_challenge(field, b"answer")
            await link.close()
        asyncio.run(publish())
        thread.run(shared.mirror(), 10)
        assert storage.http01("good-token") == b"answer"
        written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")
                         if p.is_file())
        assert written == ["node-b/challenges/http-01/good-token"]
        assert thread.run(shared.store.acks("http-01/good-token"), 10) == {"b"}
    finally:
        thread.stop()


def test_a_garbage_fence_reads_as_none_rather_than_raise(server: RedisServer) -> None:
    """Someone writing to Redis: a fence of 5000 digits (int() refuses it with ValueError,
    which stopped each round of mirroring before every later certificate)."""
    client = redis.Redis(port=server.port)
    client.hset("t:acme:cert:site.test", mapping={"fence": "9" * 5000, "bundle": b"x"})

    async def body(a: AcmeStore, b: AcmeStore) -> tuple[object, object]:
        return await a.certificate_fence("site.test"), await a.certificate("site.test")

    assert with_stores(server, body) == (None, None)
