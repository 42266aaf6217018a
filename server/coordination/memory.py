"""In-process coordination for a single instance: locks with expiry, pending flags and the
partial-reply buffer."""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..domain.ports import Partial, RateDecision

SWEEP_ABOVE = 10_000  # rate-limit windows kept before idle ones are swept


class MemoryLock:
    def __init__(self, owner: MemoryCoordination, name: str, token: str, ttl: float) -> None:
        self._owner = owner
        self._name = name
        self._token = token
        self._ttl = ttl

    async def renew(self) -> bool:
        return self._owner.renew_lock(self._name, self._token, self._ttl)

    async def release(self) -> None:
        self._owner.release_lock(self._name, self._token)


@dataclass
class _Buffer:
    message_id: str
    expires_at: float
    parts: list[str] = field(default_factory=list)


class MemoryCoordination:
    def __init__(self) -> None:
        self._locks: dict[str, tuple[str, float]] = {}  # name -> (token, expires at)
        self._pending: set[str] = set()
        self._partials: dict[str, _Buffer] = {}
        self._hits: dict[str, deque[float]] = {}
        self._presence: dict[str, dict[str, float]] = {}  # name -> member -> expires at
        self._stops: dict[str, float] = {}  # name -> expires at

    async def try_lock(self, name: str, ttl_seconds: float) -> MemoryLock | None:
        now = time.monotonic()
        held = self._locks.get(name)
        if held is not None and held[1] > now:
            return None
        token = uuid.uuid4().hex
        self._locks[name] = (token, now + ttl_seconds)
        return MemoryLock(self, name, token, ttl_seconds)

    def renew_lock(self, name: str, token: str, ttl: float) -> bool:
        held = self._locks.get(name)
        if held is None or held[0] != token or held[1] <= time.monotonic():
            return False
        self._locks[name] = (token, time.monotonic() + ttl)
        return True

    def release_lock(self, name: str, token: str) -> None:
        held = self._locks.get(name)
        if held is not None and held[0] == token:
            del self._locks[name]

    async def mark_pending(self, name: str) -> None:
        self._pending.add(name)

    async def take_pending(self, name: str) -> bool:
        if name in self._pending:
            self._pending.discard(name)
            return True
        return False

    async def is_pending(self, name: str) -> bool:
        return name in self._pending

    async def start_partial(self, name: str, message_id: str, ttl_seconds: float) -> None:
        self._partials[name] = _Buffer(message_id, time.monotonic() + ttl_seconds)

    async def append_partial(
        self, name: str, message_id: str, text: str, ttl_seconds: float
    ) -> None:
        buffer = self._live_buffer(name)
        if buffer is not None and buffer.message_id == message_id:
            buffer.parts.append(text)
            buffer.expires_at = time.monotonic() + ttl_seconds

    async def read_partial(self, name: str) -> Partial | None:
        buffer = self._live_buffer(name)
        if buffer is None:
            return None
        return Partial(buffer.message_id, "".join(buffer.parts), len(buffer.parts) - 1)

    async def clear_partial(self, name: str, message_id: str) -> None:
        buffer = self._partials.get(name)
        if buffer is not None and buffer.message_id == message_id:
            del self._partials[name]

    async def hit_rate(self, name: str, limit: int, window_seconds: float) -> RateDecision:
        now = time.monotonic()
        hits = self._hits.setdefault(name, deque())
        while hits and hits[0] <= now - window_seconds:
            hits.popleft()
        if len(hits) >= limit:
            return RateDecision(False, len(hits), hits[0] + window_seconds - now)
        hits.append(now)
        if len(self._hits) > SWEEP_ABOVE:
            self._sweep_hits(now, window_seconds)
        return RateDecision(True, len(hits), 0.0)

    def _sweep_hits(self, now: float, window_seconds: float) -> None:
        for stale in [n for n, h in self._hits.items() if not h or h[-1] <= now - window_seconds]:
            del self._hits[stale]

    async def add_presence(self, name: str, member: str, limit: int, ttl_seconds: float) -> bool:
        now = time.monotonic()
        members = self._presence.setdefault(name, {})
        for expired in [m for m, at in members.items() if at <= now]:
            del members[expired]
        if member not in members and len(members) >= limit:
            return False
        members[member] = now + ttl_seconds
        return True

    async def refresh_presence(
        self, entries: Sequence[tuple[str, str]], ttl_seconds: float
    ) -> None:
        expires_at = time.monotonic() + ttl_seconds
        for name, member in entries:
            members = self._presence.get(name)
            if members is not None and member in members:
                members[member] = expires_at

    async def remove_presence(self, name: str, member: str) -> None:
        members = self._presence.get(name)
        if members is not None:
            members.pop(member, None)
            if not members:
                del self._presence[name]

    async def request_stop(self, name: str, ttl_seconds: float) -> None:
        self._stops[name] = time.monotonic() + ttl_seconds

    async def take_stop(self, name: str) -> bool:
        expires_at = self._stops.pop(name, None)
        return expires_at is not None and expires_at > time.monotonic()

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._locks.clear()
        self._pending.clear()
        self._partials.clear()
        self._hits.clear()
        self._presence.clear()
        self._stops.clear()

    def _live_buffer(self, name: str) -> _Buffer | None:
        buffer = self._partials.get(name)
        if buffer is not None and buffer.expires_at <= time.monotonic():
            del self._partials[name]
            return None
        return buffer
