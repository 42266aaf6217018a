"""Shared fixtures: real servers on free ports (SecantusDB, redis-server, the fake LLM API, our
app in-process or as processes behind nginx) and recording clients."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web

from server.app import COMPONENTS, Components, create_app
from server.config import Settings
from server.domain.ports import Store
from server.storage.mongo import MongoStore
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import ChatClient
from tests.servers import (
    ROOT,
    AppProcess,
    MongoServer,
    Nginx,
    RedisCluster,
    RedisServer,
    serve,
)

__all__ = ["JWT_SECRET", "ROOT", "MongoServer", "RedisServer"]

JWT_SECRET = "test-secret-" + "x" * 64  # long enough for every HMAC algorithm


def settings_for_tests(**overrides: Any) -> Settings:
    """Settings built from values only (never from this process's environment)."""
    return Settings.model_validate({"host": "127.0.0.1", "port": 0, **overrides})


# -- MongoDB (SecantusDB, a MongoDB-wire server) and Redis ---------------------------------------


@pytest.fixture(scope="session")
def mongo_server() -> Iterator[MongoServer]:
    server = MongoServer().start()
    assert isinstance(server, MongoServer)
    yield server
    server.stop()


@pytest.fixture
async def mongo_store(mongo_server: MongoServer) -> AsyncIterator[MongoStore]:
    """A MongoStore on a database of its own (tests never share data)."""
    store = MongoStore(mongo_server.url, f"test_{uuid.uuid4().hex[:12]}", timeout_seconds=5)
    await store.start()
    yield store
    await store.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    assert isinstance(server, RedisServer)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A real three-master Redis Cluster on loopback."""
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()


# -- the fake LLM API -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture(autouse=True)
def _reset_fake(request: pytest.FixtureRequest) -> None:
    if "fake_openai" in request.fixturenames:
        fake: FakeOpenAI = request.getfixturevalue("fake_openai")
        fake.requests.clear()
        fake.embedding_requests.clear()
        fake.token_delay = 0.0


# -- our server, in-process on a free port --------------------------------------------------------


@dataclass
class RunningServer:
    url: str
    app: web.Application

    @property
    def components(self) -> Components:
        return self.app[COMPONENTS]


StartServer = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def start_server(fake_openai: FakeOpenAI) -> AsyncIterator[StartServer]:
    """Start our app on a free port, answering with the fake LLM API. Keyword arguments are
    Settings fields; ``store=`` injects a store."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(*, store: Store | None = None, **overrides: Any) -> RunningServer:
            defaults = {
                "openai_api_key": "sk-test",
                "openai_base_url": fake_openai.url,
                "ai_models": ("good",),
                "ai_lock_ttl_seconds": 5,
            }
            settings = settings_for_tests(**{**defaults, **overrides})
            served = await stack.enter_async_context(serve(create_app(settings, store=store)))
            return RunningServer(served.url, served.app)

        yield start


Connect = Callable[..., Awaitable[ChatClient]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Connect recording clients (``join=`` joins a consultation too); all are disconnected at
    the end of the test."""
    clients: list[ChatClient] = []

    async def make(url: str, *, join: str | None = None, **kwargs: Any) -> ChatClient:
        client = ChatClient(url, **kwargs)
        clients.append(client)
        await client.connect()
        if join is not None:
            await client.join(join)
        return client

    yield make
    for client in clients:
        if client.sio.connected:
            await client.disconnect()


# -- tokens ---------------------------------------------------------------------------------------


def make_token(
    sub: str = "u1",
    *,
    tenant: str | None = "t1",
    role: str | None = "user",
    # Longer than the whole suite: tokens made at collection time (module constants,
    # parametrize) are used up to its end.
    expires_in: timedelta = timedelta(hours=2),
    secret: str = JWT_SECRET,
    algorithm: str = "HS256",
    **claims: Any,
) -> str:
    payload: dict[str, Any] = {"sub": sub, "exp": datetime.now(UTC) + expires_in, **claims}
    if tenant is not None:
        payload["tenant"] = tenant
    if role is not None:
        payload["role"] = role
    return jwt.encode(payload, secret, algorithm=algorithm)


# -- several app processes behind a real nginx ----------------------------------------------------


class Cluster:
    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.apps: list[AppProcess] = []
        self.proxies: list[Nginx] = []

    def start_apps(self, count: int, **env: str) -> list[AppProcess]:
        started = [
            AppProcess({**self.env, **env}, self.workdir / f"app{len(self.apps) + i + 1}.log")
            for i in range(count)
        ]
        for app in started:
            app.start()
        self.apps.extend(started)
        for app in started:
            app.wait_ready()
        return started

    def start_nginx(self, apps: list[AppProcess] | None = None) -> Nginx:
        upstreams = [f"127.0.0.1:{app.port}" for app in (apps or self.apps)]
        proxy = Nginx(upstreams=upstreams, workdir=self.workdir / f"nginx{len(self.proxies) + 1}")
        proxy.start()
        self.proxies.append(proxy)
        return proxy

    def stop(self) -> None:
        for proxy in self.proxies:
            proxy.stop()
        for app in self.apps:
            app.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {app.log_path.name}\n{app.log()[-4000:]}" for app in self.apps)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[CALL_FAILED] = report.failed
    return report


CALL_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def cluster(
    request: pytest.FixtureRequest,
    mongo_server: MongoServer,
    redis_server: RedisServer,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
) -> Iterator[Cluster]:
    unique = uuid.uuid4().hex[:10]
    env = {
        "MONGODB_URL": mongo_server.url,
        "MONGODB_DB": f"cluster_{unique}",
        "REDIS_URL": redis_server.url,
        "REDIS_PREFIX": f"test-{unique}",
        "JWT_SECRET": JWT_SECRET,
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": fake_openai.url,
        "AI_MODELS": "slow-20",
        "AI_LOCK_TTL_SECONDS": "3",
    }
    running = Cluster(tmp_path, env)
    yield running
    running.stop()
    if request.node.stash.get(CALL_FAILED, False):  # the servers' side of a failure, in CI too
        print(running.logs())
