"""Two instances on a real three-master Redis Cluster (REDIS_MODE=cluster): rooms across
instances over sharded pub/sub, one AI reply at a time, limits across instances."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import Cluster, Connect, make_token
from tests.helpers import assert_clean_stream, limits_hold_across_instances
from tests.servers import RedisCluster


@pytest.fixture
def apps_on_redis_cluster(cluster: Cluster, redis_cluster: RedisCluster) -> Cluster:
    cluster.env.update(REDIS_URL=redis_cluster.url, REDIS_MODE="cluster")
    return cluster


async def test_rooms_span_instances_and_one_reply_runs_at_a_time(
    apps_on_redis_cluster: Cluster, connect: Connect, redis_cluster: RedisCluster
) -> None:
    app_a, app_b = apps_on_redis_cluster.start_apps(2)
    assert app_a.wait_ready()["checks"] == {"storage": "ok", "coordination": "ok", "fanout": "ok"}
    token = make_token("cleo")
    phone = await connect(app_a.url, token=token, join="sharded")
    laptop = await connect(app_b.url, token=token, join="sharded")

    first = await phone.send("sharded", "hello over sharded pub/sub")
    [echo] = await laptop.wait_for("userMessage")
    assert echo == first
    # Both devices ask at once, twice: the replies never overlap (the lock is cluster-wide).
    for round_ in range(2):
        await asyncio.gather(
            phone.send("sharded", f"phone {round_}"), laptop.send("sharded", f"laptop {round_}")
        )
    await laptop.wait_for("aiMessage", timeout=30)
    await laptop.wait_quiet()
    statuses = [d["status"] for d in laptop.of("aiThinking")]
    assert statuses == ["processing", "done"] * (len(statuses) // 2), statuses
    for reply in laptop.of("aiMessage"):
        assert_clean_stream(laptop, reply)
    assert phone.of("aiMessage") == laptop.of("aiMessage")
    # The room's channel lives on one shard, the one that owns its slot.
    holders = [
        node
        for node in redis_cluster.nodes
        if any("sharded" in name for name in redis_cluster.shard_channels(node))
    ]
    assert len(holders) == 1


async def test_rate_and_connection_limits_hold_across_instances(
    apps_on_redis_cluster: Cluster, connect: Connect
) -> None:
    app_a, app_b = apps_on_redis_cluster.start_apps(
        2,
        AI_REPLIES="off",
        RATE_LIMIT_MESSAGES="4",
        RATE_LIMIT_WINDOW_SECONDS="30",
        MAX_CONNECTIONS_PER_USER="2",
    )
    await limits_hold_across_instances(app_a.url, app_b.url, connect, make_token("dora"))
