"""Cluster coordination that degrades instead of failing.

While Redis is unreachable an instance coordinates its own consultations locally, so its
clients keep getting replies (at worst two instances answer one consultation at once during the
outage); as soon as Redis answers again, the cluster-wide state is used. A lock whose backend
drops mid-stream is reported lost instead of raising into the reply being streamed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from ..domain.ports import Coordination, Lock, Partial, RateDecision
from ..errors import CoordinationUnavailable
from .memory import MemoryCoordination

log = logging.getLogger(__name__)

T = TypeVar("T")
WARN_EVERY_SECONDS = 10.0


class _GuardedLock:
    def __init__(self, inner: Lock) -> None:
        self._inner = inner

    async def renew(self) -> bool:
        try:
            return await self._inner.renew()
        except CoordinationUnavailable:
            return False

    async def release(self) -> None:
        with contextlib.suppress(CoordinationUnavailable):  # it expires by itself
            await self._inner.release()


class FailoverCoordination:
    def __init__(self, primary: Coordination, fallback: Coordination | None = None) -> None:
        self._primary = primary
        self._fallback = fallback or MemoryCoordination()
        self._warned_at = 0.0

    async def _either(
        self, primary: Callable[[], Awaitable[T]], fallback: Callable[[], Awaitable[T]]
    ) -> T:
        try:
            return await primary()
        except CoordinationUnavailable as exc:
            now = time.monotonic()
            if now - self._warned_at > WARN_EVERY_SECONDS:
                self._warned_at = now
                log.warning("coordinating locally while the cluster backend is down: %s", exc)
            return await fallback()

    async def try_lock(self, name: str, ttl_seconds: float) -> Lock | None:
        lock = await self._either(
            lambda: self._primary.try_lock(name, ttl_seconds),
            lambda: self._fallback.try_lock(name, ttl_seconds),
        )
        return _GuardedLock(lock) if lock is not None else None

    async def mark_pending(self, name: str) -> None:
        await self._either(
            lambda: self._primary.mark_pending(name), lambda: self._fallback.mark_pending(name)
        )

    async def take_pending(self, name: str) -> bool:
        # Flags may have been marked locally during an outage: take both.
        local = await self._fallback.take_pending(name)
        shared = await self._either(lambda: self._primary.take_pending(name), _false)
        return local or shared

    async def is_pending(self, name: str) -> bool:
        if await self._fallback.is_pending(name):
            return True
        return await self._either(lambda: self._primary.is_pending(name), _false)

    async def start_partial(self, name: str, message_id: str, ttl_seconds: float) -> None:
        await self._either(
            lambda: self._primary.start_partial(name, message_id, ttl_seconds),
            lambda: self._fallback.start_partial(name, message_id, ttl_seconds),
        )

    async def append_partial(
        self, name: str, message_id: str, text: str, ttl_seconds: float
    ) -> None:
        await self._either(
            lambda: self._primary.append_partial(name, message_id, text, ttl_seconds),
            lambda: self._fallback.append_partial(name, message_id, text, ttl_seconds),
        )

    async def read_partial(self, name: str) -> Partial | None:
        shared = await self._either(lambda: self._primary.read_partial(name), _none)
        return shared or await self._fallback.read_partial(name)

    async def clear_partial(self, name: str, message_id: str) -> None:
        await self._fallback.clear_partial(name, message_id)
        await self._either(lambda: self._primary.clear_partial(name, message_id), _none)

    async def hit_rate(self, name: str, limit: int, window_seconds: float) -> RateDecision:
        return await self._either(
            lambda: self._primary.hit_rate(name, limit, window_seconds),
            lambda: self._fallback.hit_rate(name, limit, window_seconds),
        )

    async def add_presence(self, name: str, member: str, limit: int, ttl_seconds: float) -> bool:
        return await self._either(
            lambda: self._primary.add_presence(name, member, limit, ttl_seconds),
            lambda: self._fallback.add_presence(name, member, limit, ttl_seconds),
        )

    async def refresh_presence(
        self, entries: Sequence[tuple[str, str]], ttl_seconds: float
    ) -> None:
        await self._fallback.refresh_presence(entries, ttl_seconds)
        await self._either(lambda: self._primary.refresh_presence(entries, ttl_seconds), _none)

    async def remove_presence(self, name: str, member: str) -> None:
        await self._fallback.remove_presence(name, member)
        await self._either(lambda: self._primary.remove_presence(name, member), _none)

    async def request_stop(self, name: str, ttl_seconds: float) -> None:
        await self._either(
            lambda: self._primary.request_stop(name, ttl_seconds),
            lambda: self._fallback.request_stop(name, ttl_seconds),
        )

    async def take_stop(self, name: str) -> bool:
        local = await self._fallback.take_stop(name)
        shared = await self._either(lambda: self._primary.take_stop(name), _false)
        return local or shared

    async def ping(self) -> None:
        await self._primary.ping()

    async def close(self) -> None:
        await self._primary.close()
        await self._fallback.close()


async def _false() -> bool:
    return False


async def _none() -> None:
    return None
