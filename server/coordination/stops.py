"""``StopSignals``: a stop request, taken by whichever instance streams the reply."""

from __future__ import annotations

import time

from .redis_support import RedisHandle, ms


class MemoryStopSignals:
    def __init__(self) -> None:
        self._stops: dict[str, float] = {}  # name -> expires at

    async def request_stop(self, name: str, ttl_seconds: float) -> None:
        self._stops[name] = time.monotonic() + ttl_seconds

    async def take_stop(self, name: str) -> bool:
        expires_at = self._stops.pop(name, None)
        return expires_at is not None and expires_at > time.monotonic()


class RedisStopSignals:
    def __init__(self, redis: RedisHandle) -> None:
        self._redis = redis

    async def request_stop(self, name: str, ttl_seconds: float) -> None:
        async with self._redis.translated():
            await self._redis.client.set(self._redis.key("stop", name), "1", px=ms(ttl_seconds))

    async def take_stop(self, name: str) -> bool:
        async with self._redis.translated():
            return await self._redis.client.getdel(self._redis.key("stop", name)) is not None
