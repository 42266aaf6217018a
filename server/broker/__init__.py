"""Cross-instance delivery of room broadcasts: the Broker interface, beside its memory
(``memory.py``) and Redis (``redis.py``: single node and Redis Cluster's sharded pub/sub)
implementations, with one contract suite (``tests/contract/test_broker_contract.py``).

A broker moves opaque payloads between instances on named channels. An instance subscribes to
a room's channel only while it has members in that room, and to its own instance channel (for
messages to one of its connections) for as long as it runs. What a payload means is the room
hub's business (``fanout/hub.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

Deliver = Callable[[bytes], None]  # called in order, on the event loop, for every message
Resync = Callable[[], Awaitable[None]]  # after a (re)connection: what passed meanwhile is lost


@dataclass
class BrokerStats:
    """Counters for metrics and benchmarks."""

    messages_received: int = 0
    bytes_received: int = 0
    messages_published: int = 0
    publish_failures: int = 0
    reconnects: int = 0


class Broker(Protocol):
    stats: BrokerStats

    @property
    def distributed(self) -> bool:
        """False when there is no other instance to deliver to (nothing is published)."""
        ...

    def room_channel(self, room: str) -> str: ...

    def instance_channel(self, instance_id: str) -> str: ...

    async def start(self, instance_id: str, deliver: Deliver, resync: Resync) -> None:
        """Connect, subscribe to this instance's channel, start delivering."""
        ...

    async def stop(self) -> None: ...

    async def subscribe(self, channel: str) -> None:
        """Receive ``channel`` from now on: once this returns, every later publish to it is
        delivered. While the backend is down it returns at once; the subscription is made
        on reconnection (and ``resync`` is called)."""
        ...

    async def unsubscribe(self, channel: str) -> None: ...

    def publish(self, channel: str, payload: bytes) -> None:
        """Queue a message: published in call order; kept and retried while the backend is
        down (a bounded outbox)."""
        ...

    def state(self) -> str:
        """``ok``, or what is wrong (for /readyz)."""
        ...

    def subscriptions(self) -> frozenset[str]:
        """The channels this instance receives now."""
        ...
