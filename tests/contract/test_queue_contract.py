"""The ReplyQueue contract: a pending flag, set any number of times, taken once."""

from __future__ import annotations

from server.coordination import Coordination


async def test_the_pending_flag_is_taken_once(coordination: Coordination, name: str) -> None:
    queue = coordination.queue
    assert await queue.take_pending(name) is False
    assert await queue.is_pending(name) is False
    await queue.mark_pending(name)
    await queue.mark_pending(name)
    assert await queue.is_pending(name) is True
    assert await queue.take_pending(name) is True
    assert await queue.take_pending(name) is False
    assert await queue.is_pending(name) is False


async def test_flags_are_per_name(coordination: Coordination, name: str) -> None:
    await coordination.queue.mark_pending(name + "a")
    assert await coordination.queue.is_pending(name + "b") is False
    assert await coordination.queue.take_pending(name + "a") is True
