"""The RateLimits contract: a sliding window of hits per name."""

from __future__ import annotations

import asyncio

from server.coordination import Coordination


async def test_hits_are_counted_up_to_the_limit(coordination: Coordination, name: str) -> None:
    decisions = [await coordination.rates.hit(name, 3, 10) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.count for d in decisions] == [1, 2, 3, 3]
    assert [d.retry_after for d in decisions[:3]] == [0, 0, 0]
    assert 9 < decisions[3].retry_after <= 10


async def test_the_window_slides(coordination: Coordination, name: str) -> None:
    assert (await coordination.rates.hit(name, 1, 0.3)).allowed
    refused = await coordination.rates.hit(name, 1, 0.3)
    assert not refused.allowed
    await asyncio.sleep(refused.retry_after + 0.05)
    assert (await coordination.rates.hit(name, 1, 0.3)).allowed


async def test_names_are_counted_apart(coordination: Coordination, name: str) -> None:
    assert (await coordination.rates.hit(name + "a", 1, 10)).allowed
    assert (await coordination.rates.hit(name + "b", 1, 10)).allowed
    assert not (await coordination.rates.hit(name + "a", 1, 10)).allowed
