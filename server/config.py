"""Settings: the only place that reads the environment.

Every setting is a field of :class:`Settings`; its environment variable is the field name in
upper case (``ai_models`` ← ``AI_MODELS``). An empty variable counts as unset. An unusable value
is a :class:`ConfigError` naming the variable, and ``python -m server`` exits with code 2.
"""

from __future__ import annotations

import ipaddress
import re
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


# HMAC keys at least as long as the hash (RFC 7518, 3.2).
HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
ASYMMETRIC = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
ASYMMETRIC_DEFAULT = ("RS256", "ES256")
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name, or empty (every interface): assume reachable


def _check_algorithms(settings: Settings) -> None:
    """Algorithms fit the key: never "none", never HMAC beside a public key (a public key used
    as an HMAC secret would let anyone sign), and a secret long enough for its hash."""
    algorithms = settings.auth_algorithms
    unknown = [a for a in algorithms if a not in HMAC_MIN_BYTES and a not in ASYMMETRIC]
    if unknown:
        known = sorted(HMAC_MIN_BYTES) + sorted(ASYMMETRIC)
        raise ValueError(f"JWT_ALGORITHMS: {', '.join(unknown)} is not one of {known}")
    hmac = [a for a in algorithms if a in HMAC_MIN_BYTES]
    if settings.jwt_secret is None:
        if hmac and settings.jwt_key_sources:
            raise ValueError(
                f"JWT_ALGORITHMS: {', '.join(hmac)} needs JWT_SECRET, not a public key"
            )
        return
    if len(hmac) != len(algorithms):
        raise ValueError("JWT_ALGORITHMS: with JWT_SECRET only HS256, HS384 and HS512 apply")
    needed = max(HMAC_MIN_BYTES[a] for a in hmac)
    length = len(settings.jwt_secret.encode())
    if length < needed:
        raise ValueError(
            f"JWT_SECRET is {length} bytes; {'/'.join(hmac)} needs at least {needed} "
            "(make one: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
        )


WIDGET_KEY = re.compile(r"[A-Za-z0-9_-]{1,128}")


