"""The ConnectionRegistry contract: at most ``limit`` live members per name; members that are
not refreshed expire (their instance crashed)."""

from __future__ import annotations

import asyncio
import time

from server.coordination import Coordination


async def test_members_are_admitted_up_to_the_limit(coordination: Coordination, name: str) -> None:
    registry = coordination.registry
    assert await registry.add(name, "a", 2, 10) is True
    assert await registry.add(name, "a", 2, 10) is True  # the same member again
    assert await registry.add(name, "b", 2, 10) is True
    assert await registry.add(name, "c", 2, 10) is False
    assert await registry.add(name + "-other", "c", 2, 10) is True
    await registry.remove(name, "a")
    assert await registry.add(name, "c", 2, 10) is True


async def test_members_expire_unless_refreshed(coordination: Coordination, name: str) -> None:
    registry = coordination.registry
    assert await registry.add(name, "kept", 2, 0.4)
    assert await registry.add(name, "crashed", 2, 0.4)
    for _ in range(3):
        await asyncio.sleep(0.2)
        await registry.refresh([(name, "kept"), (name + "-unknown", "x")], 0.4)
    assert await registry.add(name, "new", 2, 0.4) is True  # "crashed" expired
    assert await registry.add(name, "newer", 2, 0.4) is False  # "kept" is still live


async def test_removing_an_unknown_member_is_harmless(
    coordination: Coordination, name: str
) -> None:
    await coordination.registry.remove(name, "nobody")
    await coordination.registry.refresh([], 1)
    assert await coordination.registry.add(name, "a", 1, 10)


async def test_absence_is_known_from_the_last_connection_on(
    coordination: Coordination, name: str
) -> None:
    registry = coordination.registry
    assert await registry.add(name, "tab-1", 5, 10)
    assert await registry.add(name, "tab-2", 5, 10)
    assert await registry.absent_since(name) is None
    await registry.remove(name, "tab-1")
    assert await registry.absent_since(name) is None  # one tab is left
    before = time.time()
    await registry.remove(name, "tab-2")
    since = await registry.absent_since(name)
    assert since is not None and abs(since - before) < 5
    assert await registry.absent_since(name) == since  # the same start, asked again
    assert await registry.add(name, "back", 5, 10)
    assert await registry.absent_since(name) is None


async def test_a_crashed_instances_connections_count_as_absent(
    coordination: Coordination, name: str
) -> None:
    assert await coordination.registry.add(name, "on-a-dead-instance", 5, 0.2)
    await asyncio.sleep(0.35)  # never refreshed
    assert await coordination.registry.absent_since(name) is not None
