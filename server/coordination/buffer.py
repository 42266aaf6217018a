"""``ReplyBuffer``: the reply streaming in a consultation, so far, and what it is.

Redis: a hash (message id, owner, the seq it answers, model) and the chunks in a list beside
it, both in the consultation's slot and expiring with the reply. Appends are fenced by owner
(the streaming instance's lock token) in one script: an instance that lost the reply to a
takeover cannot add a chunk, and so never emits one. Starts (restores included), claims and
appends are also refused to a token older than the consultation's newest fence (``fences.py``),
so an owner paused past a takeover cannot put back a buffer the new owner had cleared.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..domain.ports import BufferWrite, Partial, ReplyDraft
from .fences import LUA_FENCE_OF, MemoryFences
from .redis_support import RedisHandle, ms, text

_START = (
    LUA_FENCE_OF
    + """
if fence_of(ARGV[2]) < current_fence(KEYS[2]) then return 0 end
local previous = redis.call('HGET', KEYS[1], 'id')
if previous then redis.call('DEL', KEYS[1] .. ':' .. previous) end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'owner', ARGV[2], 'seq', ARGV[3], 'model', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""
)
_APPEND = (
    LUA_FENCE_OF
    + """
if fence_of(ARGV[2]) < current_fence(KEYS[2]) then return -1 end
local state = redis.call('HMGET', KEYS[1], 'id', 'owner')
if not state[1] then return -2 end
if state[1] ~= ARGV[1] or state[2] ~= ARGV[2] then return -1 end
local parts = KEYS[1] .. ':' .. ARGV[1]
local length = redis.call('RPUSH', parts, ARGV[3])
redis.call('PEXPIRE', parts, ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return length
"""
)
_CLAIM = (
    LUA_FENCE_OF
    + """
if fence_of(ARGV[2]) < current_fence(KEYS[2]) then return false end
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return false end
redis.call('HSET', KEYS[1], 'owner', ARGV[2])
local parts = KEYS[1] .. ':' .. ARGV[1]
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if redis.call('EXISTS', parts) == 1 then redis.call('PEXPIRE', parts, ARGV[3]) end
return {'1'}
"""
)
_SET_MODEL = """
if redis.call('HGET', KEYS[1], 'id') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'model', ARGV[2])
end
return 1
"""
_READ = """
local state = redis.call('HMGET', KEYS[1], 'id', 'owner', 'seq', 'model')
if not state[1] then return false end
local parts = redis.call('LRANGE', KEYS[1] .. ':' .. state[1], 0, -1)
return {state[1], state[2], state[3], state[4], parts}
"""
_ABANDON = """
local state = redis.call('HMGET', KEYS[1], 'id', 'owner')
if state[1] ~= ARGV[1] then return -1 end
if state[2] ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1], KEYS[1] .. ':' .. ARGV[1])
return 1
"""
_CLEAR = """
if redis.call('HGET', KEYS[1], 'id') == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[1] .. ':' .. ARGV[1])
  return 1
end
return 0
"""


@dataclass
class _Buffer:
    draft: ReplyDraft
    expires_at: float
    parts: list[str] = field(default_factory=list)

    def partial(self) -> Partial:
        draft = self.draft
        return Partial(
            draft.message_id,
            "".join(self.parts),
            len(self.parts) - 1,
            owner=draft.owner,
            request_seq=draft.request_seq,
            model=draft.model,
            parts=tuple(self.parts),
        )


