"""The composition root: the one place that picks concrete adapters and wires them together.

``build`` makes every component from the settings (tests may pass their own store or
assistant); ``create_app`` mounts them on aiohttp. Every component with a lifecycle is a
:class:`Resource`: started in order when the app starts, stopped in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import socketio
from aiohttp import web

from .ai.embeddings import OpenAIEmbedder
from .ai.fallback import FallbackAssistant
from .ai.offline import OfflineAssistant
from .ai.openai_provider import OpenAIModel, make_client
from .ai.retrieval import Bm25Ranker, UnitVectorIndexer
from .broker import Broker
from .broker.memory import MemoryBroker
from .broker.redis import RedisBroker
from .config import ConfigError, Settings
from .coordination import Coordination, in_memory, on_redis
from .coordination.redis_support import RedisHandle
from .domain.connections import ConnectionService
from .domain.consultations import ConsultationService, Limits, StoredHistory
from .domain.handoff import HandoffService, HandoffSettings
from .domain.knowledge import KnowledgeService, KnowledgeSettings
from .domain.policies import Admission, ConnectionPolicy, Moderation, RateLimiter, RatePolicy
from .domain.ports import Assistant, ReplyMetrics, Store
from .domain.presence import PresenceService
from .domain.replies import ReplyCoordination, ReplyService, ReplySettings
from .domain.session import Services
from .domain.tenants import TenantService
from .domain.visitors import VisitorService, WidgetKey
from .errors import AppError
from .fanout.hub import RoomHub
from .fanout.outbox import OutboxStats
from .observability.metrics import Live, PrometheusMetrics
from .storage.memory import MemoryStore
from .transport.auth import (
    Authenticator,
    JwksKeys,
    KeySource,
    PublicKeys,
    SharedSecret,
    VisitorTokens,
)
from .transport.knowledge import KnowledgeRoutes
from .transport.metrics import MetricsEndpoint
from .transport.net import parse_networks
from .transport.pages import ClientScript, Pages
from .transport.rest import Routes, cors_middleware
from .transport.socketio.bridge import EngineBridge
from .transport.socketio.namespace import ChatNamespace
from .transport.socketio.server import create_server
from .transport.tenants import TenantRoutes
from .transport.visitors import VisitorRoutes
from .transport.websocket import RawChatEndpoint, RawSettings

log = logging.getLogger("server")

SHUTDOWN_GRACE_SECONDS = 10.0

Probe = Callable[[], Awaitable[str]]  # "ok", or what is wrong


@dataclass(frozen=True)
class Resource:
    """Something started with the app and stopped with it."""

    name: str
    start: Callable[[], Awaitable[None]]
    stop: Callable[[], Awaitable[None]]


@dataclass
class Components:
    settings: Settings
    store: Store
    assistant: Assistant
    coordination: Coordination
    authenticator: Authenticator
    hub: RoomHub
    sio: socketio.AsyncServer
    bridge: EngineBridge
    raw: RawChatEndpoint
    outbox_stats: OutboxStats
    replies: ReplyService
    consultations: ConsultationService
    connections: ConnectionService
    handoff: HandoffService
    metrics: PrometheusMetrics
    metrics_endpoint: MetricsEndpoint
    visitors: VisitorService
    knowledge: KnowledgeService
    tenants: TenantService
    on_fatal: Callable[[], None] | None = None  # how the process ends on a fatal start-up
    fatal: str | None = None  # why it did
    store_failure: str | None = None  # the last reason the store could not be started
    store_started: bool = False
    resources: list[Resource] = field(default_factory=list)
    probes: dict[str, Probe] = field(default_factory=dict)

    started_at: float = field(default_factory=time.monotonic)

    async def readiness(self) -> dict[str, str]:
        return {name: await probe() for name, probe in self.probes.items()}

    def figures(self) -> dict[str, int]:
        """What this instance carries now, and since it started (summed for the cluster)."""
        return {
            "total_connections": self.connections.opened_total,
            "active_connections": self.connections.count,
            "max_connections": self.settings.max_connections,
            "total_messages": self.consultations.stored_total,
            "consultations_active": sum(1 for r in self.hub.rooms() if r.startswith("c:")),
            "ai_replies_in_flight": len(self.replies.streaming_now),
            "ai_replies_taken_over": self.replies.taken_over,
        }

    async def heartbeat(self) -> None:
        """Report this instance's figures for the cluster totals, every few seconds."""
        directory = self.coordination.instances
        while True:
            try:
                await directory.report(self.hub.instance_id, self.figures(), HEARTBEAT_TTL)
            except AppError as exc:
                log.debug("heartbeat skipped: %s", exc.message)
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def cluster(self) -> dict[str, Any] | None:
        """Totals over the live instances (None on a single instance)."""
        if not self.hub.broker.distributed:
            return None
        try:
            live = await self.coordination.instances.live()
        except AppError as exc:
            return {"error": exc.code, "message": exc.message}
        live[self.hub.instance_id] = self.figures()  # fresher than its last heartbeat
        totals = {name: sum(figures.get(name, 0) for figures in live.values()) for name in FIGURES}
        return {"instances": sorted(live), **totals}

    async def status(self) -> dict[str, Any]:
        """``GET /ws/status``: what this instance carries now, and since it started."""
        broker = self.hub.broker
        return {
            "instance": self.hub.instance_id,
            "uptime": round(time.monotonic() - self.started_at, 1),
            **self.figures(),
            "cluster": await self.cluster(),
            "fanout": {
                "mode": "redis" if broker.distributed else "local",
                "subscriptions": len(broker.subscriptions()),
                "messages_received": broker.stats.messages_received,
                "bytes_received": broker.stats.bytes_received,
                "messages_published": broker.stats.messages_published,
                "publish_failures": broker.stats.publish_failures,
                "reconnects": broker.stats.reconnects,
                "gaps_filled": self.hub.gaps_filled,
            },
        }


