"""What only the broker on Redis Cluster does: spread room channels over the shards (sharded
pub/sub) and follow a slot that moves while instances are subscribed to it."""

from __future__ import annotations

import asyncio
import uuid

from redis.crc import key_slot

from server.broker.redis import RedisBroker
from tests.contract.test_broker_contract import Instance
from tests.helpers import eventually
from tests.servers import RedisCluster


async def test_room_channels_are_spread_over_the_shards(redis_cluster: RedisCluster) -> None:
    prefix = f"spread-{uuid.uuid4().hex[:6]}"
    broker = RedisBroker(redis_cluster.url, prefix=prefix, cluster=True)
    instance = await Instance(broker, "spread").start()
    try:
        channels = [broker.room_channel(f"c:1:t:room-{n}") for n in range(30)]
        for channel in channels:
            await broker.subscribe(channel)
        per_node = [
            redis_cluster.shard_channels(node, f"{prefix}:room:*") for node in redis_cluster.nodes
        ]
        assert all(per_node), f"a shard carries no room channel: {per_node}"
        assert sorted(c for names in per_node for c in names) == sorted(channels)  # one shard each
        for node, names in zip(redis_cluster.nodes, per_node, strict=True):
            for name in names:
                assert redis_cluster.owner_of(key_slot(name.encode())) is node
        assert instance.broker.state() == "ok"
    finally:
        await broker.stop()


async def test_a_moved_slot_is_followed_by_subscribers_and_publishers(
    redis_cluster: RedisCluster,
) -> None:
    prefix = f"moved-{uuid.uuid4().hex[:6]}"
    sender = await Instance(
        RedisBroker(redis_cluster.url, prefix=prefix, cluster=True), "s"
    ).start()
    receiver = await Instance(
        RedisBroker(redis_cluster.url, prefix=prefix, cluster=True), "r"
    ).start()
    try:
        channel = receiver.broker.room_channel("c:1:t:moving")
        await receiver.broker.subscribe(channel)
        sender.broker.publish(channel, b"before the move")
        await receiver.wait_for(b"before the move")

        slot = key_slot(channel.encode())
        source = redis_cluster.owner_of(slot)
        target = next(node for node in redis_cluster.nodes if node is not source)
        await asyncio.to_thread(redis_cluster.move_slot, slot, target)

        # Redis drops the sharded subscription of a moved slot: the receiver re-reads the
        # topology and subscribes on the new owner; the sender is answered MOVED and follows.
        async def on_target() -> bool:
            names = await asyncio.to_thread(redis_cluster.shard_channels, target, channel)
            return channel in names

        await eventually(on_target, timeout=15, interval=0.2)
        for n in range(5):
            sender.broker.publish(channel, f"after the move {n}".encode())
        await receiver.wait_for(b"after the move 4", timeout=15)
        assert [m for m in receiver.received if m.startswith(b"after")] == [
            f"after the move {n}".encode() for n in range(5)
        ]
    finally:
        await sender.broker.stop()
        await receiver.broker.stop()
