"""The ReplyBuffer contract: the text of one reply at a time, chunk by chunk."""

from __future__ import annotations

import asyncio

from server.coordination import Coordination
from server.domain.ports import Partial


async def test_the_buffer_accumulates_one_reply_at_a_time(
    coordination: Coordination, name: str
) -> None:
    buffer = coordination.buffer
    assert await buffer.read(name) is None
    await buffer.start(name, "m1", 5)
    assert await buffer.read(name) == Partial("m1", "", -1)
    for text in ("Hel", "lo ", "wörld 🙂"):
        await buffer.append(name, "m1", text, 5)
    assert await buffer.read(name) == Partial("m1", "Hello wörld 🙂", 2)
    await buffer.append(name, "stale", "ignored", 5)  # not the current reply
    await buffer.clear(name, "stale")  # nor here
    assert await buffer.read(name) == Partial("m1", "Hello wörld 🙂", 2)
    await buffer.start(name, "m2", 5)  # the next reply replaces the buffer
    await buffer.append(name, "m2", "x", 5)
    assert await buffer.read(name) == Partial("m2", "x", 0)
    await buffer.clear(name, "m2")
    assert await buffer.read(name) is None


async def test_the_buffer_expires_with_a_crashed_writer(
    coordination: Coordination, name: str
) -> None:
    await coordination.buffer.start(name, "m1", 0.2)
    await coordination.buffer.append(name, "m1", "half a sen", 0.2)
    await asyncio.sleep(0.35)
    assert await coordination.buffer.read(name) is None


async def test_appending_keeps_the_buffer_alive(coordination: Coordination, name: str) -> None:
    await coordination.buffer.start(name, "m1", 0.4)
    for _ in range(3):
        await asyncio.sleep(0.2)
        await coordination.buffer.append(name, "m1", "x", 0.4)
    assert await coordination.buffer.read(name) == Partial("m1", "xxx", 2)
