"""The fleet's shared ACME store in Redis: certificates, the account key, pending challenges,
and the per-name lease that lets exactly one node order a name.

Keys (``<p>`` is ``fleet.name``)::

    <p>:acme:cert:<first name>   hash: bundle (sealed chain + key), fence (token of the writer)
    <p>:acme:account             the sealed account key (PEM), set once (SET NX)
    <p>:acme:lock:<first name>   "<node> <token>", with a lease time (PX)
    <p>:acme:fence               the counter tokens are drawn from (INCR)
    <p>:acme:challenges          hash: "http-01/<token>" or "tls-alpn-01/<name>" -> sealed answer
    <p>:acme:acks:<field>        set of nodes that have a challenge in place
    <p>:acme:nodes               sorted set: node -> last heartbeat (ms of the Redis clock)

Lease and fence (the two halves of a safe lock): a node takes the lock with SET NX PX and a
token drawn from the fence counter, renews it (compare-and-PEXPIRE) while it orders, re-reads
the certificate after acquiring (another node may have finished just before), and writes the
result with a script that checks, atomically, that the lock still holds its token *and* that
no later token has written the certificate. A node paused longer than its lease (a stalled VM)
therefore cannot overwrite a newer certificate with its late one.

Everything secret is sealed (:mod:`offload.fleet.seal`) with the key name as associated data.
All calls go through the process's :class:`~offload.fleet.link.FleetLink`; a call that fails
returns None/False (the link counts and logs it), never raises into the ACME process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import redis.asyncio as aioredis

from offload.fleet.link import UNAVAILABLE, FleetLink
from offload.fleet.seal import Sealer, SealError

NODE_TIMEOUT_MS: Final = 10_000
"""A node whose last heartbeat is older than this is not waited for."""

_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_FENCED_WRITE: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local last = tonumber(redis.call('HGET', KEYS[2], 'fence') or '0') or 0
if last >= tonumber(ARGV[2]) then return -2 end
redis.call('HSET', KEYS[2], 'bundle', ARGV[3], 'fence', ARGV[2])
return 1
"""

_HEARTBEAT: Final = """
redis.replicate_commands()  -- Redis < 5: replicate effects, so TIME may precede writes
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[1], ms, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms - tonumber(ARGV[2]) * 6)
return redis.call('ZRANGEBYSCORE', KEYS[1], ms - tonumber(ARGV[2]), '+inf')
"""


@dataclass(frozen=True, slots=True)
class Lease:
    """A held lock on one certificate's names: its key, its value and its fence token."""

    key: str
    value: str
    token: int


@dataclass(frozen=True, slots=True)
class SharedCertificate:
    bundle: bytes
    fence: int


