"""The ReplyLocks contract: one holder at a time; an expired holder can neither renew nor
release what another took."""

from __future__ import annotations

import asyncio

from server.coordination import Coordination


async def test_a_lock_is_exclusive_until_released(coordination: Coordination, name: str) -> None:
    lock = await coordination.locks.try_lock(name, 5)
    assert lock is not None
    assert await coordination.locks.try_lock(name, 5) is None
    await lock.release()
    again = await coordination.locks.try_lock(name, 5)
    assert again is not None
    await again.release()


async def test_locks_are_per_name(coordination: Coordination, name: str) -> None:
    a = await coordination.locks.try_lock(name + "a", 5)
    b = await coordination.locks.try_lock(name + "b", 5)
    assert a is not None and b is not None


async def test_an_expired_lock_can_be_taken_and_its_holder_cannot_renew_or_release_it(
    coordination: Coordination, name: str
) -> None:
    first = await coordination.locks.try_lock(name, 0.2)
    assert first is not None
    await asyncio.sleep(0.35)
    second = await coordination.locks.try_lock(name, 5)
    assert second is not None
    assert await first.renew() is False
    await first.release()  # must not release the new holder's lock
    assert await coordination.locks.try_lock(name, 5) is None
    await second.release()


async def test_renew_extends_the_expiry(coordination: Coordination, name: str) -> None:
    lock = await coordination.locks.try_lock(name, 0.4)
    assert lock is not None
    for _ in range(3):
        await asyncio.sleep(0.2)
        assert await lock.renew() is True
    assert await coordination.locks.try_lock(name, 5) is None
    await lock.release()


async def test_concurrent_takers_get_one_lock(coordination: Coordination, name: str) -> None:
    taken = await asyncio.gather(*(coordination.locks.try_lock(name, 5) for _ in range(10)))
    assert sum(lock is not None for lock in taken) == 1


async def test_a_holder_whose_lock_vanished_untaken_keeps_it_by_renewing(
    coordination: Coordination, name: str
) -> None:
    # Redis restarted empty (or the lock expired while its holder was slow, and nobody took
    # it): the holder's renewal makes it its own again, and nobody else can take it.
    lock = await coordination.locks.try_lock(name, 0.2)
    assert lock is not None
    await asyncio.sleep(0.35)
    assert await lock.renew() is True
    assert await coordination.locks.try_lock(name, 5) is None
    await lock.release()


async def test_tokens_carry_a_fence_that_only_grows(coordination: Coordination, name: str) -> None:
    """Each acquisition of a name gets a larger fence than every earlier one (even after the
    lock expired, or Redis lost its data: fences follow the clock as well as a counter)."""
    fences = []
    for _ in range(3):
        lock = await coordination.locks.try_lock(name, 5)
        assert lock is not None
        fences.append(fence_of(lock.token))
        await lock.release()
    assert fences == sorted(fences) and len(set(fences)) == 3
    assert fences[0] > 1_600_000_000_000  # at least the time in ms, so a restart never rewinds


async def test_a_lock_taken_by_another_is_never_recreated_for_its_old_holder(
    coordination: Coordination, name: str
) -> None:
    # An instance paused past its TTL: another took the lock, finished and released it. The
    # old holder coming back must not make the (now free) lock its own again.
    old = await coordination.locks.try_lock(name, 0.2)
    assert old is not None
    await asyncio.sleep(0.35)
    new = await coordination.locks.try_lock(name, 5)
    assert new is not None and fence_of(new.token) > fence_of(old.token)
    await new.release()
    assert await old.renew() is False
    taker = await coordination.locks.try_lock(name, 5)  # still free for anyone new
    assert taker is not None
    await taker.release()


def fence_of(token: str) -> int:
    return int(token.split(":", 1)[0])


async def test_a_fenced_token_outranks_the_holder_without_taking_the_lock(
    coordination: Coordination, name: str
) -> None:
    # A human's takeover cuts the reply: its writer gets a newer fence than the holder's.
    holder = await coordination.locks.try_lock(name, 5)
    assert holder is not None
    cutter = await coordination.locks.fenced_token(name)
    assert fence_of(cutter) > fence_of(holder.token)
    assert await coordination.locks.try_lock(name, 5) is None  # the lock is still held
    await holder.release()
    later = await coordination.locks.try_lock(name, 5)
    assert later is not None and fence_of(later.token) > fence_of(cutter)
    await later.release()
