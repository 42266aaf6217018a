"""In-process coordination: locks with expiry and pending flags, for a single instance."""

from __future__ import annotations

import time
import uuid


class MemoryLock:
    def __init__(self, owner: MemoryCoordination, name: str, token: str, ttl: float) -> None:
        self._owner = owner
        self._name = name
        self._token = token
        self._ttl = ttl

    async def renew(self) -> bool:
        return self._owner._renew(self._name, self._token, self._ttl)

    async def release(self) -> None:
        self._owner._release(self._name, self._token)


class MemoryCoordination:
    def __init__(self) -> None:
        self._locks: dict[str, tuple[str, float]] = {}  # name -> (token, expires at)
        self._pending: set[str] = set()

    async def try_lock(self, name: str, ttl_seconds: float) -> MemoryLock | None:
        now = time.monotonic()
        held = self._locks.get(name)
        if held is not None and held[1] > now:
            return None
        token = uuid.uuid4().hex
        self._locks[name] = (token, now + ttl_seconds)
        return MemoryLock(self, name, token, ttl_seconds)

    async def mark_pending(self, name: str) -> None:
        self._pending.add(name)

    async def take_pending(self, name: str) -> bool:
        if name in self._pending:
            self._pending.discard(name)
            return True
        return False

    async def is_pending(self, name: str) -> bool:
        return name in self._pending

    async def close(self) -> None:
        self._locks.clear()
        self._pending.clear()

    def _renew(self, name: str, token: str, ttl: float) -> bool:
        held = self._locks.get(name)
        if held is None or held[0] != token:
            return False
        self._locks[name] = (token, time.monotonic() + ttl)
        return True

    def _release(self, name: str, token: str) -> None:
        held = self._locks.get(name)
        if held is not None and held[0] == token:
            del self._locks[name]
