"""The StopSignals contract: a stop request is taken once, and expires."""

from __future__ import annotations

import asyncio

from server.coordination import Coordination


async def test_a_stop_request_is_taken_once(coordination: Coordination, name: str) -> None:
    stops = coordination.stops
    assert await stops.take_stop(name) is False
    await stops.request_stop(name, 5)
    await stops.request_stop(name, 5)
    assert await stops.take_stop(name + "-other") is False
    assert await stops.take_stop(name) is True
    assert await stops.take_stop(name) is False


async def test_an_unanswered_stop_request_expires(coordination: Coordination, name: str) -> None:
    await coordination.stops.request_stop(name, 0.2)
    await asyncio.sleep(0.35)
    assert await coordination.stops.take_stop(name) is False