COMPONENTS = web.AppKey("components", Components)
HEARTBEAT_SECONDS = 5.0
HEARTBEAT_TTL = 3 * HEARTBEAT_SECONDS  # a dead instance leaves the totals within this
FIGURES = (
    "total_connections",
    "active_connections",
    "max_connections",
    "total_messages",
    "consultations_active",
    "ai_replies_in_flight",
    "ai_replies_taken_over",
)


def authenticator(settings: Settings, visitors: VisitorTokens | None = None) -> Authenticator:
    """The token verifier for the configured key (ConfigError if it cannot be used)."""
    return Authenticator(
        _key_source(settings),
        algorithms=settings.auth_algorithms,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
        visitors=visitors,
    )


def visitor_tokens(settings: Settings) -> VisitorTokens:
    """Signed with the configured secret; without one (dev auth, or no widget keys) with a
    key made now, whose tokens end with this process."""
    return VisitorTokens(
        settings.visitor_secret or secrets.token_urlsafe(48),
        ttl=timedelta(seconds=settings.visitor_token_ttl_seconds),
    )


def _key_source(settings: Settings) -> KeySource | None:
    if settings.jwt_secret:
        return SharedSecret(settings.jwt_secret)
    if settings.jwt_jwks_url:
        return JwksKeys(
            settings.jwt_jwks_url,
            cache_seconds=settings.jwt_jwks_cache_seconds,
            cooldown_seconds=settings.jwt_jwks_refresh_cooldown_seconds,
        )
    if settings.jwt_public_key:
        try:
            return PublicKeys.from_pem(_pem(settings.jwt_public_key), settings.auth_algorithms)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"JWT_PUBLIC_KEY: {exc}") from exc
    return None


def _pem(value: str) -> str:
    """JWT_PUBLIC_KEY is the PEM itself (an env file may write its newlines as \\n) or a path."""
    if value.startswith("-----BEGIN"):
        return value.replace("\\n", "\n")
    with open(value, encoding="ascii") as pem:
        return pem.read()


