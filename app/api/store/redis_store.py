"""The store in Redis, so replicas share it: a response made through one replica is read, resumed and
cancelled through another. Keys expire by themselves (the age bounds); a sorted set of every key by its
last write, with their sizes, lets `prune` drop the least recently written beyond the size bound.

    {ns}r:{key}  hash owner, value          a record
    {ns}s:{id}   hash owner, ended           a stream's head
    {ns}e:{id}   list of frames              its events: the list index is the position
    {ns}c:{key}  "1"                          a cancel request
    {ns}age      zset redis key -> last write time; {ns}bytes hash redis key -> size
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


class RedisStore:
    def __init__(self, url: str, limits: StoreLimits = StoreLimits(), namespace: str = "tokenwire:") -> None:
        import redis.asyncio as redis  # imported only when a Redis URL is configured

        self.limits = limits
        self.ns = namespace
        self._redis = redis.from_url(url, decode_responses=True)
        self._append = self._redis.register_script(_APPEND)

    def _record(self, key: str) -> str:
        return f"{self.ns}r:{key}"

    async def _touch(self, pipe, redis_key: str, size: int, add: bool = False) -> None:
        pipe.zadd(f"{self.ns}age", {redis_key: time.time()})
        (pipe.hincrby if add else pipe.hset)(f"{self.ns}bytes", redis_key, size)

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
        await self.append_many([(stream, owner, events, ended)])

    async def append_many(self, appends: Sequence[Append]) -> None:
        """One pipeline: each stream's append is atomic (a script); a failing one is reported after the
        others ran (Redis has no rollback across scripts), for the caller to retry one by one."""
        ttl_ms = int(self.limits.stream_retention_s * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream, owner, events, ended in appends:
                first = str(events[0][0]) if events else ""
                await self._append(keys=[f"{self.ns}s:{stream}", f"{self.ns}e:{stream}"],
                             args=[owner, int(ended), ttl_ms, first, *(frame for _, frame in events)], client=pipe)
                await self._touch(pipe, f"{self.ns}e:{stream}", sum(len(frame) for _, frame in events), add=True)
            results = await pipe.execute(raise_on_error=True)
        for (stream, _, events, _), result in zip(appends, results[::3]):
            if result == -1:
                raise PermissionError(f"stream {stream} belongs to another key")
            if result <= -2:
                raise ValueError(f"stream {stream}: event {events[0][0]} appended where {-2 - result} is next")

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
        """Forget the index entries of keys Redis expired, then the least recently written past the size bound."""
        age = f"{self.ns}age"
        stale = await self._redis.zrangebyscore(age, "-inf", time.time() - min(self.limits.stream_retention_s,
                                                                               self.limits.max_age_s))
        if stale:
            async with self._redis.pipeline(transaction=False) as pipe:
                for name in stale:
                    pipe.exists(name)
                alive = await pipe.execute()
            await self._unindex([name for name, exists in zip(stale, alive) if not exists])
        sizes = await self._redis.hgetall(f"{self.ns}bytes")
        total = sum(int(size) for size in sizes.values())
        if total <= self.limits.max_bytes:
            return
        victims = []
        for name in await self._redis.zrange(age, 0, -1):  # oldest first
            victims.append(name)
            total -= int(sizes.get(name, 0))
            if total <= self.limits.max_bytes * 0.9:
                break
        await self._forget(_with_heads(victims, self.ns))

    async def size_bytes(self) -> int:
        return sum(int(size) for size in (await self._redis.hgetall(f"{self.ns}bytes")).values())

    async def _forget(self, names: list[str]) -> None:
        if names:
            await self._redis.delete(*names)
            await self._unindex(names)

    async def _unindex(self, names: list[str]) -> None:
        if names:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zrem(f"{self.ns}age", *names)
                pipe.hdel(f"{self.ns}bytes", *names)
                await pipe.execute()

    async def close(self) -> None:
        await self._redis.aclose()


def _with_heads(names: list[str], ns: str) -> list[str]:
    """An event log goes with its stream's head."""
    return names + [ns + "s:" + name.removeprefix(ns + "e:") for name in names if name.startswith(ns + "e:")]