def parse_widget_key(item: str) -> tuple[str, str, tuple[str, ...]]:
    """``key:tenant[:https://a.example|https://b.example]`` → (key, tenant, origins)."""
    key, _, rest = item.partition(":")
    tenant, _, listed = rest.partition(":")
    key, tenant = key.strip(), tenant.strip()
    if not WIDGET_KEY.fullmatch(key) or not tenant:
        raise ValueError(f"{item!r} is not key:tenant[:origin|origin] (key: letters, digits, _ -)")
    origins = tuple(origin.strip().rstrip("/") for origin in listed.split("|") if origin.strip())
    for origin in origins:
        scheme, _, host = origin.partition("://")
        if scheme not in ("http", "https") or not host or "/" in host:
            raise ValueError(f"{origin!r} in {item!r} is not an origin like https://site.example")
    return key, tenant, origins


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
    # Unset: wait for MongoDB as long as it takes (/readyz says 503 meanwhile).
    startup_timeout_seconds: Seconds | None = None
    redis_url: str | None = Field(default=None, repr=False)
    redis_prefix: str = "consultations"
    redis_mode: Literal["single", "cluster"] = "single"
    # "jwt" whenever a key is configured; "dev" (anyone may choose who they are) only on a
    # loopback bind, or anywhere when set explicitly. See _auth().
    auth_mode: Literal["jwt", "dev"] | None = None
    jwt_secret: str | None = Field(default=None, repr=False)
    # PEM text (newlines may be written as \n) or the path of a PEM file.
    jwt_public_key: str | None = None
    jwt_jwks_url: str | None = None
    jwt_jwks_cache_seconds: Seconds = 300.0
    # An unknown kid refetches the key set at most this often (a flood of made-up kids must
    # not become a flood of requests to the identity provider).
    jwt_jwks_refresh_cooldown_seconds: Annotated[float, Field(ge=0)] = 30.0
    jwt_algorithms: Items | None = None  # HS256 with a secret, RS256,ES256 with public keys
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
    # /metrics: with a token, only "Authorization: Bearer <token>" may read it; without one it
    # is not on the public port in JWT mode. METRICS_PORT adds a listener on METRICS_HOST.
    metrics_token: str | None = Field(default=None, repr=False)
    metrics_port: Annotated[int, Field(ge=0, le=65535)] | None = None
    metrics_host: str = "127.0.0.1"
    # key:tenant[:https://site.example|https://other.example], comma separated: public keys
    # of the website widget, each naming its tenant and the sites that may embed it.
    widget_keys: Items = ()
    # Signs visitor tokens: JWT_SECRET by default; needed with JWT_PUBLIC_KEY/JWT_JWKS_URL.
    visitor_token_secret: str | None = Field(default=None, repr=False)
    visitor_token_ttl_seconds: Seconds = 30 * 24 * 3600.0
    visitor_issue_per_minute: Count = 10
    # The knowledge base: passages given to the model per question, and an article's size.
    knowledge_top_k: Count = 3
    knowledge_max_chars: Count = 200_000
    # An embeddings model of the OpenAI-compatible API (OPENAI_API_KEY, OPENAI_BASE_URL): its
    # similarities are blended with BM25, so a question finds passages in other words.
    embeddings_model: str | None = None
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
        "jwt_algorithms",
        "ai_models",
        "cors_origins",
        "trusted_proxies",
        "widget_keys",
        mode="before",
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

    @field_validator("widget_keys", mode="after")
    @classmethod
    def _widget_keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        seen: set[str] = set()
        for item in value:
            key, _, _ = parse_widget_key(item)
            if key in seen:
                raise ValueError(f"the key {key!r} is listed twice")
            seen.add(key)
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

    @model_validator(mode="after")
    def _auth(self) -> Self:
        """Fail closed: a server nobody can reach from elsewhere may run dev auth by default;
        one on a public address needs JWT configuration or an explicit AUTH_MODE=dev."""
        sources = self.jwt_key_sources
        if len(sources) > 1:
            raise ValueError(f"set only one of {', '.join(sources)}")
        if self.auth_mode == "dev" and sources:
            raise ValueError(f"AUTH_MODE=dev contradicts {sources[0]}: unset one of them")
        if self.auth_mode == "jwt" and not sources:
            raise ValueError("AUTH_MODE=jwt needs JWT_SECRET, JWT_PUBLIC_KEY or JWT_JWKS_URL")
        if not sources and self.auth_mode is None and not is_loopback(self.host):
            raise ValueError(
                f"HOST={self.host or '(all interfaces)'} is not a loopback address and no JWT "
                "is configured: set JWT_SECRET (or JWT_PUBLIC_KEY / JWT_JWKS_URL), or set "
                "AUTH_MODE=dev to run dev auth there knowingly (anyone may connect as anyone)"
            )
        _check_algorithms(self)
        self._check_visitor_secret()
        return self

    def _check_visitor_secret(self) -> None:
        secret = self.visitor_token_secret
        if secret is not None and len(secret.encode()) < HMAC_MIN_BYTES["HS256"]:
            raise ValueError(
                f"VISITOR_TOKEN_SECRET is {len(secret.encode())} bytes; at least 32 are needed "
                "(make one: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )
        if self.widget_keys and not self.dev_auth and self.visitor_secret is None:
            raise ValueError(
                "WIDGET_KEYS needs VISITOR_TOKEN_SECRET to sign visitor tokens: this server "
                "cannot sign with JWT_PUBLIC_KEY or JWT_JWKS_URL"
            )

    @property
    def visitor_secret(self) -> str | None:
        """What signs visitor tokens: VISITOR_TOKEN_SECRET, else an HS256 JWT_SECRET (None:
        dev auth makes one at start-up, which lasts as long as the process)."""
        if self.visitor_token_secret is not None:
            return self.visitor_token_secret
        if self.jwt_secret is not None and "HS256" in self.auth_algorithms:
            return self.jwt_secret
        return None

    @property
    def widget_key_specs(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """(key, tenant, allowed origins) of each WIDGET_KEYS item; in dev auth without any,
        the key ``dev`` for the default tenant on any site."""
        if not self.widget_keys and self.dev_auth:
            return [("dev", "default", ())]
        return [parse_widget_key(item) for item in self.widget_keys]

    @property
    def jwt_key_sources(self) -> list[str]:
        """The JWT key settings that are set, by their variable names."""
        named = {
            "JWT_SECRET": self.jwt_secret,
            "JWT_PUBLIC_KEY": self.jwt_public_key,
            "JWT_JWKS_URL": self.jwt_jwks_url,
        }
        return [name for name, value in named.items() if value]

    @property
    def dev_auth(self) -> bool:
        return not self.jwt_key_sources

    @property
    def auth_algorithms(self) -> tuple[str, ...]:
        """JWT_ALGORITHMS, or the usual ones for the kind of key configured."""
        if self.jwt_algorithms is not None:
            return self.jwt_algorithms
        return ("HS256",) if self.jwt_secret else ASYMMETRIC_DEFAULT

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
    message = first["msg"].removeprefix("Value error, ")
    return f"{name}: {message}" if first["loc"] else message
