"""The fleet's data in Redis: key names and the few commands and Lua scripts that read and
write them. Every function takes the client and returns raw replies; :class:`FleetLink` runs
them (bounded, counted) and the callers parse the replies with the sans-IO modules.

Keys, all under the fleet's prefix ``NAME`` (Redis Cluster is not supported: the scripts
touch several keys; use one primary, with Sentinel for failover)::

    NAME:ticket-keys          string: the ticket key set (JSON, see ticket_schedule)
    NAME:ticket-keys:lock     string: the node making the next set (SET NX PX)
    NAME:nodes                hash: node name -> last heartbeat (JSON)
    NAME:bans                 hash: client key -> ban (JSON, see ban_sync)
    NAME:offences:CLIENT      sorted set: the fleet's offence window of one client
    NAME:events               channel: "ban JSON", "unban KEY", "keys"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

LOCK_MS = 10_000


@dataclass(frozen=True)
class Names:
    prefix: str

    @property
    def ticket_keys(self) -> str:
        return f"{self.prefix}:ticket-keys"

    @property
    def ticket_lock(self) -> str:
        return f"{self.prefix}:ticket-keys:lock"

    @property
    def nodes(self) -> str:
        return f"{self.prefix}:nodes"

    @property
    def bans(self) -> str:
        return f"{self.prefix}:bans"

    def offences(self, client: str) -> str:
        return f"{self.prefix}:offences:{client}"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"


# Count offences in the fleet's window of one client; ban at the threshold (unless a ban
# already holds, or the hash already holds max bans: clients spraying addresses must not grow
# it, and every node's pull with it, without bound; each node's own jail still bans them) and
# announce it. KEYS: offences zset, bans hash. ARGV: now, window, threshold, ban_time, count,
# node, event, channel, client, member id, max bans.
RECORD_OFFENCES = """
local now = tonumber(ARGV[1])
local held = redis.call('HGET', KEYS[2], ARGV[9])
if held then
  local ok, ban = pcall(cjson.decode, held)
  if ok and type(ban) == 'table' and tonumber(ban['until']) and tonumber(ban['until']) > now then
    return false
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
for i = 1, tonumber(ARGV[5]) do
  redis.call('ZADD', KEYS[1], now, ARGV[10] .. ':' .. i)
end
local n = redis.call('ZCARD', KEYS[1])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) * 1000))
if n >= tonumber(ARGV[3]) then
  if not held and redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[11]) then
    redis.call('DEL', KEYS[1])
    return false
  end
  local ban = cjson.encode({client = ARGV[9], reason = ARGV[7], since = now,
                            ['until'] = now + tonumber(ARGV[4]), count = n, node = ARGV[6]})
  redis.call('HSET', KEYS[2], ARGV[9], ban)
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[8], 'ban ' .. ban)
  return ban
end
return false
"""

# Store a ban a node decided unless a longer one is stored (or the hash holds max bans);
# announce it. KEYS: bans hash. ARGV: client, ban JSON, until, channel, max bans.
PUSH_BAN = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held then
  local ok, ban = pcall(cjson.decode, held)
  if ok and type(ban) == 'table' and tonumber(ban['until'])
      and tonumber(ban['until']) >= tonumber(ARGV[3]) then
    return 0
  end
elseif redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[5]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[4], 'ban ' .. ARGV[2])
return 1
"""

# Delete the lock only if this node still holds it. KEYS: lock. ARGV: node.
RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


async def run_script(client: aioredis.Redis, script: str, keys: list[str],
                     args: list[str | int | float | bytes]) -> Any:
    return await client.execute_command(  # type: ignore[no-untyped-call]
        "EVAL", script, len(keys), *keys, *args)


async def command(client: aioredis.Redis, *args: str | int | float | bytes) -> Any:
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]