def build(
    settings: Settings, *, store: Store | None = None, assistant: Assistant | None = None
) -> Components:
    metrics = PrometheusMetrics()
    store = store or store_for(settings)
    assistant = assistant or _assistant(settings, metrics)
    redis = _redis(settings)
    coordination = on_redis(redis) if redis is not None else in_memory()
    hub = RoomHub(
        _broker(settings),
        settings.instance_id or new_instance_id(),
        history=StoredHistory(store),
    )
    rooms = hub
    sio = create_server(
        allowed_origins=settings.allowed_origins,
        ping_interval=settings.ping_interval,
        ping_timeout=settings.ping_timeout,
        max_http_buffer_size=settings.max_http_buffer_size,
    )
    outbox_stats = OutboxStats()  # both transports' outboxes
    bridge = EngineBridge(
        sio,
        outbox_limit=settings.outbox_max_bytes,
        compression=settings.ws_compression,
        max_message_bytes=settings.max_http_buffer_size,
        stats=outbox_stats,
    )
    knowledge, embedder = _knowledge(settings, store)
    replies = ReplyService(
        store,
        assistant,
        rooms,
        ReplyCoordination(
            coordination.locks,
            coordination.queue,
            coordination.buffer,
            coordination.stops,
            coordination.inflight,
        ),
        ReplySettings(
            system_prompt=settings.ai_system_prompt,
            context_messages=settings.ai_context_messages,
            lock_ttl_seconds=settings.ai_lock_ttl_seconds,
            enabled=settings.ai_replies,
            chunk_flush_seconds=settings.ai_chunk_flush_ms / 1000,
            resume=settings.ai_resume,
        ),
        metrics=metrics,
        knowledge=knowledge,
    )
    consultations = ConsultationService(
        store,
        replies,
        rooms,
        limits=Limits(
            max_message_chars=settings.max_message_chars,
            history_page_size=settings.history_page_size,
        ),
        rate_limiter=RateLimiter(
            coordination.rates,
            RatePolicy(settings.rate_limit_messages, settings.rate_limit_window_seconds),
        ),
        moderation=_moderation(settings),
        # Dev auth verifies nobody: guests share the default tenant's consultations.
        open_access=settings.dev_auth,
        metrics=metrics,
    )
    admission = Admission(
        coordination.registry,
        ConnectionPolicy(
            max_per_instance=settings.max_connections,
            max_per_user=settings.max_connections_per_user,
        ),
    )
    tokens = visitor_tokens(settings)
    widget_specs = settings.widget_key_specs
    auth = authenticator(settings, tokens)
    connections = ConnectionService(auth, admission, rooms)
    visitors = VisitorService(
        {key: WidgetKey(key, tenant, origins) for key, tenant, origins in widget_specs},
        tokens,
        coordination.rates,
        store,
        rooms,
        issue_per_minute=settings.visitor_issue_per_minute,
    )
    handoff = HandoffService(
        store,
        consultations,
        replies,
        rooms,
        (coordination.registry, coordination.locks),
        settings=HandoffSettings(
            max_active=settings.operator_max_active,
            wait_timeout_seconds=settings.operator_wait_timeout_seconds,
            grace_seconds=settings.operator_grace_seconds,
            open_access=settings.dev_auth,
        ),
        metrics=metrics,
    )
    presence = PresenceService(coordination.presence, rooms)
    tenants = TenantService(store)
    connections.bind(
        Services(
            consultations,
            handoff,
            presence,
            connections,
            metrics=metrics,
            log_content=settings.log_content,
            tenants=tenants,
        )
    )
    proxies = parse_networks(settings.trusted_proxies)
    sio.register_namespace(ChatNamespace(connections, hub, proxies))
    _admin_ui(sio, settings, hub.instance_id)
    raw = RawChatEndpoint(
        connections,
        hub,
        RawSettings(
            ping_interval=settings.ping_interval,
            idle_timeout=settings.ws_idle_timeout_seconds,
            auth_timeout=settings.ws_auth_timeout_seconds,
            compression=settings.ws_compression,
            outbox_max_bytes=settings.outbox_max_bytes,
        ),
        dev_auth=settings.dev_auth,
        allowed_origins=settings.allowed_origins,
        trusted_proxies=proxies,
        outbox_stats=outbox_stats,
    )
    components = Components(
        settings,
        store,
        assistant,
        coordination,
        auth,
        hub,
        sio,
        bridge,
        raw,
        outbox_stats,
        replies,
        consultations,
        connections,
        handoff,
        metrics,
        MetricsEndpoint(
            metrics.exposition,
            token=settings.metrics_token,
            public_without_token=settings.dev_auth,
        ),
        visitors,
        knowledge,
        tenants,
    )
    metrics.watch(_live_figures(components))
    if settings.metrics_port is not None:
        port = settings.metrics_port
        endpoint = components.metrics_endpoint

        async def start_metrics() -> None:
            await endpoint.listen(settings.metrics_host, port)

        components.resources.append(Resource("metrics listener", start_metrics, endpoint.close))
    components.probes["storage"] = lambda: _storage_probe(components, store)
    components.resources.append(_store_resource(components, store))
    if redis is not None:
        _distributed(components, redis)
    components.resources.append(Resource("fan-out", hub.start, hub.stop))

    async def start_connections() -> None:
        connections.start()

    components.resources.append(Resource("connections", start_connections, connections.stop))

    async def start_replies() -> None:
        replies.start()

    async def start_handoff() -> None:
        handoff.start()

    components.resources.append(Resource("handoff", start_handoff, handoff.stop))

    components.resources.append(Resource("replies", start_replies, replies.stop_reaper))
    components.resources += _model_clients(assistant, embedder)
    return components


