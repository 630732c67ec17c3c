"""The Redis side of fleet rate limits: one Lua script charges a whole batch atomically.

Each counter is a GCRA "theoretical arrival time" (TAT) in microseconds of the Redis server's
own clock (``TIME``), so every node agrees on time whatever its own clock says. For each key
the script adds ``events * interval`` to ``max(TAT, now)`` (the events already happened on
some node; they are charged, not judged) and answers how many milliseconds the next event must
wait: ``TAT - tolerance - now``, or 0. The key expires when its TAT has passed (plus a second),
so idle clients cost Redis nothing.

What the script reads back is checked, because anyone who can write to Redis can put anything
there: a value that is no number, a key of another type (its error would fail the whole
pipeline, every key of the batch with it, and turn fleet limits off or, with
``on_store_failure = "deny"``, refuse everything), or a counter further ahead than the burst
plus a day (a refusal for years) starts the counter afresh; ``SET`` replaces whatever was there.

The script needs every key of a batch on one server: Redis Cluster is not supported (Sentinel
is, through the connection factory). Redis 5+ replicates scripts by effects, so ``TIME`` in a
script that writes is allowed.
"""

from __future__ import annotations

from typing import Final

from offload.fleet.tally import Batch

GCRA_SCRIPT: Final = """
redis.replicate_commands()  -- Redis < 5: replicate effects, so TIME may precede writes
local now_s = redis.call('TIME')
local now = tonumber(now_s[1]) * 1000000 + tonumber(now_s[2])
local MAX_LEAD = 86400000000  -- a counter further ahead than this is garbage
local out = {}
for i, key in ipairs(KEYS) do
  local base = (i - 1) * 3
  local events = tonumber(ARGV[base + 1])
  local interval = tonumber(ARGV[base + 2])
  local tolerance = tonumber(ARGV[base + 3])
  local held = redis.pcall('GET', key)
  local tat = type(held) == 'string' and tonumber(held) or nil
  if tat == nil or tat ~= tat or tat < now or tat > now + tolerance + MAX_LEAD then
    tat = now
  end
  tat = tat + events * interval
  redis.call('SET', key, string.format('%d', tat), 'PX',
             math.floor((tat - now) / 1000) + 1000)
  local wait = tat - tolerance - now
  if wait > 0 then out[i] = math.floor((wait + 999) / 1000) else out[i] = 0 end
end
return out
"""

MAX_KEYS_PER_CALL: Final = 500
"""Keys per script call: a bigger batch is several calls in one pipeline (one round trip), so
no single call holds Redis for long."""


def key_name(prefix: str, frontend: str, limit: str, client: str) -> str:
    """The Redis key of one counter: ``<prefix>:limit:<frontend>:<limit>:<client>``."""
    return f"{prefix}:limit:{frontend}:{limit}:{client}"


def script_calls(prefix: str, batch: Batch) -> list[tuple[list[str], list[int]]]:
    """``batch`` as (KEYS, ARGV) of the script calls that charge it, in order."""
    calls: list[tuple[list[str], list[int]]] = []
    entries = batch.entries
    for start in range(0, len(entries), MAX_KEYS_PER_CALL):
        keys: list[str] = []
        args: list[int] = []
        for (frontend, limit, client), events, rate in entries[start:start + MAX_KEYS_PER_CALL]:
            keys.append(key_name(prefix, frontend, limit, client))
            args += (events, rate.interval_us, rate.tolerance_us)
        calls.append((keys, args))
    return calls


def waits(answers: list[object], batch: Batch) -> list[int]:
    """The script answers of every call, flattened and checked: milliseconds per entry."""
    flat: list[int] = []
    for answer in answers:
        if not isinstance(answer, list):
            raise ValueError(f"the limit script answered {answer!r}")
        for wait in answer:
            if not isinstance(wait, int) or wait < 0:
                raise ValueError(f"the limit script answered {wait!r}")
            flat.append(wait)
    if len(flat) != len(batch):
        raise ValueError(f"the limit script answered {len(flat)} keys of {len(batch)}")
    return flat


__all__ = ["GCRA_SCRIPT", "MAX_KEYS_PER_CALL", "key_name", "script_calls", "waits"]
