"""``RoomPresence``: who is in a consultation's room, over every tab and every instance.

Redis: a sorted set per room of ``who`` + connection, scored by expiry; instances refresh
their own entries, so a crashed instance's connections fall out. Entering and leaving are one
script each, so two tabs joining at once on two instances make exactly one ``userOnline``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from .redis_support import REFRESH_MEMBERS, RedisHandle, text

SEPARATOR = "\x1f"  # between who and the connection id in a member

_ENTER = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local first = 1
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(member, 1, string.len(ARGV[1])) == ARGV[1] and member ~= ARGV[2] then
    first = 0
    break
  end
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3]) * 1000))
return first
"""
_EXIT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
if redis.call('ZREM', KEYS[1], ARGV[2]) == 0 then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(member, 1, string.len(ARGV[1])) == ARGV[1] then return 0 end
end
return 1
"""
_ONLINE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
"""


def _member(who: str, connection_id: str) -> str:
    return f"{who}{SEPARATOR}{connection_id}"


class MemoryRoomPresence:
    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, float]] = {}  # room -> member -> expires at

    def _live(self, room: str) -> dict[str, float]:
        now = time.monotonic()
        members = self._rooms.setdefault(room, {})
        for expired in [m for m, at in members.items() if at <= now]:
            del members[expired]
        return members

    async def enter(self, room: str, who: str, connection_id: str, ttl_seconds: float) -> bool:
        members = self._live(room)
        member = _member(who, connection_id)
        first = not any(m.startswith(who + SEPARATOR) and m != member for m in members)
        members[member] = time.monotonic() + ttl_seconds
        return first

    async def exit(self, room: str, who: str, connection_id: str) -> bool:
        members = self._live(room)
        if members.pop(_member(who, connection_id), None) is None:
            return False
        last = not any(m.startswith(who + SEPARATOR) for m in members)
        if not members:
            del self._rooms[room]
        return last

    async def online(self, room: str) -> list[str]:
        members = self._live(room)
        if not members:
            del self._rooms[room]
        return sorted({m.split(SEPARATOR, 1)[0] for m in members})

    async def refresh(self, entries: Sequence[tuple[str, str, str]], ttl_seconds: float) -> None:
        expires_at = time.monotonic() + ttl_seconds
        for room, who, connection_id in entries:
            members = self._rooms.get(room)
            member = _member(who, connection_id)
            if members is not None and member in members:
                members[member] = expires_at


class RedisRoomPresence:
    def __init__(self, redis: RedisHandle) -> None:
        self._redis = redis

    def _key(self, room: str) -> str:
        return self._redis.key("room-presence", room)

    async def enter(self, room: str, who: str, connection_id: str, ttl_seconds: float) -> bool:
        first = await self._redis.run(
            _ENTER,
            [self._key(room)],
            [who + SEPARATOR, _member(who, connection_id), ttl_seconds],
        )
        return bool(first)

    async def exit(self, room: str, who: str, connection_id: str) -> bool:
        last = await self._redis.run(
            _EXIT, [self._key(room)], [who + SEPARATOR, _member(who, connection_id)]
        )
        return bool(last)

    async def online(self, room: str) -> list[str]:
        members = await self._redis.run(_ONLINE, [self._key(room)], [])
        return sorted({text(m).split(SEPARATOR, 1)[0] for m in members})

    async def refresh(self, entries: Sequence[tuple[str, str, str]], ttl_seconds: float) -> None:
        keys = [self._key(room) for room, _, _ in entries]
        for group in self._redis.by_slot(keys):
            for start in range(0, len(group), 500):
                batch = group[start : start + 500]
                await self._redis.run(
                    REFRESH_MEMBERS,
                    [keys[i] for i in batch],
                    [ttl_seconds, *(_member(entries[i][1], entries[i][2]) for i in batch)],
                )
