"""``ReplyLocks``: one reply at a time per consultation.

Redis: ``SET NX PX`` with a random token; renew and release are Lua scripts that act only
while the token still matches, so an instance never extends or frees a lock that expired and
was taken by another. A crashed instance's lock simply expires. A lock whose key vanished
without being taken (Redis restarted empty) is re-established by its holder's renewal.
"""

from __future__ import annotations

import time
import uuid

from .redis_support import RedisHandle, ms

_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if not holder then
  -- Gone without being taken (Redis restarted empty): the holder keeps it.
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class MemoryLock:
    def __init__(self, owner: MemoryReplyLocks, name: str, token: str, ttl: float) -> None:
        self._owner = owner
        self._name = name
        self._token = token
        self._ttl = ttl

    @property
    def token(self) -> str:
        return self._token

    async def renew(self) -> bool:
        return self._owner.renew(self._name, self._token, self._ttl)

    async def release(self) -> None:
        self._owner.release(self._name, self._token)


class MemoryReplyLocks:
    def __init__(self) -> None:
        self._locks: dict[str, tuple[str, float]] = {}  # name -> (token, expires at)

    async def try_lock(self, name: str, ttl_seconds: float) -> MemoryLock | None:
        now = time.monotonic()
        held = self._locks.get(name)
        if held is not None and held[1] > now:
            return None
        token = uuid.uuid4().hex
        self._locks[name] = (token, now + ttl_seconds)
        return MemoryLock(self, name, token, ttl_seconds)

    def renew(self, name: str, token: str, ttl: float) -> bool:
        held = self._locks.get(name)
        now = time.monotonic()
        if held is not None and held[0] != token and held[1] > now:
            return False  # another holds it
        self._locks[name] = (token, now + ttl)  # ours, or free again: ours (as on Redis)
        return True

    def release(self, name: str, token: str) -> None:
        held = self._locks.get(name)
        if held is not None and held[0] == token:
            del self._locks[name]


class RedisLock:
    def __init__(self, redis: RedisHandle, key: str, token: str, ttl_ms: int) -> None:
        self._redis = redis
        self._key = key
        self._token = token
        self._ttl_ms = ttl_ms

    @property
    def token(self) -> str:
        return self._token

    async def renew(self) -> bool:
        return bool(await self._redis.run(_RENEW, [self._key], [self._token, self._ttl_ms]))

    async def release(self) -> None:
        await self._redis.run(_RELEASE, [self._key], [self._token])


class RedisReplyLocks:
    def __init__(self, redis: RedisHandle) -> None:
        self._redis = redis

    async def try_lock(self, name: str, ttl_seconds: float) -> RedisLock | None:
        key, token, ttl_ms = self._redis.key("lock", name), uuid.uuid4().hex, ms(ttl_seconds)
        async with self._redis.translated():
            acquired = await self._redis.client.set(key, token, nx=True, px=ttl_ms)
        return RedisLock(self._redis, key, token, ttl_ms) if acquired else None
