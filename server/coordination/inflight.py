"""``ReplyRegistry``: consultations with a reply in flight, scored by a deadline.

The instance streaming a reply moves its deadline forward with every lock renewal; an entry
whose deadline passed belongs to an instance that died, and the surviving instances' reapers
ask only for those (``ZRANGEBYSCORE``), so looking costs nothing while all is well. Deadlines
are Redis server time: instances' clocks never compare.
"""

from __future__ import annotations

import time

from .redis_support import RedisHandle, text

_TOUCH = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
"""
_OVERDUE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
"""


class MemoryReplyRegistry:
    def __init__(self) -> None:
        self._deadlines: dict[str, float] = {}

    async def touch(self, name: str, ttl_seconds: float) -> None:
        self._deadlines[name] = time.monotonic() + ttl_seconds

    async def drop(self, name: str) -> None:
        self._deadlines.pop(name, None)

    async def overdue(self, limit: int) -> list[str]:
        now = time.monotonic()
        return [name for name, at in self._deadlines.items() if at <= now][:limit]


class RedisReplyRegistry:
    def __init__(self, redis: RedisHandle) -> None:
        self._redis = redis

    @property
    def _key(self) -> str:
        return self._redis.key("inflight", "replies")

    async def touch(self, name: str, ttl_seconds: float) -> None:
        await self._redis.run(_TOUCH, [self._key], [name, ttl_seconds])

    async def drop(self, name: str) -> None:
        async with self._redis.translated():
            await self._redis.client.zrem(self._key, name)

    async def overdue(self, limit: int) -> list[str]:
        names = await self._redis.run(_OVERDUE, [self._key], [limit])
        return [text(name) for name in names]
