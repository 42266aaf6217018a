"""``ReplyBuffer``: the text of the reply streaming in a consultation, so far.

Redis: the current message id in one key and its chunks in a list beside it (both in the
consultation's slot), appended atomically with the id check and expiring with the reply, so a
crashed instance leaves nothing behind.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..domain.ports import Partial
from .redis_support import RedisHandle, ms, text, translated

_START = """
local previous = redis.call('GET', KEYS[1])
if previous then redis.call('DEL', KEYS[1] .. ':' .. previous) end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
_APPEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local parts = KEYS[1] .. ':' .. ARGV[1]
local length = redis.call('RPUSH', parts, ARGV[2])
redis.call('PEXPIRE', parts, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return length
"""
_CLEAR = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[1] .. ':' .. ARGV[1])
  return 1
end
return 0
"""


@dataclass
class _Buffer:
    message_id: str
    expires_at: float
    parts: list[str] = field(default_factory=list)


class MemoryReplyBuffer:
    def __init__(self) -> None:
        self._buffers: dict[str, _Buffer] = {}

    async def start(self, name: str, message_id: str, ttl_seconds: float) -> None:
        self._buffers[name] = _Buffer(message_id, time.monotonic() + ttl_seconds)

    async def append(self, name: str, message_id: str, text: str, ttl_seconds: float) -> None:
        buffer = self._live(name)
        if buffer is not None and buffer.message_id == message_id:
            buffer.parts.append(text)
            buffer.expires_at = time.monotonic() + ttl_seconds

    async def read(self, name: str) -> Partial | None:
        buffer = self._live(name)
        if buffer is None:
            return None
        return Partial(buffer.message_id, "".join(buffer.parts), len(buffer.parts) - 1)

    async def clear(self, name: str, message_id: str) -> None:
        buffer = self._buffers.get(name)
        if buffer is not None and buffer.message_id == message_id:
            del self._buffers[name]

    def _live(self, name: str) -> _Buffer | None:
        buffer = self._buffers.get(name)
        if buffer is not None and buffer.expires_at <= time.monotonic():
            del self._buffers[name]
            return None
        return buffer


class RedisReplyBuffer:
    def __init__(self, redis: RedisHandle) -> None:
        self._redis = redis

    async def start(self, name: str, message_id: str, ttl_seconds: float) -> None:
        await self._redis.run(
            _START, [self._redis.key("partial", name)], [message_id, ms(ttl_seconds)]
        )

    async def append(self, name: str, message_id: str, text: str, ttl_seconds: float) -> None:
        await self._redis.run(
            _APPEND, [self._redis.key("partial", name)], [message_id, text, ms(ttl_seconds)]
        )

    async def read(self, name: str) -> Partial | None:
        key = self._redis.key("partial", name)
        async with translated():
            raw_id = await self._redis.client.get(key)
            if raw_id is None:
                return None
            message_id = text(raw_id)
            parts = [
                text(part) for part in await self._redis.client.lrange(f"{key}:{message_id}", 0, -1)
            ]
        return Partial(message_id, "".join(parts), len(parts) - 1)

    async def clear(self, name: str, message_id: str) -> None:
        await self._redis.run(_CLEAR, [self._redis.key("partial", name)], [message_id])
