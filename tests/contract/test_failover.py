"""What only the failover wrappers do: switch between Redis and memory as Redis comes and goes,
and say so through the readiness probe."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from server.coordination import Coordination, on_redis
from server.coordination.buffer import RedisReplyBuffer
from server.coordination.redis_support import RedisHandle
from server.domain.ports import BufferWrite, Lock, ReplyDraft
from server.errors import CoordinationUnavailable
from tests.servers import RedisServer


@dataclass
class Outage:
    """One instance's coordination on a Redis that the test starts and stops (down at first)."""

    server: RedisServer
    redis: RedisHandle
    coordination: Coordination

    async def lock_then_cut(self, name: str) -> Lock:
        """Start Redis, take ``name``'s lock on it, then stop Redis under the holder."""
        self.server.start()
        await self.redis.start()
        lock = await self.coordination.locks.try_lock(name, 5)
        assert lock is not None
        self.server.stop()
        return lock


@pytest.fixture
async def outage() -> AsyncIterator[Outage]:
    server = RedisServer()
    redis = RedisHandle(server.url, prefix=f"test-{uuid.uuid4().hex[:8]}")
    try:
        yield Outage(server, redis, on_redis(redis))
    finally:
        await redis.close()
        server.stop()


async def test_state_marked_locally_during_an_outage_is_not_lost_when_redis_returns(
    outage: Outage,
) -> None:
    redis_server, redis, coordination = outage.server, outage.redis, outage.coordination
    with pytest.raises(CoordinationUnavailable):
        await redis.ping()
    await coordination.queue.mark_pending("c:1")  # Redis is down: kept locally
    lock = await coordination.locks.try_lock("c:1", 5)
    assert lock is not None and await lock.renew() is True
    redis_server.start()
    await redis.ping()
    assert await coordination.queue.is_pending("c:1") is True  # the local flag counts
    assert await coordination.queue.take_pending("c:1") is True
    assert await coordination.queue.take_pending("c:1") is False
    await coordination.stops.request_stop("c:1", 5)  # now on Redis
    assert await coordination.stops.take_stop("c:1") is True


async def test_a_lock_cut_off_from_redis_is_not_lost_and_is_taken_back_when_redis_returns(
    outage: Outage,
) -> None:
    redis_server, redis, coordination = outage.server, outage.redis, outage.coordination
    lock = await outage.lock_then_cut("c:1")
    # Unreachable is not "someone else holds it": the caller must be able to tell.
    with pytest.raises(CoordinationUnavailable):
        await lock.renew()
    redis_server.start()  # empty: the lock and its fence are gone
    await redis.ping()
    assert await lock.renew() is True  # re-established for its holder
    assert await coordination.locks.try_lock("c:1", 5) is None
    await lock.release()
    later = await coordination.locks.try_lock("c:1", 5)
    assert later is not None
    # The fence restored by the renewal keeps growing past the holder's.
    assert int(later.token.split(":")[0]) > int(lock.token.split(":")[0])
    await later.release()


async def test_a_consultation_this_instance_replies_in_stays_locked_whichever_backend(
    outage: Outage,
) -> None:
    """During an outage the memory fallback does not know the lock this instance holds on
    Redis, and once Redis is back Redis does not know one granted by memory: neither may let
    a second reply start beside the one streaming (seen in a chaos run: two replies of one
    consultation on one instance, one buffer, one reply lost)."""
    redis_server, redis, coordination = outage.server, outage.redis, outage.coordination
    on_redis_lock = await outage.lock_then_cut("c:1")
    assert await coordination.locks.try_lock("c:1", 5) is None  # still this instance's
    in_memory = await coordination.locks.try_lock("c:2", 5)  # another consultation: free
    assert in_memory is not None
    with pytest.raises(CoordinationUnavailable):
        await on_redis_lock.renew()  # cut off, not lost: it keeps the consultation
    assert await coordination.locks.try_lock("c:1", 5) is None
    redis_server.start()  # empty: Redis knows neither lock
    await redis.ping()
    assert await coordination.locks.try_lock("c:2", 5) is None  # held in memory, here
    assert await coordination.locks.try_lock("c:1", 5) is None
    await on_redis_lock.release()
    await in_memory.release()
    for name in ("c:1", "c:2"):
        again = await coordination.locks.try_lock(name, 5)
        assert again is not None
        await again.release()


async def test_a_reply_buffered_in_memory_during_an_outage_goes_back_to_redis(
    outage: Outage,
) -> None:
    redis_server, redis, coordination = outage.server, outage.redis, outage.coordination
    shared = RedisReplyBuffer(redis)
    lock = await coordination.locks.try_lock("c:1", 5)  # Redis is down: a memory lock
    assert lock is not None
    await coordination.buffer.start("c:1", ReplyDraft("m1", lock.token, 3), 5)
    assert await coordination.buffer.append("c:1", "m1", lock.token, "a", 5) is (BufferWrite.OK)
    redis_server.start()
    await redis.ping()
    # Appends move it back to Redis once Redis answers (each asks at most every 0.5 s):
    # another instance could then continue the reply.
    parts = ["a"]
    deadline = time.monotonic() + 5
    while (moved := await shared.read("c:1")) is None:
        assert time.monotonic() < deadline, "the buffer never went back to Redis"
        parts.append(str(len(parts)))
        written = await coordination.buffer.append("c:1", "m1", lock.token, parts[-1], 5)
        assert written is BufferWrite.OK
        await asyncio.sleep(0.05)
    assert moved.parts == tuple(parts) and moved.owner == lock.token
    assert await coordination.buffer.append("c:1", "m1", lock.token, "z", 5) is (BufferWrite.OK)
    final = await shared.read("c:1")
    assert final is not None and final.content == "".join(parts) + "z"
