"""Settings: the only place that reads the environment."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_SYSTEM_PROMPT = (
    "You are a careful, friendly consultation assistant. Answer the user's questions clearly "
    "and briefly, ask for missing details when they matter, and never present yourself as a "
    "substitute for a qualified professional: when symptoms or situations sound urgent, advise "
    "the user to contact emergency services or a qualified professional right away."
)
DEFAULT_SOCKETIO_CLIENT_URL = "https://cdn.socket.io/4.8.1/socket.io.min.js"


class ConfigError(ValueError):
    """An environment variable has a value the server cannot use."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    mongodb_url: str | None = field(default=None, repr=False)
    mongodb_db: str = "consultations"
    mongodb_timeout_seconds: float = 5.0
    redis_url: str | None = field(default=None, repr=False)
    redis_prefix: str = "consultations"
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    openai_api_key: str | None = field(default=None, repr=False)
    openai_base_url: str | None = None
    ai_models: tuple[str, ...] = ("gpt-4o-mini",)
    ai_replies: bool = True
    ai_system_prompt: str = DEFAULT_SYSTEM_PROMPT
    ai_context_messages: int = 10
    ai_timeout_seconds: float = 60.0
    ai_first_token_timeout_seconds: float = 20.0
    ai_lock_ttl_seconds: float = 15.0
    ai_chunk_flush_ms: int = 40
    offline_word_delay_seconds: float = 0.04
    cors_origins: tuple[str, ...] | None = None
    trusted_proxies: tuple[str, ...] = ()
    max_message_chars: int = 8000
    rate_limit_messages: int = 20
    rate_limit_window_seconds: float = 60.0
    max_connections: int = 10_000
    max_connections_per_user: int = 20
    moderation_blocklist_file: str | None = None
    history_page_size: int = 50
    socketio_client_url: str = DEFAULT_SOCKETIO_CLIENT_URL
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    max_http_buffer_size: int = 1_000_000
    ws_compression: bool = False
    gc_tuning: bool = True
    log_level: str = "INFO"

    @property
    def dev_auth(self) -> bool:
        return not self.jwt_secret

    @property
    def allowed_origins(self) -> list[str] | str | None:
        """Origins for Socket.IO and REST: ``*`` in dev auth, else the list, else same-origin.

        ``None`` means same-origin only in python-socketio; an empty list would refuse every
        request that carries an Origin header, even from the server's own page.
        """
        if self.cors_origins is not None:
            return "*" if self.cors_origins == ("*",) else list(self.cors_origins)
        return "*" if self.dev_auth else None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        source = os.environ if env is None else env
        read = _Reader(source)
        defaults = cls()
        return cls(
            host=read.text("HOST", defaults.host),
            port=read.integer("PORT", defaults.port, minimum=0),
            mongodb_url=read.optional("MONGODB_URL"),
            mongodb_db=read.text("MONGODB_DB", defaults.mongodb_db),
            mongodb_timeout_seconds=read.number(
                "MONGODB_TIMEOUT_SECONDS", defaults.mongodb_timeout_seconds
            ),
            redis_url=read.optional("REDIS_URL"),
            redis_prefix=read.text("REDIS_PREFIX", defaults.redis_prefix),
            jwt_secret=read.optional("JWT_SECRET"),
            jwt_algorithms=read.items("JWT_ALGORITHMS") or defaults.jwt_algorithms,
            jwt_audience=read.optional("JWT_AUDIENCE"),
            jwt_issuer=read.optional("JWT_ISSUER"),
            openai_api_key=read.optional("OPENAI_API_KEY"),
            openai_base_url=read.optional("OPENAI_BASE_URL"),
            ai_models=read.items("AI_MODELS") or defaults.ai_models,
            ai_replies=read.flag("AI_REPLIES", defaults.ai_replies),
            ai_system_prompt=read.text("AI_SYSTEM_PROMPT", defaults.ai_system_prompt),
            ai_context_messages=read.integer(
                "AI_CONTEXT_MESSAGES", defaults.ai_context_messages, minimum=1
            ),
            ai_timeout_seconds=read.number("AI_TIMEOUT_SECONDS", defaults.ai_timeout_seconds),
            ai_first_token_timeout_seconds=read.number(
                "AI_FIRST_TOKEN_TIMEOUT_SECONDS", defaults.ai_first_token_timeout_seconds
            ),
            ai_lock_ttl_seconds=read.number("AI_LOCK_TTL_SECONDS", defaults.ai_lock_ttl_seconds),
            ai_chunk_flush_ms=read.integer(
                "AI_CHUNK_FLUSH_MS", defaults.ai_chunk_flush_ms, minimum=0
            ),
            offline_word_delay_seconds=read.number(
                "OFFLINE_WORD_DELAY_SECONDS", defaults.offline_word_delay_seconds, minimum=0.0
            ),
            cors_origins=read.items("CORS_ORIGINS"),
            trusted_proxies=read.networks("TRUSTED_PROXIES"),
            max_message_chars=read.integer(
                "MAX_MESSAGE_CHARS", defaults.max_message_chars, minimum=1
            ),
            rate_limit_messages=read.integer(
                "RATE_LIMIT_MESSAGES", defaults.rate_limit_messages, minimum=1
            ),
            rate_limit_window_seconds=read.number(
                "RATE_LIMIT_WINDOW_SECONDS", defaults.rate_limit_window_seconds
            ),
            max_connections=read.integer("MAX_CONNECTIONS", defaults.max_connections, minimum=1),
            max_connections_per_user=read.integer(
                "MAX_CONNECTIONS_PER_USER", defaults.max_connections_per_user, minimum=1
            ),
            moderation_blocklist_file=read.optional("MODERATION_BLOCKLIST_FILE"),
            socketio_client_url=read.text("SOCKETIO_CLIENT_URL", defaults.socketio_client_url),
            ping_interval=read.number("PING_INTERVAL", defaults.ping_interval),
            ping_timeout=read.number("PING_TIMEOUT", defaults.ping_timeout),
            max_http_buffer_size=read.integer(
                "MAX_HTTP_BUFFER_SIZE", defaults.max_http_buffer_size, minimum=1024
            ),
            ws_compression=read.flag("WS_COMPRESSION", defaults.ws_compression),
            gc_tuning=read.flag("GC_TUNING", defaults.gc_tuning),
            log_level=read.text("LOG_LEVEL", defaults.log_level).upper(),
        )


