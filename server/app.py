"""The one place that picks concrete adapters and wires them together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import socketio
from aiohttp import web

from .ai.fallback import FallbackAssistant
from .ai.offline import OfflineAssistant
from .ai.openai_provider import OpenAIModel, make_client
from .config import ConfigError, Settings
from .coordination.failover import FailoverCoordination
from .coordination.memory import MemoryCoordination
from .coordination.redis import RedisCoordination
from .domain.consultations import ConsultationService, Limits
from .domain.policies import Admission, ConnectionPolicy, Moderation, RateLimiter, RatePolicy
from .domain.ports import Assistant, Coordination, Store
from .domain.replies import ReplyService, ReplySettings
from .errors import AppError
from .storage.memory import MemoryStore
from .transport.auth import Authenticator
from .transport.chat_namespace import NAMESPACE, ChatNamespace
from .transport.fanout import LeanManager
from .transport.net import parse_networks
from .transport.notifier import SocketIONotifier
from .transport.redis_manager import ClusterRedisManager
from .transport.rest import Routes, cors_middleware
from .transport.sio import close_sockets, create_server

log = logging.getLogger("server")

SHUTDOWN_GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class Components:
    settings: Settings
    store: Store
    assistant: Assistant
    coordination: Coordination
    sio: socketio.AsyncServer
    namespace: ChatNamespace
    replies: ReplyService
    service: ConsultationService
    manager: LeanManager | ClusterRedisManager
    admission: Admission


COMPONENTS = web.AppKey("components", Components)


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    assistant: Assistant | None = None,
    coordination: Coordination | None = None,
) -> web.Application:
    store = store or _store(settings)
    assistant = assistant or _assistant(settings)
    manager = _client_manager(settings)
    coordination = coordination or _coordination(settings)
    sio = create_server(settings, manager)
    notifier = SocketIONotifier(sio, NAMESPACE)
    replies = ReplyService(
        store,
        assistant,
        notifier,
        coordination,
        ReplySettings(
            system_prompt=settings.ai_system_prompt,
            context_messages=settings.ai_context_messages,
            lock_ttl_seconds=settings.ai_lock_ttl_seconds,
            enabled=settings.ai_replies,
            chunk_flush_seconds=settings.ai_chunk_flush_ms / 1000,
        ),
    )
    service = ConsultationService(
        store,
        replies,
        notifier,
        coordination,
        limits=Limits(
            max_message_chars=settings.max_message_chars,
            history_page_size=settings.history_page_size,
        ),
        rate_limiter=RateLimiter(
            coordination,
            RatePolicy(settings.rate_limit_messages, settings.rate_limit_window_seconds),
        ),
        moderation=_moderation(settings),
    )
    admission = Admission(
        coordination,
        ConnectionPolicy(
            max_per_instance=settings.max_connections,
            max_per_user=settings.max_connections_per_user,
        ),
    )
    authenticator = Authenticator(
        secret=settings.jwt_secret,
        algorithms=settings.jwt_algorithms,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
    )
    namespace = ChatNamespace(
        service, authenticator, admission, parse_networks(settings.trusted_proxies)
    )
    sio.register_namespace(namespace)

    async def readiness() -> dict[str, str]:
        checks = {"storage": await _check(store.ping())}
        if isinstance(manager, ClusterRedisManager):
            checks["coordination"] = await _check(coordination.ping())
            checks["fanout"] = manager.fanout_state()
        return checks

    app = web.Application(middlewares=[cors_middleware(settings.allowed_origins)])
    components = Components(
        settings,
        store,
        assistant,
        coordination,
        sio,
        namespace,
        replies,
        service,
        manager,
        admission,
    )
    app[COMPONENTS] = components
    sio.attach(app)
    Routes(
        service,
        authenticator,
        readiness,
        settings.socketio_client_url,
        connections=lambda: namespace.connection_count,
    ).install(app)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_drain)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    parts = app[COMPONENTS]
    await parts.store.start()
    if isinstance(parts.manager, ClusterRedisManager):
        parts.manager.start()
    keeper = asyncio.create_task(_keep_presence(parts))
    yield
    keeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await keeper
    if isinstance(parts.manager, ClusterRedisManager):
        await parts.manager.stop()
    await parts.assistant.close()
    await parts.coordination.close()
    await parts.store.close()


async def _keep_presence(parts: Components) -> None:
    """Refresh this instance's connections in the per-user presence sets: entries of a crashed
    instance are no longer refreshed and expire."""
    interval = parts.admission.policy.presence_ttl_seconds / 3
    while True:
        await asyncio.sleep(interval)
        try:
            await parts.admission.keep_alive(parts.namespace.presence())
        except AppError as exc:
            log.warning("could not refresh connection presence: %s", exc.message)


async def _drain(app: web.Application) -> None:
    """On shutdown, let replies in flight finish and reach the room (they are stored at the
    end), then disconnect every client so it reconnects elsewhere; open WebSockets would
    otherwise hold the shutdown for aiohttp's whole handler timeout."""
    parts = app[COMPONENTS]
    await parts.replies.wait_idle(SHUTDOWN_GRACE_SECONDS)
    await close_sockets(parts.sio)
    await parts.sio.shutdown()