def _distributed(components: Components, redis: RedisHandle) -> None:
    """With Redis: its probes, its client's lifecycle, and the heartbeat for cluster status."""
    hub = components.hub
    components.probes["coordination"] = lambda: _check(redis.ping())
    components.resources.append(Resource("redis", redis.start, redis.close))

    async def fanout_state() -> str:
        return hub.state()

    components.probes["fanout"] = fanout_state
    heartbeat: list[asyncio.Task[None]] = []

    async def start_heartbeat() -> None:
        heartbeat.append(asyncio.create_task(components.heartbeat()))

    async def stop_heartbeat() -> None:
        for task in heartbeat:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(AppError):
            await components.coordination.instances.forget(hub.instance_id)

    components.resources.append(Resource("heartbeat", start_heartbeat, stop_heartbeat))


def _admin_ui(sio: socketio.AsyncServer, settings: Settings, instance_id: str) -> None:
    """The official Admin UI (namespace /admin), when credentials are set: read-only, since
    rooms live in our hub, not in python-socketio's manager; "production" mode keeps its
    per-event cost off."""
    if settings.admin_ui_username and settings.admin_ui_password:
        sio.instrument(
            auth={"username": settings.admin_ui_username, "password": settings.admin_ui_password},
            mode="production",
            read_only=True,
            server_id=instance_id,
        )


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    assistant: Assistant | None = None,
    on_fatal: Callable[[], None] | None = None,
) -> web.Application:
    """The application; ``on_fatal`` ends the process when start-up cannot complete (a
    dependency unreachable past STARTUP_TIMEOUT_SECONDS): ``python -m server`` passes one."""
    components = build(settings, store=store, assistant=assistant)
    components.on_fatal = on_fatal
    visitor_routes = VisitorRoutes(
        components.visitors,
        components.authenticator,
        parse_networks(settings.trusted_proxies),
    )
    app = web.Application(
        middlewares=[cors_middleware(settings.allowed_origins, visitor_routes.cors_allowed)]
    )
    app[COMPONENTS] = components
    components.bridge.install(app)
    components.raw.install(app)
    Routes(
        components.consultations,
        components.authenticator,
        components.readiness,
        connections=lambda: components.connections.count,
        status=components.status,
        status_public=settings.status_is_public,
        handoff=components.handoff,
    ).install(app)
    components.metrics_endpoint.install(app)
    visitor_routes.install(app)
    KnowledgeRoutes(components.knowledge, components.authenticator).install(app)
    TenantRoutes(components.tenants, components.authenticator).install(app)
    Pages(client_script(settings), components.visitors.keys).install(app)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_drain)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    resources = app[COMPONENTS].resources
    started: list[Resource] = []
    try:
        for resource in resources:
            await resource.start()
            started.append(resource)
        yield
    finally:
        for resource in reversed(started):
            try:
                await resource.stop()
            except Exception:
                log.exception("could not stop %s", resource.name)


async def _drain(app: web.Application) -> None:
    """On shutdown, let replies in flight finish and reach the room (they are stored at the
    end), then disconnect every client so it reconnects elsewhere; open WebSockets would
    otherwise hold the shutdown for aiohttp's whole handler timeout."""
    parts = app[COMPONENTS]
    started = time.monotonic()
    replies = len(parts.replies.streaming_now)
    log.info(
        "draining %d connections (%d replies in flight, up to %g s)…",
        parts.connections.count,
        replies,
        SHUTDOWN_GRACE_SECONDS,
    )
    await parts.replies.wait_idle(SHUTDOWN_GRACE_SECONDS)
    await parts.raw.close_all()
    await parts.bridge.close_all()
    await parts.sio.shutdown()
    log.info("drained in %.1f s: clients reconnect elsewhere", time.monotonic() - started)


STORE_RETRY_MAX_SECONDS = 10.0


def _store_resource(parts: Components, store: Store) -> Resource:
    """The store starts before the server listens (its indexes exist before the first
    request); if it cannot be reached, the server listens anyway (/readyz says 503) and the
    store keeps being retried in the background."""
    connecting: list[asyncio.Task[None]] = []

    async def start() -> None:
        if not await _try_store(parts, store, delay=1.0):
            connecting.append(asyncio.ensure_future(_connect_store(parts, store)))

    async def stop() -> None:
        for task in connecting:
            task.cancel()
        await store.close()

    return Resource("store", start, stop)


