"""Settings: the only place that reads the environment.

Every setting is a field of :class:`Settings`; its environment variable is the field name in
upper case (``ai_models`` ← ``AI_MODELS``). An empty variable counts as unset. An unusable value
is a :class:`ConfigError` naming the variable, and ``python -m server`` exits with code 2.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self

from pydantic import AliasGenerator, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticUseDefault
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_SYSTEM_PROMPT = (
    "You are a careful, friendly consultation assistant. Answer the user's questions clearly "
    "and briefly, ask for missing details when they matter, and never present yourself as a "
    "substitute for a qualified professional: when symptoms or situations sound urgent, advise "
    "the user to contact emergency services or a qualified professional right away."
)
# Where scripts/serve and the Docker image install socket.io-client's browser bundle (npm).
DEFAULT_SOCKETIO_CLIENT_BUNDLE = (
    ".cache/socket.io-client/node_modules/socket.io-client/dist/socket.io.min.js"
)

# Comma-separated on the environment (``AI_MODELS=a,b``), a tuple in Python.
Items = Annotated[tuple[str, ...], NoDecode]
Seconds = Annotated[float, Field(ge=0.001)]
Count = Annotated[int, Field(ge=1)]


class ConfigError(ValueError):
    """An environment variable has a value the server cannot use."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        frozen=True,
        case_sensitive=True,
        env_ignore_empty=True,
        extra="ignore",
        str_strip_whitespace=True,
        validate_by_name=True,
        validate_by_alias=True,
        alias_generator=AliasGenerator(validation_alias=str.upper),
    )

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0)] = 8080
    instance_id: str | None = None
    mongodb_url: str | None = Field(default=None, repr=False)
    mongodb_db: str = "consultations"
    mongodb_timeout_seconds: Seconds = 5.0
    redis_url: str | None = Field(default=None, repr=False)
    redis_prefix: str = "consultations"
    redis_mode: Literal["single", "cluster"] = "single"
    jwt_secret: str | None = Field(default=None, repr=False)
    jwt_algorithms: Items = ("HS256",)
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    openai_api_key: str | None = Field(default=None, repr=False)
    openai_base_url: str | None = None
    ai_models: Items = ("gpt-4o-mini",)
    ai_replies: bool = True
    ai_resume: bool = True
    ai_system_prompt: str = DEFAULT_SYSTEM_PROMPT
    ai_context_messages: Count = 10
    ai_timeout_seconds: Seconds = 60.0
    ai_first_token_timeout_seconds: Seconds = 20.0
    ai_lock_ttl_seconds: Seconds = 15.0
    ai_chunk_flush_ms: Annotated[int, Field(ge=0)] = 40
    offline_word_delay_seconds: Annotated[float, Field(ge=0)] = 0.04
    cors_origins: Items | None = None
    trusted_proxies: Items = ()
    max_message_chars: Count = 8000
    rate_limit_messages: Count = 20
    rate_limit_window_seconds: Seconds = 60.0
    max_connections: Count = 10_000
    max_connections_per_user: Count = 20
    operator_max_active: Count = 5
    operator_wait_timeout_seconds: Seconds = 300.0
    operator_grace_seconds: Seconds = 60.0
    moderation_blocklist_file: str | None = None
    history_page_size: Count = 50
    socketio_client_url: str | None = None
    socketio_client_bundle: str = DEFAULT_SOCKETIO_CLIENT_BUNDLE
    status_public: bool | None = None
    ping_interval: Seconds = 25.0
    ping_timeout: Seconds = 20.0
    max_http_buffer_size: Annotated[int, Field(ge=1024)] = 1_000_000
    ws_compression: bool = False
    # Bytes that may wait for one connection that does not read fast enough: past this it is
    # a slow consumer and is closed (it reconnects and catches up from the store).
    outbox_max_bytes: Annotated[int, Field(ge=16 * 1024)] = 1024 * 1024
    ws_idle_timeout_seconds: Seconds = 300.0
    ws_auth_timeout_seconds: Seconds = 10.0
    gc_tuning: bool = True
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    log_content: bool = False
    admin_ui_username: str | None = None
    admin_ui_password: str | None = Field(default=None, repr=False)

    @model_validator(mode="before")
    @classmethod
    def _blank_is_unset(cls, data: Any) -> Any:
        """A variable set to blanks counts as unset, as an empty one does."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (isinstance(v, str) and not v.strip())}
        return data

    @field_validator(
        "jwt_algorithms", "ai_models", "cors_origins", "trusted_proxies", mode="before"
    )
    @classmethod
    def _split_items(cls, value: Any) -> Any:
        if isinstance(value, str):
            items = tuple(item.strip() for item in value.split(",") if item.strip())
            if not items:
                raise PydanticUseDefault()  # "a,,b" is a list; " , " names nothing
            return items
        return value

    @field_validator("trusted_proxies", mode="after")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network") from None
        return value

    @field_validator("log_level", mode="after")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    @model_validator(mode="after")
    def _admin_ui_pair(self) -> Self:
        if bool(self.admin_ui_username) != bool(self.admin_ui_password):
            raise ValueError("ADMIN_UI_USERNAME and ADMIN_UI_PASSWORD must be set together")
        return self

    @property
    def dev_auth(self) -> bool:
        return not self.jwt_secret

    @property
    def status_is_public(self) -> bool:
        """``/ws/status`` without a token: by default only in dev auth."""
        return self.dev_auth if self.status_public is None else self.status_public

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
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        """Read the settings from the process environment (pydantic-settings' own source), or
        from ``env`` when given (tests, tools)."""
        try:
            if env is None:
                return cls()
            return cls.model_validate(env)
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None

    @classmethod
    def env_names(cls) -> list[str]:
        """Every environment variable the server reads, in declaration order."""
        return [name.upper() for name in cls.model_fields]


def _describe(exc: ValidationError) -> str:
    """``PORT must be an integer, got 'eighty'`` — the variable first, in plain words."""
    first = exc.errors(include_url=False)[0]
    name = str(first["loc"][0]) if first["loc"] else "settings"
    got = first.get("input")
    kind = first["type"]
    context = first.get("ctx") or {}
    if kind == "int_parsing":
        return f"{name} must be an integer, got {got!r}"
    if kind == "float_parsing":
        return f"{name} must be a number, got {got!r}"
    if kind == "bool_parsing":
        return f"{name} must be true or false, got {got!r}"
    if kind in {"greater_than_equal", "greater_than"}:
        bound = context.get("ge", context.get("gt"))
        return f"{name} must be >= {bound}, got {got}"
    if kind == "literal_error":
        return f"{name} must be one of {context.get('expected')}, got {got!r}"
    return f"{name}: {first['msg'].removeprefix('Value error, ')}"
