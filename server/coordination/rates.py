"""``RateLimits``: sliding-window hit counters (a sorted set of hits per name in Redis)."""

from __future__ import annotations

import time
import uuid
from collections import deque

from ..domain.ports import RateDecision
from .redis_support import RedisHandle, text

SWEEP_ABOVE = 10_000  # windows kept in memory before idle ones are swept

_HIT = """
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


class MemoryRateLimits:
    def __init__(self) -> None:
        self._hits: dict[str, deque[float]] = {}

    async def hit(self, name: str, limit: int, window_seconds: float) -> RateDecision:
        now = time.monotonic()
        hits = self._hits.setdefault(name, deque())
        while hits and hits[0] <= now - window_seconds:
            hits.popleft()
        if len(hits) >= limit:
            return RateDecision(False, len(hits), hits[0] + window_seconds - now)
        hits.append(now)
        if len(self._hits) > SWEEP_ABOVE:
            self._sweep(now, window_seconds)
        return RateDecision(True, len(hits), 0.0)

    def _sweep(self, now: float, window_seconds: float) -> None:
        for stale in [n for n, h in self._hits.items() if not h or h[-1] <= now - window_seconds]:
            del self._hits[stale]


class RedisRateLimits:
    def __init__(self, redis: RedisHandle) -> None:
        self._redis = redis

    async def hit(self, name: str, limit: int, window_seconds: float) -> RateDecision:
        allowed, count, retry_after = await self._redis.run(
            _HIT, [self._redis.key("rate", name)], [window_seconds, limit, uuid.uuid4().hex]
        )
        return RateDecision(bool(allowed), int(count), float(text(retry_after)))
