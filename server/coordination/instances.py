"""``InstanceDirectory``: each instance's heartbeat with its figures, so that ``/ws/status``
can give cluster totals. One Redis hash (a single key, so it also works on Redis Cluster);
an entry carries its own deadline, and readers drop (and delete) the stale ones: an instance
that died leaves the totals within one TTL."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

from .redis_support import RedisHandle


class MemoryInstanceDirectory:
    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, dict[str, int]]] = {}

    async def report(self, instance: str, figures: Mapping[str, int], ttl_seconds: float) -> None:
        self._entries[instance] = (time.time() + ttl_seconds, dict(figures))

    async def forget(self, instance: str) -> None:
        self._entries.pop(instance, None)

    async def live(self) -> dict[str, dict[str, int]]:
        now = time.time()
        for name in [n for n, (deadline, _) in self._entries.items() if deadline <= now]:
            del self._entries[name]
        return {name: figures for name, (_, figures) in self._entries.items()}


class RedisInstanceDirectory:
    def __init__(self, redis: RedisHandle) -> None:
        self._redis = redis
        self._key = redis.key("instances", "all")

    async def report(self, instance: str, figures: Mapping[str, int], ttl_seconds: float) -> None:
        entry = json.dumps({"until": time.time() + ttl_seconds, "figures": dict(figures)})
        async with self._redis.translated():
            await self._redis.client.hset(self._key, instance, entry)

    async def forget(self, instance: str) -> None:
        async with self._redis.translated():
            await self._redis.client.hdel(self._key, instance)

    async def live(self) -> dict[str, dict[str, int]]:
        async with self._redis.translated():
            raw = await self._redis.client.hgetall(self._key)
        now = time.time()
        found: dict[str, dict[str, int]] = {}
        stale: list[str] = []
        for name, value in raw.items():
            instance = name.decode() if isinstance(name, bytes) else str(name)
            entry = json.loads(value)
            if entry["until"] <= now:
                stale.append(instance)
            else:
                found[instance] = entry["figures"]
        if stale:
            async with self._redis.translated():
                await self._redis.client.hdel(self._key, *stale)
        return found