async def _connect_store(parts: Components, store: Store) -> None:
    """Retry the store with backoff while it cannot be reached: one line per attempt naming
    what and why. With STARTUP_TIMEOUT_SECONDS, give up after it: one fatal line, and the
    process ends with exit code 1."""
    started = time.monotonic()
    delay = 1.0
    while True:
        await asyncio.sleep(delay)
        delay = min(delay * 2, STORE_RETRY_MAX_SECONDS)
        limit = parts.settings.startup_timeout_seconds
        if await _try_store(parts, store, delay=delay):
            log.info("storage: %s is reachable: ready", _store_name(parts.settings))
            return
        waited = time.monotonic() - started
        if limit is not None and waited + delay > limit:
            parts.fatal = f"storage: {_store_name(parts.settings)} still unreachable"
            log.error(
                "%s after %.0f s (%s); giving up (STARTUP_TIMEOUT_SECONDS=%g)",
                parts.fatal,
                waited,
                parts.store_failure,
                limit,
            )
            if parts.on_fatal is not None:
                parts.on_fatal()
            return


async def _storage_probe(parts: Components, store: Store) -> str:
    """Ready once the store has started (its indexes exist) and while it answers."""
    if not parts.store_started:
        return f"not started yet: {parts.store_failure or 'starting'}"
    return await _check(store.ping())


async def _try_store(parts: Components, store: Store, *, delay: float) -> bool:
    """One attempt; a failure is one line naming the store and the cause."""
    try:
        await store.start()
        parts.store_started = True
    except AppError as exc:
        parts.store_failure = exc.message
        log.warning(
            "storage: %s: %s; retrying in %g s", _store_name(parts.settings), exc.message, delay
        )
        return False
    return True


def _store_name(settings: Settings) -> str:
    if not settings.mongodb_url:
        return "the in-memory store"
    from .storage.mongo import describe_url

    return describe_url(settings.mongodb_url)


def client_script(settings: Settings) -> ClientScript:
    return ClientScript.choose(settings.socketio_client_url, settings.socketio_client_bundle)


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
        mode = "Redis Cluster, sharded pub/sub" if settings.redis_mode == "cluster" else "Redis"
        lines.append((logging.INFO, f"fan-out and coordination: {mode}, routed per room"))
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
        if settings.embeddings_model:
            lines.append(
                (logging.INFO, f"knowledge: BM25 and embeddings ({settings.embeddings_model})")
            )
    else:
        lines.append(
            (logging.WARNING, "assistant: OFFLINE (OPENAI_API_KEY not set): canned replies")
        )
    lines.append(_describe_auth(settings))
    lines.append(_describe_visitors(settings))
    lines.append(_describe_metrics(settings))
    lines.append((logging.INFO, client_script(settings).describe()))
    return lines


def _describe_auth(settings: Settings) -> tuple[int, str]:
    algorithms = ", ".join(settings.auth_algorithms)
    if settings.jwt_secret:
        return logging.INFO, f"auth: JWT, shared secret ({algorithms})"
    if settings.jwt_public_key:
        return logging.INFO, f"auth: JWT, public key ({algorithms})"
    if settings.jwt_jwks_url:
        return logging.INFO, f"auth: JWT, keys from {settings.jwt_jwks_url} ({algorithms})"
    if settings.auth_mode == "dev":
        return (
            logging.WARNING,
            f"auth: DEV AUTH (AUTH_MODE=dev) on {settings.host or 'every interface'}: anyone "
            "may connect as anyone, CORS is open. Never run this in production.",
        )
    return (
        logging.WARNING,
        "auth: DEV AUTH (no JWT_SECRET; loopback only): anyone on this machine may connect "
        "as a guest. Never run this in production.",
    )


def _describe_visitors(settings: Settings) -> tuple[int, str]:
    keys = settings.widget_key_specs
    if not keys:
        return logging.INFO, "widget: no WIDGET_KEYS, visitor tokens are not issued"
    named = ", ".join(
        f"{key} ({tenant}, {' '.join(origins) if origins else 'any site'})"
        for key, tenant, origins in keys
    )
    if settings.visitor_secret is None:
        return (
            logging.WARNING,
            f"widget: keys {named}; visitor tokens signed with a key made at start-up: they "
            "end with this process and work on this instance only (set VISITOR_TOKEN_SECRET)",
        )
    return logging.INFO, f"widget: keys {named}"


