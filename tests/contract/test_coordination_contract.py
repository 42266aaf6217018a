"""The Coordination contract: every implementation behaves the same."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from server.coordination.memory import MemoryCoordination
from server.domain.ports import Coordination


@pytest.fixture(params=["memory"])
async def coordination(request: pytest.FixtureRequest) -> AsyncIterator[Coordination]:
    impl = MemoryCoordination()
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
