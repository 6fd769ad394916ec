"""The store in Redis, so replicas share it: a response made through one replica is read, resumed and
cancelled through another. Keys expire by themselves (the age bounds: a record after max_age, an ended
stream after the retention, a stream still being written after max_age). Two sorted sets index records
and streams by their last write, with their sizes and a running total, so `prune` reads only what
expired and, past the size bound, the oldest few: its work does not grow with what is stored.

    {ns}r:{key}  hash owner, value          a record
    {ns}s:{id}   hash owner, ended           a stream's head
    {ns}e:{id}   list of frames              its events: the list index is the position
    {ns}c:{key}  "1"                          a cancel request
    {ns}age:r, {ns}age:s  zset redis key -> last write time; {ns}bytes hash redis key -> size; {ns}total
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from app.api.store.base import Append, Event, EventSlice, StoreLimits

CANCEL_TTL_S = 3600

# Append atomically, and only where the positions follow on and the owner matches.
_APPEND = """
local head, events = KEYS[1], KEYS[2]
local owner = redis.call('HGET', head, 'owner')
if owner and owner ~= ARGV[1] then return -1 end
local expected = redis.call('LLEN', events)
if ARGV[4] ~= '' and tonumber(ARGV[4]) ~= expected then return -2 - expected end
redis.call('HSET', head, 'owner', ARGV[1], 'ended', ARGV[2])
for i = 5, #ARGV do redis.call('RPUSH', events, ARGV[i]) end
redis.call('PEXPIRE', head, ARGV[3]); redis.call('PEXPIRE', events, ARGV[3])
return expected
"""


# Index a write: its time, its size (added, or replacing the last one), the running total.
_TOUCH = """
local old = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local new = tonumber(ARGV[3])
if ARGV[4] == '1' then new = old + new end
redis.call('HSET', KEYS[2], ARGV[1], new)
redis.call('INCRBY', KEYS[3], new - old)
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
"""
# Forget keys' index entries (KEYS: the two indexes, sizes, total; ARGV: the keys).
_UNINDEX = """
for i = 1, #ARGV do
  local size = tonumber(redis.call('HGET', KEYS[3], ARGV[i]) or '0')
  redis.call('DECRBY', KEYS[4], size)
  redis.call('HDEL', KEYS[3], ARGV[i]); redis.call('ZREM', KEYS[1], ARGV[i]); redis.call('ZREM', KEYS[2], ARGV[i])
