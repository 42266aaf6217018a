"""``ReplyLocks``: one reply at a time per consultation.

Redis: the lock is a key holding its holder's token, taken with a script that also takes the
consultation's next fence (``fences.py``): the token is ``"<fence>:<random>"``. Renew and
release act only while the token still matches, so an instance never extends or frees a lock
that expired and was taken by another. A crashed instance's lock simply expires. A lock whose
key vanished is re-established by its holder's renewal only when no one took the lock since
(no newer fence): Redis restarted empty, or the holder was cut off from it for a while. An old
holder — paused while another took the lock — is never given it back.

``renew`` says False only when the lock is someone else's; when Redis cannot be reached it
raises :class:`CoordinationUnavailable`, which is not a lost lock.
"""

from __future__ import annotations

import time
import uuid

from .fences import FENCE_TTL_MS, LUA_FENCE_OF, MemoryFences, fence_of, new_token
from .redis_support import RedisHandle, ms

_ACQUIRE = (
    LUA_FENCE_OF
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local token = next_fence(KEYS[2], ARGV[3]) .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
return token
"""
)
_RENEW = (
    LUA_FENCE_OF
    + """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if holder then return 0 end
-- Gone: the holder keeps it only if nobody took it since (no newer fence).
local fence = fence_of(ARGV[1])
if fence < current_fence(KEYS[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], fence, 'PX', ARGV[3])
return 1
"""
)
_NEXT_FENCE = LUA_FENCE_OF + "\nreturn next_fence(KEYS[1], ARGV[1])\n"
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
    def __init__(self, fences: MemoryFences | None = None) -> None:
        self._locks: dict[str, tuple[str, float]] = {}  # name -> (token, expires at)
        self._fences = fences or MemoryFences()

    async def try_lock(self, name: str, ttl_seconds: float) -> MemoryLock | None:
        now = time.monotonic()
        held = self._locks.get(name)
        if held is not None and held[1] > now:
            return None
        token = new_token(self._fences.next(name))
        self._locks[name] = (token, now + ttl_seconds)
        return MemoryLock(self, name, token, ttl_seconds)

    async def fenced_token(self, name: str) -> str:
        return new_token(self._fences.next(name))

    def renew(self, name: str, token: str, ttl: float) -> bool:
        held = self._locks.get(name)
        now = time.monotonic()
        if held is not None and held[0] == token:
            self._locks[name] = (token, now + ttl)
            return True
        if held is not None and held[1] > now:
            return False  # another holds it
        if not self._fences.admits(name, token):
            return False  # free again, but taken (and released) by a newer holder since
        self._locks[name] = (token, now + ttl)
        return True

    def release(self, name: str, token: str) -> None:
        held = self._locks.get(name)
        if held is not None and held[0] == token:
            del self._locks[name]


class RedisLock:
    def __init__(self, redis: RedisHandle, keys: list[str], token: str, ttl_ms: int) -> None:
        self._redis = redis
        self._keys = keys  # the lock, its fence counter
        self._token = token
        self._ttl_ms = ttl_ms

    @property
    def token(self) -> str:
        return self._token

    async def renew(self) -> bool:
        renewed = await self._redis.run(
            _RENEW, self._keys, [self._token, self._ttl_ms, FENCE_TTL_MS]
        )
        return bool(renewed)

    async def release(self) -> None:
        await self._redis.run(_RELEASE, self._keys[:1], [self._token])


class RedisReplyLocks:
    def __init__(self, redis: RedisHandle) -> None:
        self._redis = redis

    async def try_lock(self, name: str, ttl_seconds: float) -> RedisLock | None:
        keys = [self._redis.key("lock", name), self._redis.key("fence", name)]
        ttl_ms = ms(ttl_seconds)
        token = await self._redis.run(_ACQUIRE, keys, [uuid.uuid4().hex, ttl_ms, FENCE_TTL_MS])
        if not token:
            return None
        token = token.decode() if isinstance(token, bytes) else str(token)
        assert fence_of(token) > 0
        return RedisLock(self._redis, keys, token, ttl_ms)

    async def fenced_token(self, name: str) -> str:
        fence = await self._redis.run(_NEXT_FENCE, [self._redis.key("fence", name)], [FENCE_TTL_MS])
        return new_token(int(fence))
