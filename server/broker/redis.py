"""Room fan-out over Redis pub/sub, routed: a channel per room, received only by instances with
members there.

- **Single node** (``REDIS_MODE=single``): ``SUBSCRIBE`` / ``PUBLISH`` on one server.
- **Redis Cluster** (``REDIS_MODE=cluster``): sharded pub/sub (``SSUBSCRIBE`` / ``SPUBLISH``,
  Redis 7): a room's channel lives on the shard that owns its slot, so fan-out capacity grows
  with the shards. A room channel carries the room name as its hash tag, the same tag as the
  consultation's coordination keys.

Each shard (one in single mode, one per master in a cluster) has its own listener connection
and its own publisher connection, so:

- a subscription is confirmed by Redis before ``subscribe`` returns (a client whose join was
  acknowledged receives every later broadcast to the room);
- messages are published in order, pipelined, from a bounded outbox that keeps them while
  Redis is down and sends them when it returns (receivers drop what they already have);
- a lost connection is re-made within seconds, every subscription restored and ``resync``
  called so the room hub can fetch what passed meanwhile;
- each shard carries a self-ping on a channel of its own: ``state()`` (for ``/readyz``) says
  whether every shard made the round trip recently, and a shard that stops answering is
  reconnected.

In a cluster, a slot that moves (resharding, a failed-over master) is followed: Redis tells
subscribers with a ``sunsubscribe``, a ``MOVED`` answer tells the publisher; the topology is
re-read and channels and queued messages are moved to their new shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterable
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterError, RedisError

from . import BrokerStats, Deliver, Resync

log = logging.getLogger(__name__)

OUTBOX_LIMIT = 10_000  # messages kept per shard while Redis is unreachable
PUBLISH_BATCH = 256
MAX_BACKOFF_SECONDS = 2.0
CONFIRM_TIMEOUT_SECONDS = 2.0
WARN_EVERY_SECONDS = 10.0


class RedisBroker:
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "consultations",
        cluster: bool = False,
        ping_interval_seconds: float = 2.0,
        timeout_seconds: float = 2.0,
    ) -> None:
        self._url = url
        self._prefix = prefix
        self._sharded = cluster
        self._ping_interval = ping_interval_seconds
        self._timeout = timeout_seconds
        self._options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        self._cluster: RedisCluster | None = None
        self._shards: dict[str, _Shard] = {}  # by "host:port"
        self._channel_shard: dict[str, _Shard] = {}
        self._deliver: Deliver | None = None
        self._resync: Resync | None = None
        self._instance_id = ""
        self._watchdog: asyncio.Task[None] | None = None
        self._rebalancing: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned_at = float("-inf")
        self.stats = BrokerStats()

    # -- names ----------------------------------------------------------------------------------

    @property
    def distributed(self) -> bool:
        return True

    def room_channel(self, room: str) -> str:
        return f"{self._prefix}:room:{{{room}}}"

    def instance_channel(self, instance_id: str) -> str:
        return f"{self._prefix}:instance:{{{_untagged(instance_id)}}}"

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, instance_id: str, deliver: Deliver, resync: Resync) -> None:
        self._instance_id = instance_id
        self._deliver = deliver
        self._resync = resync
        if self._sharded:
            self._cluster = RedisCluster.from_url(
                self._url, socket_connect_timeout=self._timeout, socket_timeout=self._timeout
            )
            try:
                await self._cluster.initialize()
            except (RedisError, OSError) as exc:
                log.warning("Redis Cluster unreachable at start (%s): retrying", exc)
        shards = self._discover_shards()
        for shard in shards:
            shard.start()
        await self.subscribe(self.instance_channel(instance_id))
        # Ready when every shard listens (or after a short wait: Redis may be down at start).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout):
                await asyncio.gather(*(shard.wait_up() for shard in shards))
        self._watchdog = asyncio.create_task(self._watch(), name="broker-watchdog")

    async def stop(self) -> None:
        tasks = [self._watchdog, self._rebalancing, *self._tasks]
        for task in tasks:
            if task is not None:
                task.cancel()
        for shard in self._shards.values():
            await shard.stop()
        await asyncio.gather(*(task for task in tasks if task is not None), return_exceptions=True)
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                await self._cluster.aclose()

    # -- subscriptions --------------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        shard = self._shard_for(channel)
        self._channel_shard[channel] = shard
        await shard.subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        shard = self._channel_shard.pop(channel, None)
        if shard is not None:
            await shard.unsubscribe(channel)

    def subscriptions(self) -> frozenset[str]:
        return frozenset(self._channel_shard)

    # -- publishing -----------------------------------------------------------------------------

    def publish(self, channel: str, payload: bytes) -> None:
        self._shard_for(channel).enqueue(channel, payload)

    # -- health ---------------------------------------------------------------------------------

    def state(self) -> str:
        if not self._shards:
            return "no Redis node is known"
        for shard in self._shards.values():
            problem = shard.problem(self._ping_interval * 3 + 1)
            if problem:
                return problem
        return "ok"

    async def _watch(self) -> None:
        """Ping every shard through its own channel; reconnect a shard whose pings stop."""
        while True:
            await asyncio.sleep(self._ping_interval)
            for shard in list(self._shards.values()):
                shard.ping()
                if shard.connected and shard.pong_age() > self._ping_interval * 3 + 1:
                    self.warn("no pub/sub round trip through %s: reconnecting", shard.name)
                    shard.reconnect()

    # -- shards and topology --------------------------------------------------------------------

    def _discover_shards(self) -> list[_Shard]:
        seed = (str(self._options.get("host", "localhost")), int(self._options.get("port", 6379)))
        if self._cluster is None:
            return [self._shard(*seed)]
        primaries = [(str(n.host), int(n.port)) for n in self._cluster.get_primaries()]
        # Topology unknown yet (the cluster was down at start): the seed node, until a MOVED
        # or a reconnection re-reads it.
        return [self._shard(host, port) for host, port in primaries or [seed]]

    def _shard(self, host: str, port: int) -> _Shard:
        name = f"{host}:{port}"
        shard = self._shards.get(name)
        if shard is None:
            shard = self._shards[name] = _Shard(self, host, port)
            if self._deliver is not None:
                shard.start()
        return shard

    def _shard_for(self, channel: str) -> _Shard:
        if self._cluster is not None:
            try:
                node = self._cluster.nodes_manager.get_node_from_slot(key_slot(channel.encode()))
            except Exception:  # topology unknown yet: any shard; MOVED will correct it
                node = None
            if node is not None:
                return self._shard(str(node.host), int(node.port))
        if not self._shards:
            self._discover_shards()
        return next(iter(self._shards.values()))

    def rebalance(self) -> None:
        """Re-read the cluster's topology and move channels and queued messages to the shard
        that owns them now (after a slot moved or a master failed over)."""
        if self._cluster is None or (self._rebalancing and not self._rebalancing.done()):
            return
        self._rebalancing = asyncio.create_task(self._rebalance(), name="broker-rebalance")

    async def _rebalance(self) -> None:
        assert self._cluster is not None
        for attempt in range(20):
            try:
                await self._cluster.nodes_manager.initialize()
                break
            except (RedisError, OSError) as exc:
                log.warning("could not read the Redis Cluster topology (%s)", exc)
                await asyncio.sleep(min(0.2 * 2**attempt, MAX_BACKOFF_SECONDS))
        moved = 0
        for channel, current in list(self._channel_shard.items()):
            owner = self._shard_for(channel)
            if owner is not current:
                moved += 1
                await current.unsubscribe(channel)
                self._channel_shard[channel] = owner
                await owner.subscribe(channel)
        for shard in list(self._shards.values()):
            for channel, payload in shard.drain_misrouted(self._shard_for):
                self._shard_for(channel).enqueue(channel, payload)
        if moved:
            log.info("moved %d channel subscriptions to their new shards", moved)

    # -- called by shards -----------------------------------------------------------------------

    def received(self, payload: bytes) -> None:
        self.stats.messages_received += 1
        self.stats.bytes_received += len(payload)
        if self._deliver is not None:
            self._deliver(payload)

    def reconnected(self, first: bool) -> None:
        """A shard (re)connected with its subscriptions: whatever was published to them while
        it was away was lost to this instance, so the hub looks it up."""
        if not first:
            self.stats.reconnects += 1
        if self._resync is not None:
            task: asyncio.Task[None] = asyncio.ensure_future(self._resync())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def warn(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._warned_at > WARN_EVERY_SECONDS:
            self._warned_at = now
            log.warning(message, *args)

    def client_for(self, host: str, port: int, *, listener: bool) -> Redis:
        options = {k: v for k, v in self._options.items() if k not in {"host", "port"}}
        client: Redis = Redis(
            host=host,
            port=port,
            socket_connect_timeout=self._timeout,
            # The listener blocks on reads for as long as no message comes: its liveness is
            # the self-ping, not a read timeout.
            socket_timeout=None if listener else self._timeout,
            health_check_interval=0,
            # No silent reconnection inside redis-py: a lost connection must reach our loop,
            # which resubscribes and tells the hub to look for what passed meanwhile.
            retry=Retry(NoBackoff(), 0),
            **options,
        )
        return client

    @property
    def sharded(self) -> bool:
        return self._sharded

    def ping_channel(self, shard: _Shard) -> str:
        """A channel of this instance on ``shard``: in a cluster, a hash tag is searched that
        lands in a slot the shard owns, so every shard carries its own self-ping."""
        base = f"{self._prefix}:ping:{_untagged(self._instance_id or uuid.uuid4().hex)}"
        if self._cluster is None:
            return base
        nodes = self._cluster.nodes_manager
        for n in range(100_000):
            candidate = f"{base}:{{{n}}}"
            try:
                node = nodes.get_node_from_slot(key_slot(candidate.encode()))
            except Exception:
                break
            if (str(node.host), int(node.port)) == (shard.host, shard.port):
                return candidate
        return base

    @property
    def instance_id(self) -> str:
        return self._instance_id


class _Shard:
    """One Redis node: its listener, its publisher and its outbox."""

    def __init__(self, broker: RedisBroker, host: str, port: int) -> None:
        self.broker = broker
        self.host, self.port = host, port
        self.name = f"{host}:{port}"
        self.wanted: set[str] = set()
        self.connected = False
        self.ping_channel = broker.ping_channel(self)
        self._last_pong = time.monotonic()
        self._pubsub: PubSub | None = None
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        self._send_lock = asyncio.Lock()
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._has_mail = asyncio.Event()
        # Stopping is a flag the loops check, not only a cancellation: redis-py can swallow a
        # cancellation that lands inside one of its calls, and the loop would go on forever.
        self._stopping = False
        self._listener: asyncio.Task[None] | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._ever_connected = False
        self._up = asyncio.Event()
        self.dropped = 0

    async def wait_up(self) -> None:
        await self._up.wait()

    def start(self) -> None:
        if self._listener is None:
            self.wanted.add(self.ping_channel)
            self._listener = asyncio.create_task(self._listen(), name=f"listen:{self.name}")
            self._publisher = asyncio.create_task(self._publish(), name=f"publish:{self.name}")

    async def stop(self) -> None:
        self._stopping = True
        self._has_mail.set()
        tasks = [task for task in (self._listener, self._publisher) if task is not None]
        for task in tasks:
            task.cancel()
        # Their own ends (cancelled, or failed) are results here; a cancellation of the
        # caller still reaches the caller.
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- subscriptions --------------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        self.wanted.add(channel)
        if not self.connected and not self._ever_connected:
            # Still connecting for the first time (start-up): wait for it, within reason.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CONFIRM_TIMEOUT_SECONDS):
                    await self._up.wait()
        pubsub = self._pubsub
        if pubsub is None or not self.connected:
            return  # Redis is down: made on reconnection, followed by a resync
        confirmed = asyncio.get_running_loop().create_future()
        self._confirmations[channel] = confirmed
        try:
            async with self._send_lock:
                await self._command(pubsub, "subscribe", [channel])
            async with asyncio.timeout(CONFIRM_TIMEOUT_SECONDS):
                await confirmed
        except (RedisError, OSError, TimeoutError) as exc:
            # Reconnect: the listener then subscribes to everything wanted again, and the hub
            # resyncs, rather than this instance missing the room without knowing it.
            self.broker.warn("could not subscribe to %s on %s: %s", channel, self.name, exc)
            self.reconnect()
        finally:
            if self._confirmations.get(channel) is confirmed:
                del self._confirmations[channel]

    async def unsubscribe(self, channel: str) -> None:
        self.wanted.discard(channel)
        pubsub = self._pubsub
        if pubsub is None or not self.connected:
            return
        try:
            async with self._send_lock:
                await self._command(pubsub, "unsubscribe", [channel])
        except (RedisError, OSError) as exc:
            self.broker.warn("could not unsubscribe from %s on %s: %s", channel, self.name, exc)

    async def _command(self, pubsub: PubSub, verb: str, channels: list[str]) -> None:
        if verb == "subscribe":
            await (pubsub.ssubscribe if self.broker.sharded else pubsub.subscribe)(*channels)
        elif self.broker.sharded:
            await pubsub.sunsubscribe(*channels)
        else:
            await pubsub.unsubscribe(*channels)

    # -- listening ------------------------------------------------------------------------------

    async def _listen(self) -> None:
        backoff = 0.05
        while not self._stopping:
            client = self.broker.client_for(self.host, self.port, listener=True)
            pubsub = client.pubsub(ignore_subscribe_messages=False)
            try:
                subscribed: set[str] = set()
                # Channels wanted while this runs are picked up too: no await separates the
                # last check from ``connected``.
                while missing := sorted(self.wanted - subscribed):
                    for batch in _batches(missing, sharded=self.broker.sharded):
                        await self._command(pubsub, "subscribe", batch)
                    subscribed.update(missing)
                channels = sorted(subscribed)
                self._pubsub = pubsub
                self.connected = True
                self._up.set()
                self._last_pong = time.monotonic()
                backoff = 0.05
                first, self._ever_connected = not self._ever_connected, True
                if not first:
                    log.info("pub/sub on %s is back (%d channels)", self.name, len(channels))
                self.broker.reconnected(first)
                self._has_mail.set()  # flush what queued up meanwhile
                async for message in pubsub.listen():
                    self._handle(message)
            except (RedisError, OSError) as exc:
                self.broker.warn(
                    "pub/sub on %s lost its connection (%s): reconnecting", self.name, exc
                )
            except Exception:
                log.exception("pub/sub listener on %s failed: reconnecting", self.name)
            finally:
                self.connected = False
                self._up.clear()
                self._pubsub = None
                for waiter in self._confirmations.values():
                    if not waiter.done():
                        waiter.set_exception(ConnectionError("pub/sub connection lost"))
                self._confirmations.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await client.aclose()
            if self.broker.sharded:
                self.broker.rebalance()  # the node may have lost its slots or failed over
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    def reconnect(self) -> None:
        """Drop the listener's connection (it stopped answering): ``listen`` fails, and the
        listener makes a new one at once."""
        pubsub = self._pubsub
        if pubsub is not None and pubsub.connection is not None:
            connection = pubsub.connection
            task = asyncio.ensure_future(connection.disconnect(nowait=True))
            task.add_done_callback(lambda t: t.exception())

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        channel = _text(message.get("channel"))
        if kind in {"message", "smessage"}:
            if channel == self.ping_channel:
                self._last_pong = time.monotonic()
                return
            self.broker.received(message["data"])
        elif kind in {"subscribe", "ssubscribe"}:
            waiter = self._confirmations.get(channel)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif kind == "sunsubscribe" and channel in self.wanted:
            # Redis dropped a subscription we still want: its slot moved to another shard.
            log.info("%s left %s (slot moved): re-routing", channel, self.name)
            self.broker.rebalance()

    # -- publishing -----------------------------------------------------------------------------

    def enqueue(self, channel: str, payload: bytes) -> None:
        if len(self._outbox) >= OUTBOX_LIMIT:
            self._outbox.popleft()
            self.dropped += 1
            self.broker.stats.publish_failures += 1
            self.broker.warn("outbox of %s is full: the oldest message was dropped", self.name)
        self._outbox.append((channel, payload))
        self._has_mail.set()

    def ping(self) -> None:
        self.enqueue(self.ping_channel, b"ping")

    def drain_misrouted(self, owner_of: Any) -> Iterable[tuple[str, bytes]]:
        """Take out the queued messages another shard owns now."""
        kept: deque[tuple[str, bytes]] = deque()
        moved: list[tuple[str, bytes]] = []
        while self._outbox:
            item = self._outbox.popleft()
            if item[0] == self.ping_channel or owner_of(item[0]) is self:
                kept.append(item)
            else:
                moved.append(item)
        self._outbox = kept
        return moved

    async def _publish(self) -> None:
        client: Redis | None = None
        backoff = 0.05
        verb = "SPUBLISH" if self.broker.sharded else "PUBLISH"
        while not self._stopping:
            await self._has_mail.wait()
            if self._stopping:
                break
            if not self._outbox:
                self._has_mail.clear()
                continue
            batch = [self._outbox[i] for i in range(min(PUBLISH_BATCH, len(self._outbox)))]
            try:
                if client is None:
                    client = self.broker.client_for(self.host, self.port, listener=False)
                pipe = client.pipeline(transaction=False)
                for channel, payload in batch:
                    pipe.execute_command(verb, channel, payload)
                await pipe.execute()
            except (RedisError, OSError) as exc:
                stale, client = client, None
                if stale is not None:
                    with contextlib.suppress(Exception):
                        await stale.aclose()
                self.broker.warn("could not publish on %s (%s): kept for later", self.name, exc)
                if isinstance(exc, AskError | ClusterError):  # MOVED / ASK: the slot moved
                    self.broker.rebalance()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                continue
            backoff = 0.05
            for _ in batch:
                if self._outbox:
                    self._outbox.popleft()
            self.broker.stats.messages_published += sum(
                1 for channel, _ in batch if channel != self.ping_channel
            )

    # -- health ---------------------------------------------------------------------------------

    def pong_age(self) -> float:
        return time.monotonic() - self._last_pong

    def problem(self, max_age: float) -> str | None:
        if not self.connected:
            return f"pub/sub on {self.name} is not connected"
        if self.pong_age() > max_age:
            return f"no pub/sub round trip through {self.name} for {self.pong_age():.1f}s"
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _untagged(name: str) -> str:
    """A name that cannot open or close a hash tag of its own."""
    return name.replace("{", "(").replace("}", ")")


def _batches(channels: list[str], *, sharded: bool) -> list[list[str]]:
    """Channels in groups one (S)SUBSCRIBE may carry: SSUBSCRIBE's share a slot."""
    if not sharded:
        return [channels[i : i + 500] for i in range(0, len(channels), 500)]
    by_slot: dict[int, list[str]] = {}
    for channel in channels:
        by_slot.setdefault(key_slot(channel.encode()), []).append(channel)
    return list(by_slot.values())
