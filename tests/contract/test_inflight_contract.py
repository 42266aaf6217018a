"""The ReplyRegistry contract: replies in flight with a deadline; only overdue ones are
listed (their instance stopped moving the deadline: it died)."""

from __future__ import annotations

import asyncio

from server.coordination import Coordination


async def test_only_entries_past_their_deadline_are_overdue(
    coordination: Coordination, name: str
) -> None:
    inflight = coordination.inflight
    await inflight.touch(name + "-alive", 5)
    await inflight.touch(name + "-dead", 0.2)
    await asyncio.sleep(0.35)
    overdue = await inflight.overdue(100)
    assert name + "-dead" in overdue and name + "-alive" not in overdue
    await inflight.touch(name + "-dead", 5)  # its instance was only slow: it moves again
    assert name + "-dead" not in await inflight.overdue(100)
    await inflight.drop(name + "-alive")
    await inflight.drop(name + "-dead")
    await inflight.drop(name + "-unknown")
    assert not [n for n in await inflight.overdue(100) if n.startswith(name)]


async def test_overdue_is_bounded(coordination: Coordination, name: str) -> None:
    for n in range(5):
        await coordination.inflight.touch(f"{name}-{n}", 0.05)
    await asyncio.sleep(0.2)
    assert len(await coordination.inflight.overdue(3)) == 3
    for n in range(5):
        await coordination.inflight.drop(f"{name}-{n}")