def describe_mode(settings: Settings) -> list[tuple[int, str]]:
    """What the server runs on, for the start-up log: embedded defaults are said loudly."""
    lines: list[tuple[int, str]] = []
    if settings.mongodb_url:
        lines.append((logging.INFO, f"storage: MongoDB, database {settings.mongodb_db!r}"))
    else:
        lines.append(
            (
                logging.WARNING,
                "storage: IN-MEMORY (MONGODB_URL not set): history is lost on restart",
            )
        )
    if settings.redis_url:
        lines.append((logging.INFO, "fan-out and coordination: Redis"))
    elif settings.mongodb_url:
        lines.append(
            (
                logging.WARNING,
                "fan-out: SINGLE INSTANCE (REDIS_URL not set) although MONGODB_URL is: instances "
                "sharing this database MUST share Redis, or their rooms and reply locks split",
            )
        )
    else:
        lines.append((logging.WARNING, "fan-out: SINGLE INSTANCE (REDIS_URL not set)"))
    if settings.openai_api_key:
        chain = ", ".join(settings.ai_models)
        where = settings.openai_base_url or "the OpenAI API"
        lines.append((logging.INFO, f"assistant: {where}, models {chain}"))
    else:
        lines.append(
            (logging.WARNING, "assistant: OFFLINE (OPENAI_API_KEY not set): canned replies")
        )
    if settings.dev_auth:
        lines.append(
            (
                logging.WARNING,
                "auth: DEV AUTH (JWT_SECRET not set): anyone may connect as a guest. "
                "Never run this in production.",
            )
        )
    else:
        lines.append((logging.INFO, f"auth: JWT ({', '.join(settings.jwt_algorithms)})"))
    return lines


async def _check(probe: Awaitable[None]) -> str:
    try:
        await probe
    except AppError as exc:
        return exc.message
    return "ok"


def _moderation(settings: Settings) -> Moderation:
    path = settings.moderation_blocklist_file
    if not path:
        return Moderation()
    try:
        with open(path, encoding="utf-8") as blocklist:
            moderation = Moderation.from_lines(blocklist)
    except OSError as exc:
        raise ConfigError(f"MODERATION_BLOCKLIST_FILE: cannot read {path}: {exc}") from exc
    log.info("moderation: %d blocked terms from %s", moderation.size, path)
    return moderation


def _client_manager(settings: Settings) -> LeanManager | ClusterRedisManager:
    if not settings.redis_url:
        return LeanManager()
    return ClusterRedisManager(settings.redis_url, channel=settings.redis_prefix)


def _coordination(settings: Settings) -> Coordination:
    if not settings.redis_url:
        return MemoryCoordination()
    return FailoverCoordination(RedisCoordination(settings.redis_url, prefix=settings.redis_prefix))


def _store(settings: Settings) -> Store:
    if settings.mongodb_url:
        from .storage.mongo import MongoStore

        return MongoStore(
            settings.mongodb_url,
            settings.mongodb_db,
            timeout_seconds=settings.mongodb_timeout_seconds,
        )
    return MemoryStore()


def _assistant(settings: Settings) -> Assistant:
    if not settings.openai_api_key:
        return OfflineAssistant(settings.offline_word_delay_seconds)
    client = make_client(
        settings.openai_api_key, settings.openai_base_url, settings.ai_timeout_seconds
    )
    chain = [
        OpenAIModel(
            client, model, first_token_timeout_seconds=settings.ai_first_token_timeout_seconds
        )
        for model in settings.ai_models
    ]
    return _ClosingAssistant(FallbackAssistant(chain), client.close)


class _ClosingAssistant:
    """Closes the shared HTTP client once the chain is closed."""

    def __init__(
        self, inner: FallbackAssistant, close_client: Callable[[], Awaitable[None]]
    ) -> None:
        self._inner = inner
        self._close_client = close_client
        self.stream = inner.stream

    async def close(self) -> None:
        await self._inner.close()
        await self._close_client()