class AcmeStore:
    """The shared ACME state of one fleet, over one link."""

    def __init__(self, link: FleetLink, sealer: Sealer, node: str) -> None:
        self._link = link
        self._sealer = sealer
        self.node = node
        self.prefix = f"{link.config.name}:acme"
        client = link.client
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._fenced_write = client.register_script(_FENCED_WRITE)
        self._heartbeat = client.register_script(_HEARTBEAT)

    def _cert_key(self, first: str) -> str:
        return f"{self.prefix}:cert:{first}"

    # certificates

    async def certificate_fence(self, first: str) -> int | None:
        """The fence token of the stored certificate (cheap: to see whether it changed)."""
        async def get(client: aioredis.Redis) -> object:
            return await client.hget(self._cert_key(first), "fence")
        answer = await self._link.call("acme_cert_fence", get)
        return _int(answer)

    async def certificate(self, first: str) -> SharedCertificate | None:
        """The stored certificate for the names starting with ``first``, opened."""
        key = self._cert_key(first)

        async def get(client: aioredis.Redis) -> object:
            return await client.hmget(key, ["bundle", "fence"])
        answer = await self._link.call("acme_cert_get", get)
        if not isinstance(answer, list) or len(answer) != 2 or not isinstance(answer[0], bytes):
            return None
        fence = _int(answer[1])
        try:
            return SharedCertificate(self._sealer.open(key, answer[0]), fence or 0)
        except SealError as error:
            self._link.failed("acme_cert_open", error)
            return None

    async def put_certificate(self, first: str, lease: Lease, bundle: bytes) -> int | None:
        """Store ``bundle`` if ``lease`` still holds and no later token wrote: 1 written,
        -1 the lease is lost, -2 a later writer was first; None: the store failed."""
        key = self._cert_key(first)
        sealed = self._sealer.seal(key, bundle)

        async def write(client: aioredis.Redis) -> object:
            return await self._fenced_write(keys=[lease.key, key],
                                            args=[lease.value, lease.token, sealed])
        return _int(await self._link.call("acme_cert_put", write))

    # the lease

    async def acquire(self, first: str, lease_ms: int) -> Lease | bool | None:
        """Take the lock on ``first``'s certificate for ``lease_ms``: the lease, or False when
        another node holds it, or None when the store failed."""
        lock = f"{self.prefix}:lock:{first}"

        async def take(client: aioredis.Redis) -> object:
            token = int(await client.incr(f"{self.prefix}:fence"))
            value = f"{self.node} {token}"
            if await client.set(lock, value, nx=True, px=lease_ms):
                return Lease(lock, value, token)
            return False
        answer = await self._link.call("acme_lock", take)
        return answer if isinstance(answer, Lease | bool) else None

    async def renew(self, lease: Lease, lease_ms: int) -> bool:
        async def renew(client: aioredis.Redis) -> object:
            return await self._renew(keys=[lease.key], args=[lease.value, lease_ms])
        return _int(await self._link.call("acme_lock_renew", renew)) == 1

    async def release(self, lease: Lease) -> None:
        async def release(client: aioredis.Redis) -> object:
            return await self._release(keys=[lease.key], args=[lease.value])
        await self._link.call("acme_lock_release", release)

    async def holder(self, first: str) -> str | None:
        """Which node holds ``first``'s lock, if any (for the log)."""
        async def get(client: aioredis.Redis) -> object:
            return await client.get(f"{self.prefix}:lock:{first}")
        answer = await self._link.call("acme_lock_get", get)
        return answer.decode("utf-8", "replace").split(" ")[0] if isinstance(answer,
                                                                              bytes) else None

    # the account key

    async def account_key(self, offer: bytes) -> bytes | None:
        """The fleet's account key: the stored one, or ``offer`` if none was stored yet (the
        first node to ask sets it; every later one gets that one). None: the store failed."""
        key = f"{self.prefix}:account"
        sealed = self._sealer.seal(key, offer)

        async def get_or_set(client: aioredis.Redis) -> object:
            await client.set(key, sealed, nx=True)
            return await client.get(key)
        answer = await self._link.call("acme_account", get_or_set)
        if not isinstance(answer, bytes):
            return None
        try:
            return self._sealer.open(key, answer)
        except SealError as error:
            self._link.failed("acme_account_open", error)
            return None

    # challenges and the nodes that must hold them

    async def heartbeat(self) -> list[str] | None:
        """Say this node is alive; the nodes seen in the last :data:`NODE_TIMEOUT_MS`."""
        async def beat(client: aioredis.Redis) -> object:
            return await self._heartbeat(keys=[f"{self.prefix}:nodes"],
                                         args=[self.node, NODE_TIMEOUT_MS])
        answer = await self._link.call("acme_heartbeat", beat)
        if not isinstance(answer, list):
            return None
        return [n.decode("utf-8", "replace") for n in answer if isinstance(n, bytes)]

    async def put_challenge(self, field: str, answer: bytes) -> bool:
        key = f"{self.prefix}:challenges"
        sealed = self._sealer.seal(f"{key}/{field}", answer)

        async def put(client: aioredis.Redis) -> object:
            async with client.pipeline(transaction=True) as pipe:
                pipe.hset(key, field, sealed)
                pipe.delete(f"{self.prefix}:acks:{field}")
                return await pipe.execute()
        return await self._link.call("acme_challenge_put", put) is not UNAVAILABLE

    async def remove_challenge(self, field: str) -> None:
        async def remove(client: aioredis.Redis) -> object:
            async with client.pipeline(transaction=True) as pipe:
                pipe.hdel(f"{self.prefix}:challenges", field)
                pipe.delete(f"{self.prefix}:acks:{field}")
                return await pipe.execute()
        await self._link.call("acme_challenge_remove", remove)

    async def challenges(self) -> dict[str, bytes] | None:
        """Every pending challenge answer, opened (one that does not open is left out)."""
        key = f"{self.prefix}:challenges"

        async def get(client: aioredis.Redis) -> object:
            return await client.hgetall(key)
        answer = await self._link.call("acme_challenges", get)
        if not isinstance(answer, dict):
            return None
        opened: dict[str, bytes] = {}
        for raw_field, sealed in answer.items():
            field = raw_field.decode("utf-8", "replace")
            try:
                opened[field] = self._sealer.open(f"{key}/{field}", sealed)
            except SealError as error:
                self._link.failed("acme_challenge_open", error)
        return opened

    async def ack(self, field: str) -> None:
        async def ack(client: aioredis.Redis) -> object:
            key = f"{self.prefix}:acks:{field}"
            async with client.pipeline(transaction=True) as pipe:
                pipe.sadd(key, self.node)
                pipe.pexpire(key, 600_000)
                return await pipe.execute()
        await self._link.call("acme_challenge_ack", ack)

    async def acks(self, field: str) -> set[str] | None:
        async def get(client: aioredis.Redis) -> object:
            return await client.smembers(f"{self.prefix}:acks:{field}")
        answer = await self._link.call("acme_challenge_acks", get)
        if not isinstance(answer, set):
            return None
        return {n.decode("utf-8", "replace") for n in answer if isinstance(n, bytes)}


def _int(answer: object) -> int | None:
    """A Redis integer reply or a decimal string of one (a fence token); None for anything
    else, never raising: a string of thousands of digits written by someone else would make
    ``int()`` raise and stop the mirroring of every certificate after it."""
    if isinstance(answer, bool):
        return int(answer)
    if isinstance(answer, int):
        return answer
    if isinstance(answer, bytes) and len(answer) <= 20 and answer.lstrip(b"-").isdigit():
        return int(answer)
    return None


__all__ = ["NODE_TIMEOUT_MS", "AcmeStore", "Lease", "SharedCertificate"]
