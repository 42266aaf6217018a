"""Coordination that degrades instead of failing, one wrapper per concern.

While Redis is unreachable an instance coordinates its own consultations locally (the memory
implementation of the same concern), so its clients keep getting replies (at worst two
instances answer one consultation at once during the outage); as soon as Redis answers again,
the cluster-wide state is used. A lock whose backend drops mid-stream is not a lost lock: its
renewal raises :class:`CoordinationUnavailable` and the reply goes on (see domain/replies.py);
only "someone else holds it" ends a reply.

Never wrap a decision that must be unique cluster-wide: an operator's accept is decided by the
database, not here.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from ..domain.ports import (
    BufferWrite,
    ConnectionRegistry,
    Lock,
    Partial,
    RateDecision,
    RateLimits,
    ReplyBuffer,
    ReplyDraft,
    ReplyLocks,
    ReplyQueue,
    ReplyRegistry,
    RoomPresence,
    StopSignals,
)
from ..errors import CoordinationUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
WARN_EVERY_SECONDS = 10.0


class Degraded:
    """Runs an operation on the primary, or on the fallback while the primary is down; warns
    at most every few seconds. Shared by the wrappers of one instance."""

    def __init__(self) -> None:
        self._warned_at = float("-inf")

    async def either(
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


async def _false() -> bool:
    return False


async def _none() -> None:
    return None


async def _empty() -> list[str]:
    return []


class _GuardedLock:
    def __init__(self, inner: Lock, held: _HeldHere, name: str, ttl_seconds: float) -> None:
        self._inner = inner
        self._held, self._name, self._ttl = held, name, ttl_seconds

    @property
    def token(self) -> str:
        return self._inner.token

    async def renew(self) -> bool:
        # Unreachable is not lost: CoordinationUnavailable reaches the reply, which goes on
        # (and keeps the consultation for itself here meanwhile).
        try:
            renewed = await self._inner.renew()
        except CoordinationUnavailable:
            self._held.keep(self._name, self.token, self._ttl)
            raise
        if renewed:
            self._held.keep(self._name, self.token, self._ttl)
        else:
            self._held.forget(self._name, self.token)
        return renewed

    async def release(self) -> None:
        self._held.forget(self._name, self.token)
        with contextlib.suppress(CoordinationUnavailable):  # it expires by itself
            await self._inner.release()


class _HeldHere:
    """The reply locks this instance holds, whichever backend granted them. During an outage
    the memory fallback knows nothing of a lock held on Redis, and once Redis is back, Redis
    knows nothing of one granted by memory: without this, a second reply could start in a
    consultation beside the one this instance is streaming there (one buffer per
    consultation: one of them would be lost). A holder's claim lasts a TTL past its last
    renewal, reached or not."""

    def __init__(self) -> None:
        self._holders: dict[str, tuple[str, float]] = {}  # name -> (token, deadline)

    def holds(self, name: str) -> bool:
        held = self._holders.get(name)
        if held is None:
            return False
        if held[1] <= time.monotonic():
            del self._holders[name]
            return False
        return True

    def keep(self, name: str, token: str, ttl_seconds: float) -> None:
        self._holders[name] = (token, time.monotonic() + ttl_seconds)

    def forget(self, name: str, token: str) -> None:
        held = self._holders.get(name)
        if held is not None and held[0] == token:
            del self._holders[name]


class FailoverReplyLocks:
    def __init__(self, primary: ReplyLocks, fallback: ReplyLocks, degraded: Degraded) -> None:
        self._primary, self._fallback, self._degraded = primary, fallback, degraded
        self._held = _HeldHere()

    async def try_lock(self, name: str, ttl_seconds: float) -> Lock | None:
        if self._held.holds(name):
            return None  # this instance is replying there, on whichever backend
        lock = await self._degraded.either(
            lambda: self._primary.try_lock(name, ttl_seconds),
            lambda: self._fallback.try_lock(name, ttl_seconds),
        )
        if lock is None:
            return None
        self._held.keep(name, lock.token, ttl_seconds)
        return _GuardedLock(lock, self._held, name, ttl_seconds)

    async def fenced_token(self, name: str) -> str:
        return await self._degraded.either(
            lambda: self._primary.fenced_token(name),
            lambda: self._fallback.fenced_token(name),
        )


class FailoverReplyQueue:
    def __init__(self, primary: ReplyQueue, fallback: ReplyQueue, degraded: Degraded) -> None:
        self._primary, self._fallback, self._degraded = primary, fallback, degraded

    async def mark_pending(self, name: str) -> None:
        await self._degraded.either(
            lambda: self._primary.mark_pending(name), lambda: self._fallback.mark_pending(name)
        )

    async def take_pending(self, name: str) -> bool:
        # Flags may have been marked locally during an outage: take both.
        local = await self._fallback.take_pending(name)
        shared = await self._degraded.either(lambda: self._primary.take_pending(name), _false)
        return local or shared

    async def is_pending(self, name: str) -> bool:
        if await self._fallback.is_pending(name):
            return True
        return await self._degraded.either(lambda: self._primary.is_pending(name), _false)


class FailoverReplyBuffer:
    MOVE_BACK_EVERY_SECONDS = 0.5  # while Redis is away, an append asks at most this often

    def __init__(self, primary: ReplyBuffer, fallback: ReplyBuffer, degraded: Degraded) -> None:
        self._primary, self._fallback, self._degraded = primary, fallback, degraded
        self._move_tried: dict[str, float] = {}  # name -> when moving back was last tried

    async def start(self, name: str, draft: ReplyDraft, ttl_seconds: float) -> None:
        await self._degraded.either(
            lambda: self._primary.start(name, draft, ttl_seconds),
            lambda: self._fallback.start(name, draft, ttl_seconds),
        )

    async def append(
        self, name: str, message_id: str, owner: str, text: str, ttl_seconds: float
    ) -> BufferWrite:
        # The buffer lives where the reply started (Redis, or memory during an outage). One
        # kept in memory goes back to Redis as soon as Redis answers: there, another instance
        # can continue the reply if this one dies.
        if await self._move_back(name, message_id, owner, ttl_seconds):
            return await self._degraded.either(
                lambda: self._primary.append(name, message_id, owner, text, ttl_seconds),
                lambda: self._fallback.append(name, message_id, owner, text, ttl_seconds),
            )
        local = await self._fallback.append(name, message_id, owner, text, ttl_seconds)
        if local is BufferWrite.OK:
            return local

        async def during_outage() -> BufferWrite:
            # Not buffered here (the reply started on Redis before it went down): GONE, and
            # its owner restores it here for the rest of the outage.
            return local

        return await self._degraded.either(
            lambda: self._primary.append(name, message_id, owner, text, ttl_seconds),
            during_outage,
        )

    async def _move_back(self, name: str, message_id: str, owner: str, ttl: float) -> bool:
        """True when the reply was buffered in memory and now is on Redis again."""
        kept = await self._fallback.read(name)
        if kept is None or kept.message_id != message_id or kept.owner != owner:
            self._move_tried.pop(name, None)
            return False
        now = time.monotonic()
        if now - self._move_tried.get(name, float("-inf")) < self.MOVE_BACK_EVERY_SECONDS:
            return False
        self._move_tried[name] = now
        try:
            draft = ReplyDraft(message_id, owner, kept.request_seq, kept.model)
            await self._primary.start(name, draft, ttl)
            for part in kept.parts:
                if await self._primary.append(name, message_id, owner, part, ttl) is not (
                    BufferWrite.OK
                ):
                    return False  # fenced out on Redis: the local copy decides (TAKEN)
        except CoordinationUnavailable:
            return False  # still away: stay in memory
        await self._fallback.clear(name, message_id)
        self._move_tried.pop(name, None)
        log.info("the buffer of reply %s in %s is back on Redis", message_id, name)
        return True

    async def claim(
        self, name: str, message_id: str, owner: str, ttl_seconds: float
    ) -> Partial | None:
        return await self._degraded.either(
            lambda: self._primary.claim(name, message_id, owner, ttl_seconds),
            lambda: self._fallback.claim(name, message_id, owner, ttl_seconds),
        )

    async def set_model(self, name: str, message_id: str, model: str) -> None:
        await self._fallback.set_model(name, message_id, model)
        await self._degraded.either(lambda: self._primary.set_model(name, message_id, model), _none)

    async def read(self, name: str) -> Partial | None:
        shared = await self._degraded.either(lambda: self._primary.read(name), _none)
        return shared or await self._fallback.read(name)

    async def clear(self, name: str, message_id: str) -> None:
        await self._fallback.clear(name, message_id)
        await self._degraded.either(lambda: self._primary.clear(name, message_id), _none)

    async def abandon(self, name: str, message_id: str, owner: str) -> bool | None:
        # Taken over where it is shared wins; otherwise ours wherever it was buffered.
        shared = await self._degraded.either(
            lambda: self._primary.abandon(name, message_id, owner), _none
        )
        local = await self._fallback.abandon(name, message_id, owner)
        if shared is False or local is False:
            return False
        return True if shared or local else None


class FailoverReplyRegistry:
    def __init__(self, primary: ReplyRegistry, fallback: ReplyRegistry, degraded: Degraded) -> None:
        self._primary, self._fallback, self._degraded = primary, fallback, degraded

    async def touch(self, name: str, ttl_seconds: float) -> None:
        await self._degraded.either(
            lambda: self._primary.touch(name, ttl_seconds),
            lambda: self._fallback.touch(name, ttl_seconds),
        )

    async def drop(self, name: str) -> None:
        await self._fallback.drop(name)
        await self._degraded.either(lambda: self._primary.drop(name), _none)

    async def overdue(self, limit: int) -> list[str]:
        local = await self._fallback.overdue(limit)
        shared = await self._degraded.either(lambda: self._primary.overdue(limit), _empty)
        return list(dict.fromkeys(local + shared))[:limit]


class FailoverRoomPresence:
    def __init__(self, primary: RoomPresence, fallback: RoomPresence, degraded: Degraded) -> None:
        self._primary, self._fallback, self._degraded = primary, fallback, degraded

    async def enter(self, room: str, who: str, connection_id: str, ttl_seconds: float) -> bool:
        return await self._degraded.either(
            lambda: self._primary.enter(room, who, connection_id, ttl_seconds),
            lambda: self._fallback.enter(room, who, connection_id, ttl_seconds),
        )

    async def exit(self, room: str, who: str, connection_id: str) -> bool:
        local = await self._fallback.exit(room, who, connection_id)
        shared = await self._degraded.either(
            lambda: self._primary.exit(room, who, connection_id), _false
        )
        return local or shared

    async def online(self, room: str) -> list[str]:
        local = await self._fallback.online(room)
        shared = await self._degraded.either(lambda: self._primary.online(room), _empty)
        return sorted(set(local) | set(shared))

    async def refresh(self, entries: Sequence[tuple[str, str, str]], ttl_seconds: float) -> None:
        await self._fallback.refresh(entries, ttl_seconds)
        await self._degraded.either(lambda: self._primary.refresh(entries, ttl_seconds), _none)


class FailoverStopSignals:
    def __init__(self, primary: StopSignals, fallback: StopSignals, degraded: Degraded) -> None:
        self._primary, self._fallback, self._degraded = primary, fallback, degraded

    async def request_stop(self, name: str, ttl_seconds: float) -> None:
        await self._degraded.either(
            lambda: self._primary.request_stop(name, ttl_seconds),
            lambda: self._fallback.request_stop(name, ttl_seconds),
        )

    async def take_stop(self, name: str) -> bool:
        local = await self._fallback.take_stop(name)
        shared = await self._degraded.either(lambda: self._primary.take_stop(name), _false)
        return local or shared


class FailoverRateLimits:
    def __init__(self, primary: RateLimits, fallback: RateLimits, degraded: Degraded) -> None:
        self._primary, self._fallback, self._degraded = primary, fallback, degraded

    async def hit(self, name: str, limit: int, window_seconds: float) -> RateDecision:
        return await self._degraded.either(
            lambda: self._primary.hit(name, limit, window_seconds),
            lambda: self._fallback.hit(name, limit, window_seconds),
        )


class FailoverConnectionRegistry:
    def __init__(
        self, primary: ConnectionRegistry, fallback: ConnectionRegistry, degraded: Degraded
    ) -> None:
        self._primary, self._fallback, self._degraded = primary, fallback, degraded

    async def add(self, name: str, member: str, limit: int, ttl_seconds: float) -> bool:
        return await self._degraded.either(
            lambda: self._primary.add(name, member, limit, ttl_seconds),
            lambda: self._fallback.add(name, member, limit, ttl_seconds),
        )

    async def refresh(self, entries: Sequence[tuple[str, str]], ttl_seconds: float) -> None:
        await self._fallback.refresh(entries, ttl_seconds)
        await self._degraded.either(lambda: self._primary.refresh(entries, ttl_seconds), _none)

    async def remove(self, name: str, member: str) -> None:
        await self._fallback.remove(name, member)
        await self._degraded.either(lambda: self._primary.remove(name, member), _none)

    async def absent_since(self, name: str) -> float | None:
        return await self._degraded.either(
            lambda: self._primary.absent_since(name), lambda: self._fallback.absent_since(name)
        )
