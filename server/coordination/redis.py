"""Coordination through Redis, shared by every instance of a cluster.

- Reply lock: ``SET NX PX`` with a random token; renew and release are Lua scripts that act
  only while the token still matches, so an instance never extends or frees a lock that expired
  and was taken by another. A crashed instance's lock simply expires.
- Pending flags: ``SET`` / ``GETDEL``.
- Partial-reply buffer: the current message id in one key and its deltas in a list, appended
  atomically with the id check, expiring with the reply so a crashed instance leaves nothing.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from ..domain.ports import Partial, RateDecision
from ..errors import CoordinationUnavailable

log = logging.getLogger(__name__)

PENDING_TTL_SECONDS = 3600

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
_START_PARTIAL = """
local previous = redis.call('GET', KEYS[1])
if previous then redis.call('DEL', KEYS[1] .. ':' .. previous) end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
_APPEND_PARTIAL = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local parts = KEYS[1] .. ':' .. ARGV[1]
local length = redis.call('RPUSH', parts, ARGV[2])
redis.call('PEXPIRE', parts, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return length
"""
_CLEAR_PARTIAL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[1] .. ':' .. ARGV[1])
  return 1
end
return 0
"""


_HIT_RATE = """
local key = KEYS[1]
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local count = redis.call('ZCARD', key)
if count >= limit then
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return {0, count, tostring(tonumber(oldest[2]) + window - now)}
end
redis.call('ZADD', key, now, ARGV[3])
redis.call('PEXPIRE', key, math.ceil(window * 1000))
return {1, count + 1, '0'}
"""
_ADD_PRESENCE = """
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
return 1
"""
_REFRESH_PRESENCE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', key, math.ceil(ttl * 1000))
end
return 1
"""


def redis_client(url: str, *, timeout_seconds: float = 2.0) -> Redis:
    """A client that fails within seconds and retries a dropped connection once."""
    client: Redis = Redis.from_url(
        url,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError, ConnectionResetError],
        health_check_interval=10,
        decode_responses=True,
    )
    return client


class RedisLock:
    def __init__(self, owner: RedisCoordination, key: str, token: str, ttl_ms: int) -> None:
        self._owner = owner
        self._key = key
        self._token = token
        self._ttl_ms = ttl_ms

    async def renew(self) -> bool:
        return bool(await self._owner.run(_RENEW, [self._key], [self._token, self._ttl_ms]))

    async def release(self) -> None:
        await self._owner.run(_RELEASE, [self._key], [self._token])


class RedisCoordination:
    def __init__(self, url: str, *, prefix: str = "consultations") -> None:
        self._redis = redis_client(url)
        self._prefix = prefix
        self._scripts: dict[str, Any] = {}

    def _key(self, kind: str, name: str) -> str:
        return f"{self._prefix}:{kind}:{name}"

    async def run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        registered = self._scripts.get(script)
        if registered is None:
            registered = self._scripts[script] = self._redis.register_script(script)
        async with _translated():
            return await registered(keys=keys, args=args)

    async def try_lock(self, name: str, ttl_seconds: float) -> RedisLock | None:
        key, token, ttl_ms = self._key("lock", name), uuid.uuid4().hex, _ms(ttl_seconds)
        async with _translated():
            acquired = await self._redis.set(key, token, nx=True, px=ttl_ms)
        return RedisLock(self, key, token, ttl_ms) if acquired else None

    async def mark_pending(self, name: str) -> None:
        async with _translated():
            await self._redis.set(self._key("pending", name), "1", ex=PENDING_TTL_SECONDS)

    async def take_pending(self, name: str) -> bool:
        async with _translated():
            return await self._redis.getdel(self._key("pending", name)) is not None

    async def is_pending(self, name: str) -> bool:
        async with _translated():
            return bool(await self._redis.exists(self._key("pending", name)))

    async def start_partial(self, name: str, message_id: str, ttl_seconds: float) -> None:
        await self.run(_START_PARTIAL, [self._key("partial", name)], [message_id, _ms(ttl_seconds)])

    async def append_partial(
        self, name: str, message_id: str, text: str, ttl_seconds: float
    ) -> None:
        await self.run(
            _APPEND_PARTIAL, [self._key("partial", name)], [message_id, text, _ms(ttl_seconds)]
        )

    async def read_partial(self, name: str) -> Partial | None:
        key = self._key("partial", name)
        async with _translated():
            raw_id = await self._redis.get(key)
            if raw_id is None:
                return None
            message_id = _text(raw_id)
            parts = [_text(part) for part in await self._redis.lrange(f"{key}:{message_id}", 0, -1)]
        return Partial(message_id, "".join(parts), len(parts) - 1)

    async def clear_partial(self, name: str, message_id: str) -> None:
        await self.run(_CLEAR_PARTIAL, [self._key("partial", name)], [message_id])

    async def hit_rate(self, name: str, limit: int, window_seconds: float) -> RateDecision:
        allowed, count, retry_after = await self.run(
            _HIT_RATE, [self._key("rate", name)], [window_seconds, limit, uuid.uuid4().hex]
        )
        return RateDecision(bool(allowed), int(count), float(_text(retry_after)))

    async def add_presence(self, name: str, member: str, limit: int, ttl_seconds: float) -> bool:
        added = await self.run(
            _ADD_PRESENCE, [self._key("presence", name)], [member, limit, ttl_seconds]
        )
        return bool(added)

    async def refresh_presence(
        self, entries: Sequence[tuple[str, str]], ttl_seconds: float
    ) -> None:
        for start in range(0, len(entries), 500):  # bounded script size
            batch = entries[start : start + 500]
            await self.run(
                _REFRESH_PRESENCE,
                [self._key("presence", name) for name, _ in batch],
                [ttl_seconds, *(member for _, member in batch)],
            )

    async def remove_presence(self, name: str, member: str) -> None:
        async with _translated():
            await self._redis.zrem(self._key("presence", name), member)

    async def request_stop(self, name: str, ttl_seconds: float) -> None:
        async with _translated():
            await self._redis.set(self._key("stop", name), "1", px=_ms(ttl_seconds))

    async def take_stop(self, name: str) -> bool:
        async with _translated():
            return await self._redis.getdel(self._key("stop", name)) is not None

    async def ping(self) -> None:
        async with _translated():
            await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


@asynccontextmanager
async def _translated() -> AsyncIterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise CoordinationUnavailable(f"Redis is unavailable: {exc}") from exc
