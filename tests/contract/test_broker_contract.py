"""The Broker contract: two instances on one backend (a shared memory bus, one redis-server).

A subscription is in place when ``subscribe`` returns; only subscribed channels are received;
order is kept; an instance's own channel reaches it. Redis only: a restart is survived, with
the subscriptions restored, ``resync`` called and what was published meanwhile delivered.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

from server.broker import Broker
from server.broker.redis import RedisBroker
from tests.contract.conftest import Make
from tests.helpers import eventually
from tests.servers import RedisServer


@dataclass
class Instance:
    broker: Broker
    name: str
    received: list[bytes] = field(default_factory=list)
    resyncs: int = 0
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def start(self) -> Instance:
        await self.broker.start(self.name, self._deliver, self._resync)
        return self

    def _deliver(self, payload: bytes) -> None:
        self.received.append(payload)

    async def _resync(self) -> None:
        self.resyncs += 1

    async def wait_for(self, payload: bytes, timeout: float = 5) -> None:
        await eventually(lambda: payload in self.received, timeout=timeout, interval=0.01)


async def pair(make: Make) -> tuple[Instance, Instance]:
    a = await Instance(make(), f"a-{uuid.uuid4().hex[:6]}").start()
    b = await Instance(make(), f"b-{uuid.uuid4().hex[:6]}").start()
    return a, b


async def test_a_subscription_is_in_place_when_subscribe_returns(make_broker: Make) -> None:
    a, b = await pair(make_broker)
    channel = b.broker.room_channel("r1")
    for n in range(20):  # subscribe, publish at once from the other instance: never missed
        await b.broker.subscribe(channel)
        a.broker.publish(channel, f"m{n}".encode())
        await b.wait_for(f"m{n}".encode())
        await b.broker.unsubscribe(channel)
    assert b.broker.stats.messages_received >= 20


async def test_only_subscribed_channels_are_received(make_broker: Make) -> None:
    a, b = await pair(make_broker)
    mine, other = b.broker.room_channel("mine"), b.broker.room_channel("other")
    await b.broker.subscribe(mine)
    assert mine in b.broker.subscriptions() and other not in b.broker.subscriptions()
    a.broker.publish(other, b"not for b")
    a.broker.publish(mine, b"marker")  # published after: arrives after
    await b.wait_for(b"marker")
    assert b.received == [b"marker"]
    await b.broker.unsubscribe(mine)
    assert mine not in b.broker.subscriptions()
    await b.broker.subscribe(other)
    a.broker.publish(mine, b"after leaving")
    a.broker.publish(other, b"second marker")
    await b.wait_for(b"second marker")
    assert b"after leaving" not in b.received


async def test_messages_arrive_in_publish_order(make_broker: Make) -> None:
    a, b = await pair(make_broker)
    channel = b.broker.room_channel("ordered")
    await b.broker.subscribe(channel)
    sent = [f"{n}".encode() for n in range(2000)]
    for payload in sent:
        a.broker.publish(channel, payload)
    await b.wait_for(sent[-1])
    assert b.received == sent


async def test_the_instance_channel_reaches_its_instance_only(make_broker: Make) -> None:
    a, b = await pair(make_broker)
    a.broker.publish(b.broker.instance_channel(b.name), b"to b")
    b.broker.publish(a.broker.instance_channel(a.name), b"to a")
    await b.wait_for(b"to b")
    await a.wait_for(b"to a")
    assert b.received == [b"to b"] and a.received == [b"to a"]


async def test_both_instances_of_a_room_receive_its_messages(make_broker: Make) -> None:
    a, b = await pair(make_broker)
    channel = a.broker.room_channel("shared")
    await a.broker.subscribe(channel)
    await b.broker.subscribe(channel)
    a.broker.publish(channel, b"hello")
    await a.wait_for(b"hello")  # its own message comes back too: the hub skips it
    await b.wait_for(b"hello")
    assert a.broker.state() == "ok" and b.broker.state() == "ok"


async def test_redis_restart_resubscribes_resyncs_and_delivers_the_outbox() -> None:
    redis = RedisServer().start()
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    brokers = [RedisBroker(redis.url, prefix=prefix, ping_interval_seconds=0.3) for _ in "ab"]
    a, b = Instance(brokers[0], "a"), Instance(brokers[1], "b")
    try:
        await a.start()
        await b.start()
        channel = b.broker.room_channel("outage")
        await b.broker.subscribe(channel)
        a.broker.publish(channel, b"before")
        await b.wait_for(b"before")
        resyncs_before = b.resyncs

        redis.stop()
        await eventually(lambda: b.broker.state() != "ok", timeout=10)
        a.broker.publish(channel, b"during")  # kept in a's outbox
        assert a.broker.state() != "ok"

        redis.start()  # same port, empty
        await b.wait_for(b"during", timeout=15)  # resubscribed, and the outbox was sent
        a.broker.publish(channel, b"after")
        await b.wait_for(b"after")
        assert b.received == [b"before", b"during", b"after"]
        assert b.resyncs > resyncs_before  # the hub was told to look for what it missed
        assert b.broker.stats.reconnects >= 1
        await eventually(lambda: a.broker.state() == "ok" and b.broker.state() == "ok")
    finally:
        for broker in brokers:
            await broker.stop()
        redis.stop()
