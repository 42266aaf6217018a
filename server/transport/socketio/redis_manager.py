"""python-socketio's Redis client manager, hardened for production.

The stock ``AsyncRedisManager`` (5.18) shares one Redis client between the publisher and the
listener (a publish that reconnects replaces the pub/sub the listener is reading), backs off up
to 60 s after Redis returns, and starts listening only at the first client connection. This
subclass keeps a client each for publishing and listening, reconnects within ~2 s, retries a
publish on a fresh connection (so the first event after a Redis restart is not dropped), and
publishes a self-ping whose round trip ``/readyz`` checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import socketio
from redis.asyncio import Redis
from redis.exceptions import RedisError

from .fanout import deliver_locally

log = logging.getLogger(__name__)

SELF_PING = "__selfping__"
PUBLISH_ATTEMPTS = 4
MAX_LISTEN_BACKOFF_SECONDS = 2.0


class ClusterRedisManager(socketio.AsyncRedisManager):  # type: ignore[misc]
    def __init__(
        self,
        url: str,
        *,
        channel: str = "consultations",
        ping_interval_seconds: float = 2.0,
        timeout_seconds: float = 2.0,
    ) -> None:
        super().__init__(url, channel=channel)
        self._ping_interval = ping_interval_seconds
        self._timeout = timeout_seconds
        self._publisher: Redis | None = None
        self._last_pong = 0.0
        self._listening = False
        self._beat_task: asyncio.Task[None] | None = None
        self.publish_failures = 0

    # -- lifecycle -------------------------------------------------------------------------

    def initialize(self) -> None:
        super().initialize()  # starts the listener task
        self._beat_task = asyncio.ensure_future(self._beat())

    def start(self) -> None:
        """Start listening now (python-socketio waits for the first connection): a fresh
        instance must receive broadcasts and answer its readiness self-ping at once."""
        if not self.server.manager_initialized:
            self.server.manager_initialized = True
            self.initialize()

    async def stop(self) -> None:
        for task in (self._beat_task, getattr(self, "thread", None)):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._publisher is not None:
            await self._publisher.aclose()

    def fanout_state(self) -> str:
        """``ok`` when our own ping went through Redis and came back recently."""
        if not self._listening:
            return "pub/sub listener is not connected to Redis"
        age = time.monotonic() - self._last_pong
        if age > self._ping_interval * 3 + 1:
            return f"no pub/sub round trip for {age:.1f}s"
        return "ok"

    # -- local delivery --------------------------------------------------------------------

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        # Events for this instance's clients (its own and those received from Redis) take the
        # lean path; callbacks and binary payloads keep the stock one.
        if message.get("callback") is None and not message.get("binary"):
            data = message["data"]
            if isinstance(data, list):
                data = data[0] if len(data) == 1 else tuple(data)
            if deliver_locally(
                self,
                message["event"],
                data,
                namespace=message.get("namespace") or "/",
                room=message.get("room"),
                skip_sid=message.get("skip_sid"),
            ):
                return
        await super()._handle_emit(message)

    # -- publishing ------------------------------------------------------------------------

    def _new_client(self) -> Redis:
        client: Redis = Redis.from_url(
            self.redis_url,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            health_check_interval=10,
        )
        return client

    async def _publish(self, data: Any) -> Any:
        payload = self.json.dumps(data)
        for attempt in range(PUBLISH_ATTEMPTS):
            if self._publisher is None:
                self._publisher = self._new_client()
            try:
                return await self._publisher.publish(self.channel, payload)
            except (RedisError, OSError) as exc:
                # A pooled connection may be dead after a Redis restart: start over on a fresh
                # client rather than drop the event.
                stale, self._publisher = self._publisher, None
                await _close_quietly(stale)
                if attempt + 1 < PUBLISH_ATTEMPTS:
                    await asyncio.sleep(0.05 * 2**attempt)
                    continue
                self.publish_failures += 1
                log.error(
                    "could not publish %s to Redis (%s): delivered to this instance's clients only",
                    data.get("method") if isinstance(data, dict) else "message",
                    exc,
                )
        return None

    async def _beat(self) -> None:
        while True:
            try:
                await self._publish({"method": SELF_PING, "host_id": self.host_id})
            except Exception:
                log.exception("readiness self-ping failed")
            await asyncio.sleep(self._ping_interval)

    # -- listening -------------------------------------------------------------------------

    async def _listen(self) -> AsyncIterator[Any]:
        backoff = 0.1
        marker = SELF_PING.encode()
        own_ping = self.host_id.encode()
        while True:
            client = self._new_client()
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._listening = True
                backoff = 0.1
                log.info("listening to Redis channel %r", self.channel)
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    data = message["data"]
                    if marker in data:
                        if own_ping in data:
                            self._last_pong = time.monotonic()
                        continue
                    yield data
            except (RedisError, OSError) as exc:
                log.warning("Redis listener lost its connection (%s); reconnecting", exc)
            finally:
                self._listening = False
                await _close_quietly(pubsub)
                await _close_quietly(client)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_LISTEN_BACKOFF_SECONDS)


async def _close_quietly(resource: Any) -> None:
    if resource is None:
        return
    try:
        await resource.aclose()
    except Exception:
        log.debug("error while closing a Redis connection", exc_info=True)
