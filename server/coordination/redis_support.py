"""What every Redis-backed coordination concern shares: one client, keys, scripts, errors.

Keys are ``{prefix}:{kind}:{{name}}``: the name is a hash tag, so every key of one consultation
(its lock, pending flag, partial reply, stop signal) lives in one Redis Cluster slot and a Lua
script may touch several of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import CoordinationUnavailable

log = logging.getLogger(__name__)

RedisClient = Redis | RedisCluster


def redis_client(url: str, *, cluster: bool = False, timeout_seconds: float = 2.0) -> RedisClient:
    """A client that fails within seconds and retries a dropped connection once."""
    options: dict[str, Any] = {
        "socket_timeout": timeout_seconds,
        "socket_connect_timeout": timeout_seconds,
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2),
        "decode_responses": True,
    }
    if cluster:
        client: RedisClient = RedisCluster.from_url(url, **options)
    else:
        client = Redis.from_url(
            url,
            retry_on_error=[RedisConnectionError, RedisTimeoutError, ConnectionResetError],
            health_check_interval=10,
            **options,
        )
    return client


class RedisHandle:
    """The shared client of an instance's Redis-backed concerns, with their key prefix."""

    def __init__(self, url: str, *, prefix: str = "consultations", cluster: bool = False) -> None:
        self.client = redis_client(url, cluster=cluster)
        self.prefix = prefix
        self.cluster = cluster
        self._scripts: dict[str, Any] = {}
        self._ready = not cluster
        self._initializing = asyncio.Lock()

    async def start(self) -> None:
        """Read the cluster's topology now (a Redis that is down at start is not fatal)."""
        with contextlib.suppress(CoordinationUnavailable):
            async with self.translated():
                pass

    async def _ensure_ready(self) -> None:
        # redis-py's async RedisCluster initializes lazily on its first command, and
        # concurrent first commands race inside it (a None transport, lost writes): make the
        # first one alone, under a lock.
        if self._ready:
            return
        async with self._initializing:
            if not self._ready:
                await self.client.initialize()
                self._ready = True

    @asynccontextmanager
    async def translated(self) -> AsyncIterator[None]:
        """Around every command: a ready client, and Redis errors as CoordinationUnavailable."""
        async with translated():
            await self._ensure_ready()
            yield

    def key(self, kind: str, name: str) -> str:
        return f"{self.prefix}:{kind}:{{{name}}}"

    async def run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run a Lua script (EVALSHA, loaded on first use); its keys must share a slot."""
        registered = self._scripts.get(script)
        if registered is None:
            registered = self._scripts[script] = self.client.register_script(script)
        async with self.translated():
            return await registered(keys=keys, args=args)

    def by_slot(self, keys: list[str]) -> list[list[int]]:
        """Indexes of ``keys`` grouped so that each group may go to one script call."""
        if not self.cluster:
            return [list(range(len(keys)))] if keys else []
        groups: dict[int, list[int]] = {}
        for index, key in enumerate(keys):
            groups.setdefault(key_slot(key.encode()), []).append(index)
        return list(groups.values())

    async def ping(self) -> None:
        async with self.translated():
            await self.client.ping()

    async def close(self) -> None:
        await self.client.aclose()


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


@asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """Redis errors become :class:`CoordinationUnavailable` where they occur."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise CoordinationUnavailable(f"Redis is unavailable: {exc}") from exc


# Extend the deadline of existing members of sorted sets (KEYS[i] holds ARGV[i + 1]) to now +
# ARGV[1] seconds, by the Redis clock: the keep-alive of the registry and of room presence.
REFRESH_MEMBERS = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', key, math.ceil(ttl * 1000))
end
return 1
"""
