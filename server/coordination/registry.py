"""``ConnectionRegistry``: live connections per user, for the per-user connection limit.

Redis: a sorted set per user whose scores are expiry times; instances refresh their own
entries, so a crashed instance's connections fall out within the TTL.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from .redis_support import REFRESH_MEMBERS, RedisHandle, text

_ADD = """
local key = KEYS[1]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if not redis.call('ZSCORE', key, ARGV[1]) and redis.call('ZCARD', key) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', key, now + ttl, ARGV[1])
redis.call('PEXPIRE', key, math.ceil(ttl * 1000))
redis.call('DEL', KEYS[2])
return 1
"""
_REMOVE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('SET', KEYS[2], tostring(now), 'NX', 'EX', 86400)
end
return 1
"""
_ABSENT_SINCE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) > 0 then
  redis.call('DEL', KEYS[2])
  return false
end
local since = redis.call('GET', KEYS[2])
if not since then
  since = tostring(now)
  redis.call('SET', KEYS[2], since, 'EX', 86400)
end
return since
"""
REFRESH_BATCH = 500  # bounded script size
SWEEP_ABSENT_ABOVE = 10_000


class MemoryConnectionRegistry:
    def __init__(self) -> None:
        self._members: dict[str, dict[str, float]] = {}  # name -> member -> expires at
        self._absent: dict[str, float] = {}  # name -> since when (wall clock)

    async def add(self, name: str, member: str, limit: int, ttl_seconds: float) -> bool:
        now = time.monotonic()
        members = self._live(name)
        if member not in members and len(members) >= limit:
            return False
        members[member] = now + ttl_seconds
        self._absent.pop(name, None)
        return True

    def _live(self, name: str) -> dict[str, float]:
        now = time.monotonic()
        members = self._members.setdefault(name, {})
        for expired in [m for m, at in members.items() if at <= now]:
            del members[expired]
        return members

    async def absent_since(self, name: str) -> float | None:
        if self._live(name):
            self._absent.pop(name, None)
            return None
        return self._absent.setdefault(name, time.time())

    async def refresh(self, entries: Sequence[tuple[str, str]], ttl_seconds: float) -> None:
        expires_at = time.monotonic() + ttl_seconds
        for name, member in entries:
            members = self._members.get(name)
            if members is not None and member in members:
                members[member] = expires_at

    async def remove(self, name: str, member: str) -> None:
        members = self._members.get(name)
        if members is not None:
            members.pop(member, None)
            if not self._live(name):
                del self._members[name]
                self._absent.setdefault(name, time.time())
                if len(self._absent) > SWEEP_ABSENT_ABOVE:  # forget day-old absences
                    cutoff = time.time() - 86400
                    self._absent = {n: t for n, t in self._absent.items() if t > cutoff}


class RedisConnectionRegistry:
    def __init__(self, redis: RedisHandle) -> None:
        self._redis = redis

    def _keys(self, name: str) -> list[str]:
        return [self._redis.key("presence", name), self._redis.key("absent", name)]

    async def add(self, name: str, member: str, limit: int, ttl_seconds: float) -> bool:
        added = await self._redis.run(_ADD, self._keys(name), [member, limit, ttl_seconds])
        return bool(added)

    async def absent_since(self, name: str) -> float | None:
        since = await self._redis.run(_ABSENT_SINCE, self._keys(name), [])
        return float(text(since)) if since else None

    async def refresh(self, entries: Sequence[tuple[str, str]], ttl_seconds: float) -> None:
        keys = [self._redis.key("presence", name) for name, _ in entries]
        for group in self._redis.by_slot(keys):
            for start in range(0, len(group), REFRESH_BATCH):
                batch = group[start : start + REFRESH_BATCH]
                await self._redis.run(
                    REFRESH_MEMBERS,
                    [keys[i] for i in batch],
                    [ttl_seconds, *(entries[i][1] for i in batch)],
                )

    async def remove(self, name: str, member: str) -> None:
        await self._redis.run(_REMOVE, self._keys(name), [member])