class _Reader:
    """Typed access to environment variables; an unusable value is a :class:`ConfigError`."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def optional(self, name: str) -> str | None:
        value = self._env.get(name, "").strip()
        return value or None

    def text(self, name: str, default: str) -> str:
        return self.optional(name) or default

    def integer(self, name: str, default: int, *, minimum: int = 1) -> int:
        raw = self.optional(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError as exc:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc
        if value < minimum:
            raise ConfigError(f"{name} must be >= {minimum}, got {value}")
        return value

    def number(self, name: str, default: float, *, minimum: float = 0.001) -> float:
        raw = self.optional(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError as exc:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from exc
        if value < minimum:
            raise ConfigError(f"{name} must be >= {minimum}, got {value}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self.optional(name)
        if raw is None:
            return default
        if raw.lower() in {"1", "true", "yes", "on"}:
            return True
        if raw.lower() in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}")

    def networks(self, name: str) -> tuple[str, ...]:
        items = self.items(name) or ()
        for item in items:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ConfigError(f"{name}: {item!r} is not an IP address or network") from exc
        return items

    def items(self, name: str) -> tuple[str, ...] | None:
        raw = self.optional(name)
        if raw is None:
            return None
        items = tuple(item.strip() for item in raw.split(",") if item.strip())
        return items or None
