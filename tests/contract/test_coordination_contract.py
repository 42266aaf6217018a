"""The Coordination contract: every implementation behaves the same."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from server.coordination.failover import FailoverCoordination
from server.coordination.memory import MemoryCoordination
from server.coordination.redis import RedisCoordination
from server.domain.ports import Coordination, Partial
from server.errors import CoordinationUnavailable
from tests.conftest import RedisServer


@pytest.fixture(params=["memory", "redis", "failover"])
async def coordination(request: pytest.FixtureRequest) -> AsyncIterator[Coordination]:
    impl: Coordination
    if request.param == "memory":
        impl = MemoryCoordination()
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        impl = RedisCoordination(server.url, prefix=f"test-{uuid.uuid4().hex[:8]}")
        if request.param == "failover":
            impl = FailoverCoordination(impl)
    yield impl
    await impl.close()


@pytest.fixture
def name() -> str:
    return f"lock-{uuid.uuid4().hex}"


async def test_lock_is_exclusive_until_released(coordination: Coordination, name: str) -> None:
    lock = await coordination.try_lock(name, 5)
    assert lock is not None
    assert await coordination.try_lock(name, 5) is None
    await lock.release()
    again = await coordination.try_lock(name, 5)
    assert again is not None
    await again.release()


async def test_locks_are_per_name(coordination: Coordination, name: str) -> None:
    a = await coordination.try_lock(name + "a", 5)
    b = await coordination.try_lock(name + "b", 5)
    assert a is not None and b is not None


async def test_an_expired_lock_can_be_taken_and_its_holder_cannot_renew_or_release_it(
    coordination: Coordination, name: str
) -> None:
    first = await coordination.try_lock(name, 0.2)
    assert first is not None
    await asyncio.sleep(0.35)
    second = await coordination.try_lock(name, 5)
    assert second is not None
    assert await first.renew() is False
    await first.release()  # must not release the new holder's lock
    assert await coordination.try_lock(name, 5) is None
    await second.release()


async def test_renew_extends_the_expiry(coordination: Coordination, name: str) -> None:
    lock = await coordination.try_lock(name, 0.3)
    assert lock is not None
    for _ in range(3):
        await asyncio.sleep(0.15)
        assert await lock.renew() is True
    assert await coordination.try_lock(name, 5) is None
    await lock.release()


async def test_pending_flag_is_taken_once(coordination: Coordination, name: str) -> None:
    assert await coordination.take_pending(name) is False
    await coordination.mark_pending(name)
    await coordination.mark_pending(name)
    assert await coordination.is_pending(name) is True
    assert await coordination.take_pending(name) is True
    assert await coordination.take_pending(name) is False
    assert await coordination.is_pending(name) is False


async def test_partial_buffer_accumulates_one_reply_at_a_time(
    coordination: Coordination, name: str
) -> None:
    assert await coordination.read_partial(name) is None
    await coordination.start_partial(name, "m1", 5)
    assert await coordination.read_partial(name) == Partial("m1", "", -1)
    for text in ("Hel", "lo ", "wörld 🙂"):
        await coordination.append_partial(name, "m1", text, 5)
    assert await coordination.read_partial(name) == Partial("m1", "Hello wörld 🙂", 2)
    await coordination.append_partial(name, "stale", "ignored", 5)  # not the current reply
    await coordination.clear_partial(name, "stale")  # nor here
    assert (await coordination.read_partial(name)) == Partial("m1", "Hello wörld 🙂", 2)
    await coordination.start_partial(name, "m2", 5)  # the next reply replaces the buffer
    await coordination.append_partial(name, "m2", "x", 5)
    assert await coordination.read_partial(name) == Partial("m2", "x", 0)
    await coordination.clear_partial(name, "m2")
    assert await coordination.read_partial(name) is None


async def test_partial_buffer_expires_with_a_crashed_writer(
    coordination: Coordination, name: str
) -> None:
    await coordination.start_partial(name, "m1", 0.2)
    await coordination.append_partial(name, "m1", "half a sen", 0.2)
    await asyncio.sleep(0.35)
    assert await coordination.read_partial(name) is None


async def test_ping_answers_when_the_backend_is_up(coordination: Coordination) -> None:
    await coordination.ping()


async def test_two_clients_of_one_redis_share_locks_and_flags(
    redis_server: RedisServer, name: str
) -> None:
    prefix = f"shared-{uuid.uuid4().hex[:8]}"
    a = RedisCoordination(redis_server.url, prefix=prefix)
    b = RedisCoordination(redis_server.url, prefix=prefix)
    try:
        lock = await a.try_lock(name, 5)
        assert lock is not None
        assert await b.try_lock(name, 5) is None
        await a.mark_pending(name)
        assert await b.take_pending(name) is True
        await a.start_partial(name, "m", 5)
        await a.append_partial(name, "m", "hi", 5)
        assert await b.read_partial(name) == Partial("m", "hi", 0)
        await lock.release()
        assert await b.try_lock(name, 5) is not None
    finally:
        await a.close()
        await b.close()


async def test_failover_coordinates_locally_while_redis_is_down(name: str) -> None:
    from tests.helpers import free_port

    down = RedisCoordination(f"redis://127.0.0.1:{free_port()}/0")
    failover = FailoverCoordination(down)
    try:
        with pytest.raises(CoordinationUnavailable):
            await down.try_lock(name, 5)
        lock = await failover.try_lock(name, 5)
        assert lock is not None
        assert await failover.try_lock(name, 5) is None
        assert await lock.renew() is True
        await lock.release()
        await failover.mark_pending(name)
        assert await failover.take_pending(name) is True
        with pytest.raises(CoordinationUnavailable):
            await failover.ping()
    finally:
        await failover.close()
