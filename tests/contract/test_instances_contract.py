"""The InstanceDirectory contract: live instances' latest figures; stale ones drop out. No
failover wrapper (status only): with Redis down it raises, and status says so."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from server.coordination.instances import MemoryInstanceDirectory, RedisInstanceDirectory
from server.coordination.redis_support import RedisHandle
from server.domain.ports import InstanceDirectory
from server.errors import CoordinationUnavailable
from tests.servers import RedisCluster, RedisServer, free_port


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def directory(request: pytest.FixtureRequest) -> AsyncIterator[InstanceDirectory]:
    if request.param == "memory":
        yield MemoryInstanceDirectory()
        return
    cluster = request.param == "redis-cluster"
    server: RedisCluster | RedisServer = request.getfixturevalue(
        "redis_cluster" if cluster else "redis_server"
    )
    redis = RedisHandle(server.url, prefix=f"test-{uuid.uuid4().hex[:8]}", cluster=cluster)
    await redis.start()
    yield RedisInstanceDirectory(redis)
    await redis.close()


async def test_the_latest_figures_of_live_instances(directory: InstanceDirectory) -> None:
    assert await directory.live() == {}
    await directory.report("a", {"active_connections": 3}, 5)
    await directory.report("b", {"active_connections": 4}, 5)
    await directory.report("a", {"active_connections": 5}, 5)
    assert await directory.live() == {
        "a": {"active_connections": 5},
        "b": {"active_connections": 4},
    }
    await directory.forget("b")
    assert await directory.live() == {"a": {"active_connections": 5}}


async def test_an_instance_that_stops_reporting_drops_out(directory: InstanceDirectory) -> None:
    await directory.report("gone", {"active_connections": 1}, 0.2)
    await directory.report("here", {"active_connections": 2}, 30)
    await asyncio.sleep(0.3)
    assert await directory.live() == {"here": {"active_connections": 2}}


async def test_with_redis_down_the_directory_says_so() -> None:
    redis = RedisHandle(f"redis://127.0.0.1:{free_port()}/0", prefix="down")
    try:
        with pytest.raises(CoordinationUnavailable):
            await RedisInstanceDirectory(redis).live()
    finally:
        await redis.close()
