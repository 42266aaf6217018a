"""Coordination between instances, one module per concern (``locks``, ``queue``, ``buffer``,
``inflight``, ``presence``, ``stops``, ``rates``, ``registry``, ``instances``), each with a
memory and a Redis implementation; ``failover`` wraps each Redis one so that an instance keeps
serving its own clients while Redis is down."""

from __future__ import annotations

from dataclasses import dataclass

from ..domain.ports import (
    ConnectionRegistry,
    InstanceDirectory,
    RateLimits,
    ReplyBuffer,
    ReplyLocks,
    ReplyQueue,
    ReplyRegistry,
    RoomPresence,
    StopSignals,
)
from .buffer import MemoryReplyBuffer, RedisReplyBuffer
from .failover import (
    Degraded,
    FailoverConnectionRegistry,
    FailoverRateLimits,
    FailoverReplyBuffer,
    FailoverReplyLocks,
    FailoverReplyQueue,
    FailoverReplyRegistry,
    FailoverRoomPresence,
    FailoverStopSignals,
)
from .fences import MemoryFences
from .inflight import MemoryReplyRegistry, RedisReplyRegistry
from .instances import MemoryInstanceDirectory, RedisInstanceDirectory
from .locks import MemoryReplyLocks, RedisReplyLocks
from .presence import MemoryRoomPresence, RedisRoomPresence
from .queue import MemoryReplyQueue, RedisReplyQueue
from .rates import MemoryRateLimits, RedisRateLimits
from .redis_support import RedisHandle
from .registry import MemoryConnectionRegistry, RedisConnectionRegistry
from .stops import MemoryStopSignals, RedisStopSignals


@dataclass(frozen=True)
class Coordination:
    """Every coordination concern of one instance."""

    locks: ReplyLocks
    queue: ReplyQueue
    buffer: ReplyBuffer
    stops: StopSignals
    rates: RateLimits
    registry: ConnectionRegistry
    inflight: ReplyRegistry
    presence: RoomPresence
    instances: InstanceDirectory


def in_memory() -> Coordination:
    """One instance: everything in this process."""
    fences = MemoryFences()  # the locks hand them out, the buffer checks them
    return Coordination(
        locks=MemoryReplyLocks(fences),
        queue=MemoryReplyQueue(),
        buffer=MemoryReplyBuffer(fences),
        stops=MemoryStopSignals(),
        rates=MemoryRateLimits(),
        registry=MemoryConnectionRegistry(),
        inflight=MemoryReplyRegistry(),
        presence=MemoryRoomPresence(),
        instances=MemoryInstanceDirectory(),
    )


def on_redis(redis: RedisHandle) -> Coordination:
    """A cluster: Redis, falling back to this process's memory while Redis is down."""
    local = in_memory()
    degraded = Degraded()
    return Coordination(
        locks=FailoverReplyLocks(RedisReplyLocks(redis), local.locks, degraded),
        queue=FailoverReplyQueue(RedisReplyQueue(redis), local.queue, degraded),
        buffer=FailoverReplyBuffer(RedisReplyBuffer(redis), local.buffer, degraded),
        stops=FailoverStopSignals(RedisStopSignals(redis), local.stops, degraded),
        rates=FailoverRateLimits(RedisRateLimits(redis), local.rates, degraded),
        registry=FailoverConnectionRegistry(
            RedisConnectionRegistry(redis), local.registry, degraded
        ),
        inflight=FailoverReplyRegistry(RedisReplyRegistry(redis), local.inflight, degraded),
        presence=FailoverRoomPresence(RedisRoomPresence(redis), local.presence, degraded),
        # Status only: no failover (with Redis down, status says the totals are unknown).
        instances=RedisInstanceDirectory(redis),
    )
