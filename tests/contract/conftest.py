"""Every coordination implementation, for the contract suites: in memory, on Redis, on Redis
behind the failover wrappers, and behind the failover wrappers while Redis is down (the
wrappers must then behave exactly like memory)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from server.broker import Broker
from server.broker.memory import MemoryBroker, MemoryBus
from server.broker.redis import RedisBroker
from server.coordination import Coordination, in_memory, on_redis
from server.coordination.buffer import RedisReplyBuffer
from server.coordination.inflight import RedisReplyRegistry
from server.coordination.instances import RedisInstanceDirectory
from server.coordination.locks import RedisReplyLocks
from server.coordination.presence import RedisRoomPresence
from server.coordination.queue import RedisReplyQueue
from server.coordination.rates import RedisRateLimits
from server.coordination.redis_support import RedisHandle
from server.coordination.registry import RedisConnectionRegistry
from server.coordination.stops import RedisStopSignals
from tests.servers import RedisCluster, RedisServer, free_port


def on_redis_only(redis: RedisHandle) -> Coordination:
    return Coordination(
        locks=RedisReplyLocks(redis),
        queue=RedisReplyQueue(redis),
        buffer=RedisReplyBuffer(redis),
        stops=RedisStopSignals(redis),
        rates=RedisRateLimits(redis),
        registry=RedisConnectionRegistry(redis),
        inflight=RedisReplyRegistry(redis),
        presence=RedisRoomPresence(redis),
        instances=RedisInstanceDirectory(redis),
    )


@pytest.fixture(params=["memory", "redis", "failover", "failover-redis-down", "redis-cluster"])
async def coordination(request: pytest.FixtureRequest) -> AsyncIterator[Coordination]:
    if request.param == "memory":
        yield in_memory()
        return
    if request.param == "failover-redis-down":
        url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    elif request.param == "redis-cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        url = cluster.url
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        url = server.url
    redis = RedisHandle(
        url, prefix=f"test-{uuid.uuid4().hex[:8]}", cluster=request.param == "redis-cluster"
    )
    await redis.start()
    yield on_redis(redis) if request.param.startswith("failover") else on_redis_only(redis)
    await redis.close()


@pytest.fixture
def name() -> str:
    return f"c:{uuid.uuid4().hex}"


# -- brokers: two instances on one backend (the broker and rooms contracts) -----------------------

Make = Callable[[], Broker]


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def make_broker(request: pytest.FixtureRequest) -> AsyncIterator[Make]:
    made: list[Broker] = []
    if request.param == "memory":
        bus = MemoryBus()

        def make() -> Broker:
            made.append(MemoryBroker(bus))
            return made[-1]

    else:
        sharded = request.param == "redis-cluster"
        fixture = "redis_cluster" if sharded else "redis_server"
        url = request.getfixturevalue(fixture).url
        prefix = f"test-{uuid.uuid4().hex[:8]}"

        def make() -> Broker:
            made.append(RedisBroker(url, prefix=prefix, cluster=sharded, ping_interval_seconds=0.5))
            return made[-1]

    yield make
    for broker in made:
        await broker.stop()