end
"""
PRUNE_BATCH = 500


class RedisStore:
    def __init__(self, url: str, limits: StoreLimits = StoreLimits(), namespace: str = "tokenwire:") -> None:
        import redis.asyncio as redis  # imported only when a Redis URL is configured

        self.limits = limits
        self.ns = namespace
        # Timeouts: an unreachable Redis fails a write (retried later) instead of hanging a stream or the shutdown.
        self._redis = redis.from_url(url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5)
        self._append = self._redis.register_script(_APPEND)
        self._index = self._redis.register_script(_TOUCH)
        self._unindex_script = self._redis.register_script(_UNINDEX)
        self._records_age, self._streams_age = f"{namespace}age:r", f"{namespace}age:s"

    def _record(self, key: str) -> str:
        return f"{self.ns}r:{key}"

    async def _touch(self, pipe, redis_key: str, size: int, add: bool = False) -> None:
        age = self._streams_age if redis_key.startswith(f"{self.ns}e:") else self._records_age
        await self._index(keys=[age, f"{self.ns}bytes", f"{self.ns}total"],
                          args=[redis_key, time.time(), size, int(add)], client=pipe)

    # ---- records ----------------------------------------------------------------------------------

    async def put_record(self, key: str, owner: str, value: str) -> None:
        name = self._record(key)
        current = await self._redis.hget(name, "owner")
        if current is not None and current != owner:
            return  # another key's record is never overwritten
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(name, mapping={"owner": owner, "value": value})
            pipe.expire(name, int(self.limits.max_age_s))
            await self._touch(pipe, name, len(value))
            await pipe.execute()

    async def get_record(self, key: str, owner: str) -> str | None:
        found_owner, value = await self._redis.hmget(self._record(key), ["owner", "value"])
        return value if found_owner == owner else None

    async def delete_record(self, key: str, owner: str) -> bool:
        name = self._record(key)
        if await self._redis.hget(name, "owner") != owner:
            return False
        await self._forget([name, f"{self.ns}s:{key}", f"{self.ns}e:{key}"])
        return True

    # ---- event logs -------------------------------------------------------------------------------

    async def append_events(self, stream: str, owner: str, events: Sequence[Event], ended: bool = False) -> None:
        refused = (await self.append_many([(stream, owner, events, ended)]))[0]
        if refused is not None:
            raise refused

    async def append_many(self, appends: Sequence[Append]) -> list[Exception | None]:
        """One pipeline; each stream's append is atomic (a script) and checked alone."""
        running_ms, ended_ms = int(self.limits.max_age_s * 1000), int(self.limits.stream_retention_s * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream, owner, events, ended in appends:
                first = str(events[0][0]) if events else ""
                await self._append(keys=[f"{self.ns}s:{stream}", f"{self.ns}e:{stream}"],
                                   args=[owner, int(ended), ended_ms if ended else running_ms, first,
                                         *(frame for _, frame in events)], client=pipe)
                await self._touch(pipe, f"{self.ns}e:{stream}", sum(len(frame) for _, frame in events), add=True)
            results = await pipe.execute(raise_on_error=True)
        return [_refusal(stream, events, result) for (stream, _, events, _), result in zip(appends, results[::2])]

    async def read_events(self, stream: str, owner: str, after: int) -> EventSlice | None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(f"{self.ns}s:{stream}", ["owner", "ended"])
            pipe.lrange(f"{self.ns}e:{stream}", after + 1, -1)
            (found_owner, ended), frames = await pipe.execute()
        if found_owner != owner:
            return None
        return EventSlice([(after + 1 + i, frame) for i, frame in enumerate(frames)], ended == "1")

    # ---- cancellation -----------------------------------------------------------------------------

    async def request_cancel(self, key: str) -> None:
        await self._redis.set(f"{self.ns}c:{key}", "1", ex=CANCEL_TTL_S)

    async def cancel_requested(self, key: str) -> bool:
        return bool(await self._redis.exists(f"{self.ns}c:{key}"))

    async def cancels_among(self, keys: Sequence[str]) -> set[str]:
        if not keys:
            return set()
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.exists(f"{self.ns}c:{key}")
            found = await pipe.execute()
        return {key for key, exists in zip(keys, found) if exists}

    # ---- bounds -----------------------------------------------------------------------------------

    async def prune(self) -> None:
        """Unindex what Redis expired, then drop the least recently written ended streams and records
        while the total is past the size bound."""
        now = time.time()
        for index, bound in ((self._records_age, self.limits.max_age_s), (self._streams_age, self.limits.stream_retention_s)):
            stale = await self._redis.zrangebyscore(index, "-inf", now - bound, start=0, num=PRUNE_BATCH)
            if stale:  # a stream still being written outlives the retention: it stays indexed
                alive = await self._exist(stale)
                await self._unindex([name for name, exists in zip(stale, alive) if not exists])
        total = int(await self._redis.get(f"{self.ns}total") or 0)
        if total > self.limits.max_bytes:
            await self._make_room(total)

    async def _make_room(self, total: int) -> None:
        sizes_key = f"{self.ns}bytes"
        oldest = sorted([*await self._redis.zrange(self._records_age, 0, PRUNE_BATCH - 1, withscores=True),
                         *await self._redis.zrange(self._streams_age, 0, PRUNE_BATCH - 1, withscores=True)],
                        key=lambda entry: entry[1])
        names = [name for name, _ in oldest]
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hget(sizes_key, name)
                pipe.hget(f"{self.ns}s:" + name.removeprefix(f"{self.ns}e:"), "ended")
            answers = await pipe.execute()
        victims = []
        for i, name in enumerate(names):
            size, ended = answers[2 * i], answers[2 * i + 1]
            if name.startswith(f"{self.ns}e:") and ended != "1":
                continue  # a stream still being written is never evicted for room
            victims.append(name)
            total -= int(size or 0)
            if total <= self.limits.max_bytes * 0.9:
                break
        await self._forget(_with_heads(victims, self.ns))

    async def _exist(self, names: list[str]) -> list[int]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.exists(name)
            return await pipe.execute()

    async def size_bytes(self) -> int:
        return int(await self._redis.get(f"{self.ns}total") or 0)

    async def _forget(self, names: list[str]) -> None:
        if names:
            await self._redis.delete(*names)
            await self._unindex(names)

    async def _unindex(self, names: list[str]) -> None:
        if names:
            await self._unindex_script(keys=[self._records_age, self._streams_age, f"{self.ns}bytes",
                                             f"{self.ns}total"], args=names)

    async def close(self) -> None:
        await self._redis.aclose()


def _refusal(stream: str, events: Sequence[Event], result: int) -> Exception | None:
    if result == -1:
        return PermissionError(f"stream {stream} belongs to another key")
    if result <= -2:
        return ValueError(f"stream {stream}: event {events[0][0]} appended where {-2 - result} is next")
    return None


def _with_heads(names: list[str], ns: str) -> list[str]:
    """An event log goes with its stream's head."""
    return names + [ns + "s:" + name.removeprefix(ns + "e:") for name in names if name.startswith(ns + "e:")]
