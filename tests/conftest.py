"""Shared fixtures: real servers on free ports (SecantusDB, the fake LLM API, our app)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
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
from tests.cluster import AppProcess, Nginx
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import ChatClient, free_port, wait_for_port

JWT_SECRET = "test-secret-" + "x" * 64  # long enough for every HMAC algorithm
ROOT = Path(__file__).resolve().parent.parent


# -- MongoDB (SecantusDB, a MongoDB-wire server) ------------------------------------------------


@dataclass
class ExternalServer:
    """A real server binary on a port of its own, started and killed by the tests."""

    port: int
    process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


@dataclass
class MongoServer(ExternalServer):
    """SecantusDB, a MongoDB-wire server."""

    storage_path: str = ":memory:"  # a directory keeps data across restarts

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def command(self) -> list[str]:
        executable = shutil.which("secantusd-py", path=os.path.dirname(sys.executable))
        assert executable, "secantusd-py is missing: install the test extras (scripts/test)"
        return [
            executable,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--storage-path",
            self.storage_path,
        ]


@pytest.fixture(scope="session")
def mongo_server() -> Iterator[MongoServer]:
    server = MongoServer(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def mongo_store(mongo_server: MongoServer) -> AsyncIterator[MongoStore]:
    """A MongoStore on a database of its own (tests never share data)."""
    store = MongoStore(mongo_server.url, f"test_{uuid.uuid4().hex[:12]}", timeout_seconds=5)
    await store.start()
    yield store
    await store.close()


# -- Redis (our own redis-server, never a system instance) -------------------------------------


@dataclass
class RedisServer(ExternalServer):
    """Our own redis-server, never a system instance."""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        executable = shutil.which("redis-server")
        assert executable, "redis-server is missing: scripts/test installs it"
        return [
            executable,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(free_port())
    server.start()
    yield server
    server.stop()


# -- the fake LLM API ---------------------------------------------------------------------------


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
        fake.token_delay = 0.0


# -- our server, in-process on a free port ------------------------------------------------------


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
    """Start our app on a free port. Keyword arguments override Settings fields; ``store=``
    (and the other create_app keywords) inject adapters."""
    runners: list[web.AppRunner] = []

    async def start(*, store: Store | None = None, **overrides: Any) -> RunningServer:
        base = Settings(
            host="127.0.0.1",
            port=0,
            openai_api_key="sk-test",
            openai_base_url=fake_openai.url,
            ai_models=("good",),
            ai_lock_ttl_seconds=5,
        )
        settings = dataclasses.replace(base, **overrides)
        app = create_app(settings, store=store)
        runner = web.AppRunner(app, shutdown_timeout=1)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        return RunningServer(f"http://{host}:{port}", app)

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture
async def connect() -> AsyncIterator[Callable[..., Awaitable[ChatClient]]]:
    """Connect recording clients; all are disconnected at the end of the test."""
    clients: list[ChatClient] = []

    async def make(url: str, **kwargs: Any) -> ChatClient:
        client = ChatClient(url, **kwargs)
        clients.append(client)
        return await client.connect()

    yield make
    for client in clients:
        if client.sio.connected:
            await client.disconnect()


# -- tokens -------------------------------------------------------------------------------------


def make_token(
    sub: str = "u1",
    *,
    tenant: str | None = "t1",
    role: str | None = "user",
    expires_in: timedelta = timedelta(minutes=10),
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


# -- several app processes behind a real nginx --------------------------------------------------


class Cluster:
    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.apps: list[AppProcess] = []
        self.proxies: list[Nginx] = []

    def start_apps(self, count: int, **env: str) -> list[AppProcess]:
        started = [
            AppProcess(
                {**self.env, **env}, self.workdir / f"app{len(self.apps) + i + 1}.log"
            ).start()
            for i in range(count)
        ]
        self.apps.extend(started)
        for app in started:
            app.wait_ready()
        return started

    def start_nginx(self, apps: list[AppProcess] | None = None) -> Nginx:
        upstreams = [f"127.0.0.1:{app.port}" for app in (apps or self.apps)]
        proxy = Nginx(upstreams, self.workdir / f"nginx{len(self.proxies) + 1}").start()
        self.proxies.append(proxy)
        return proxy

    def stop(self) -> None:
        for proxy in self.proxies:
            proxy.stop()
        for app in self.apps:
            app.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {app.log_path.name}\n{app.log()[-4000:]}" for app in self.apps)


@pytest.fixture
def cluster(
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
