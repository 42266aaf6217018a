"""``ReplyQueue``: the pending-reply flag of each consultation (``SET`` / ``GETDEL`` in Redis)."""

from __future__ import annotations

from .redis_support import RedisHandle

PENDING_TTL_SECONDS = 3600


class MemoryReplyQueue:
    def __init__(self) -> None:
        self._pending: set[str] = set()

    async def mark_pending(self, name: str) -> None:
        self._pending.add(name)

    async def take_pending(self, name: str) -> bool:
        if name in self._pending:
            self._pending.discard(name)
            return True
        return False

    async def is_pending(self, name: str) -> bool:
        return name in self._pending


class RedisReplyQueue:
    def __init__(self, redis: RedisHandle) -> None:
        self._redis = redis

    async def mark_pending(self, name: str) -> None:
        async with self._redis.translated():
            await self._redis.client.set(
                self._redis.key("pending", name), "1", ex=PENDING_TTL_SECONDS
            )

    async def take_pending(self, name: str) -> bool:
        async with self._redis.translated():
            return await self._redis.client.getdel(self._redis.key("pending", name)) is not None

    async def is_pending(self, name: str) -> bool:
        async with self._redis.translated():
            return bool(await self._redis.client.exists(self._redis.key("pending", name)))