def _describe_metrics(settings: Settings) -> tuple[int, str]:
    where = []
    if settings.metrics_port is not None:
        where.append(f"http://{settings.metrics_host}:{settings.metrics_port}/metrics")
    if settings.metrics_token:
        where.append("/metrics on the public port with METRICS_TOKEN")
    elif settings.dev_auth:
        where.append("/metrics on the public port, open (dev auth)")
    if not where:
        return logging.INFO, "metrics: not served (set METRICS_TOKEN or METRICS_PORT)"
    return logging.INFO, "metrics: " + ", ".join(where)


async def _nothing() -> None:
    return None


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


def _redis(settings: Settings) -> RedisHandle | None:
    if not settings.redis_url:
        return None
    return RedisHandle(
        settings.redis_url,
        prefix=settings.redis_prefix,
        cluster=settings.redis_mode == "cluster",
    )


def _broker(settings: Settings) -> Broker:
    if not settings.redis_url:
        return MemoryBroker()
    return RedisBroker(
        settings.redis_url,
        prefix=settings.redis_prefix,
        cluster=settings.redis_mode == "cluster",
    )


def new_instance_id() -> str:
    """Unique among running instances: connection ids and status reports carry it."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def store_for(settings: Settings) -> Store:
    if settings.mongodb_url:
        from .storage.mongo import MongoStore

        return MongoStore(
            settings.mongodb_url,
            settings.mongodb_db,
            timeout_seconds=settings.mongodb_timeout_seconds,
        )
    return MemoryStore()


def _live_figures(parts: Components) -> Live:
    broker = parts.hub.broker
    return Live(
        gauges={
            "connections": ("Open connections (both transports)", lambda: parts.connections.count),
            "ai_replies_in_flight": (
                "Replies streaming on this instance",
                lambda: len(parts.replies.streaming_now),
            ),
            "fanout_subscriptions": (
                "Room channels subscribed",
                lambda: len(broker.subscriptions()),
            ),
        },
        counters={
            "connections_opened": ("Connections admitted", lambda: parts.connections.opened_total),
            "ai_replies_taken_over": (
                "Replies continued after their instance died",
                lambda: parts.replies.taken_over,
            ),
            "fanout_messages_published": (
                "Room messages published to the broker",
                lambda: broker.stats.messages_published,
            ),
            "fanout_messages_received": (
                "Room messages received from the broker",
                lambda: broker.stats.messages_received,
            ),
            "fanout_publish_failures": (
                "Publishes that failed (kept in the outbox, or filled from the store)",
                lambda: broker.stats.publish_failures,
            ),
            "fanout_reconnects": (
                "Reconnections of the broker's listeners",
                lambda: broker.stats.reconnects,
            ),
            "slow_consumer_disconnects": (
                "Connections closed because frames waiting for them passed OUTBOX_MAX_BYTES",
                lambda: parts.outbox_stats.slow_consumers,
            ),
            "fanout_gaps_filled": (
                "Messages read from the store to fill a gap in a room's seq order",
                lambda: parts.hub.gaps_filled,
            ),
        },
    )


def _knowledge(settings: Settings, store: Store) -> tuple[KnowledgeService, OpenAIEmbedder | None]:
    embedder = _embedder(settings)
    service = KnowledgeService(
        store,
        Bm25Ranker(),
        KnowledgeSettings(top_k=settings.knowledge_top_k, max_chars=settings.knowledge_max_chars),
        embedder=embedder,
        vector_indexer=UnitVectorIndexer() if embedder is not None else None,
    )
    return service, embedder


def _model_clients(assistant: Assistant, embedder: OpenAIEmbedder | None) -> list[Resource]:
    """The model API clients, closed at shutdown."""
    clients = [Resource("assistant", _nothing, assistant.close)]
    if embedder is not None:
        clients.append(Resource("embeddings", _nothing, embedder.close))
    return clients


def _embedder(settings: Settings) -> OpenAIEmbedder | None:
    if not settings.embeddings_model or not settings.openai_api_key:
        return None
    client = make_client(
        settings.openai_api_key, settings.openai_base_url, settings.ai_timeout_seconds
    )
    return OpenAIEmbedder(client, settings.embeddings_model)


def _assistant(settings: Settings, metrics: ReplyMetrics) -> Assistant:
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
    return FallbackAssistant(chain, close=client.close, metrics=metrics)