class MemoryReplyBuffer:
    def __init__(self, fences: MemoryFences | None = None) -> None:
        self._buffers: dict[str, _Buffer] = {}
        self._fences = fences or MemoryFences()

    async def start(self, name: str, draft: ReplyDraft, ttl_seconds: float) -> None:
        if not self._fences.admits(name, draft.owner):
            return  # an owner that lost the reply to a newer one puts nothing back
        self._fences.observe(name, draft.owner)
        self._buffers[name] = _Buffer(draft, time.monotonic() + ttl_seconds)

    async def append(
        self, name: str, message_id: str, owner: str, text: str, ttl_seconds: float
    ) -> BufferWrite:
        if not self._fences.admits(name, owner):
            return BufferWrite.TAKEN
        buffer = self._live(name)
        if buffer is None:
            return BufferWrite.GONE
        if (buffer.draft.message_id, buffer.draft.owner) != (message_id, owner):
            return BufferWrite.TAKEN
        buffer.parts.append(text)
        buffer.expires_at = time.monotonic() + ttl_seconds
        return BufferWrite.OK

    async def claim(
        self, name: str, message_id: str, owner: str, ttl_seconds: float
    ) -> Partial | None:
        if not self._fences.admits(name, owner):
            return None
        buffer = self._live(name)
        if buffer is None or buffer.draft.message_id != message_id:
            return None
        self._fences.observe(name, owner)
        draft = buffer.draft
        buffer.draft = ReplyDraft(draft.message_id, owner, draft.request_seq, draft.model)
        buffer.expires_at = time.monotonic() + ttl_seconds
        return buffer.partial()

    async def set_model(self, name: str, message_id: str, model: str) -> None:
        buffer = self._live(name)
        if buffer is not None and buffer.draft.message_id == message_id:
            draft = buffer.draft
            buffer.draft = ReplyDraft(draft.message_id, draft.owner, draft.request_seq, model)

    async def read(self, name: str) -> Partial | None:
        buffer = self._live(name)
        return buffer.partial() if buffer is not None else None

    async def clear(self, name: str, message_id: str) -> None:
        buffer = self._buffers.get(name)
        if buffer is not None and buffer.draft.message_id == message_id:
            del self._buffers[name]

    async def abandon(self, name: str, message_id: str, owner: str) -> bool | None:
        buffer = self._live(name)
        if buffer is None or buffer.draft.message_id != message_id:
            return None
        if buffer.draft.owner != owner:
            return False
        del self._buffers[name]
        return True

    def _live(self, name: str) -> _Buffer | None:
        buffer = self._buffers.get(name)
        if buffer is not None and buffer.expires_at <= time.monotonic():
            del self._buffers[name]
            return None
        return buffer


class RedisReplyBuffer:
    def __init__(self, redis: RedisHandle) -> None:
        self._redis = redis

    def _keys(self, name: str) -> list[str]:
        """The buffer and the consultation's fence counter (kept by the reply locks)."""
        return [self._redis.key("reply", name), self._redis.key("fence", name)]

    async def start(self, name: str, draft: ReplyDraft, ttl_seconds: float) -> None:
        await self._redis.run(
            _START,
            self._keys(name),
            [draft.message_id, draft.owner, draft.request_seq, draft.model, ms(ttl_seconds)],
        )

    async def append(
        self, name: str, message_id: str, owner: str, text: str, ttl_seconds: float
    ) -> BufferWrite:
        length = int(
            await self._redis.run(
                _APPEND, self._keys(name), [message_id, owner, text, ms(ttl_seconds)]
            )
        )
        if length > 0:
            return BufferWrite.OK
        return BufferWrite.GONE if length == -2 else BufferWrite.TAKEN

    async def claim(
        self, name: str, message_id: str, owner: str, ttl_seconds: float
    ) -> Partial | None:
        claimed = await self._redis.run(
            _CLAIM, self._keys(name), [message_id, owner, ms(ttl_seconds)]
        )
        return await self.read(name) if claimed else None

    async def set_model(self, name: str, message_id: str, model: str) -> None:
        await self._redis.run(_SET_MODEL, self._keys(name)[:1], [message_id, model])

    async def read(self, name: str) -> Partial | None:
        state = await self._redis.run(_READ, self._keys(name)[:1], [])
        if not state:
            return None
        message_id, owner, seq, model, parts = state
        texts = [text(part) for part in parts]
        return Partial(
            text(message_id),
            "".join(texts),
            len(texts) - 1,
            owner=text(owner or ""),
            request_seq=int(text(seq or "0")),
            model=text(model or ""),
            parts=tuple(texts),
        )

    async def clear(self, name: str, message_id: str) -> None:
        await self._redis.run(_CLEAR, self._keys(name)[:1], [message_id])

    async def abandon(self, name: str, message_id: str, owner: str) -> bool | None:
        result = int(await self._redis.run(_ABANDON, self._keys(name)[:1], [message_id, owner]))
        return None if result < 0 else result == 1
