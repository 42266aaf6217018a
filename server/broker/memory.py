"""The broker in memory: instances of one process share a :class:`MemoryBus`.

A single instance gets a bus of its own and is not ``distributed``: the hub then publishes
nothing at all. Several hubs on one bus (tests) behave like instances on one Redis.
"""

from __future__ import annotations

import asyncio

from . import BrokerStats, Deliver, Resync


class MemoryBus:
    def __init__(self) -> None:
        self._subscribers: dict[str, set[MemoryBroker]] = {}

    def subscribe(self, channel: str, broker: MemoryBroker) -> None:
        self._subscribers.setdefault(channel, set()).add(broker)

    def unsubscribe(self, channel: str, broker: MemoryBroker) -> None:
        members = self._subscribers.get(channel)
        if members is not None:
            members.discard(broker)
            if not members:
                del self._subscribers[channel]

    def publish(self, channel: str, payload: bytes) -> None:
        # Delivered on a later turn of the loop, in publish order, as a real broker would.
        loop = asyncio.get_running_loop()
        for broker in list(self._subscribers.get(channel, ())):
            loop.call_soon(broker.receive, payload)


class MemoryBroker:
    def __init__(self, bus: MemoryBus | None = None) -> None:
        self._shared = bus is not None
        self._bus = bus or MemoryBus()
        self._channels: set[str] = set()
        self._deliver: Deliver | None = None
        self.stats = BrokerStats()

    @property
    def distributed(self) -> bool:
        return self._shared

    def room_channel(self, room: str) -> str:
        return f"room:{room}"

    def instance_channel(self, instance_id: str) -> str:
        return f"instance:{instance_id}"

    async def start(self, instance_id: str, deliver: Deliver, resync: Resync) -> None:
        self._deliver = deliver
        await self.subscribe(self.instance_channel(instance_id))

    async def stop(self) -> None:
        for channel in list(self._channels):
            await self.unsubscribe(channel)
        self._deliver = None

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        self._bus.subscribe(channel, self)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        self._bus.unsubscribe(channel, self)

    def publish(self, channel: str, payload: bytes) -> None:
        self.stats.messages_published += 1
        self._bus.publish(channel, payload)

    def receive(self, payload: bytes) -> None:
        if self._deliver is not None:
            self.stats.messages_received += 1
            self.stats.bytes_received += len(payload)
            self._deliver(payload)

    def state(self) -> str:
        return "ok"

    def subscriptions(self) -> frozenset[str]:
        return frozenset(self._channels)
