"""Identity from a JWT (a shared secret, a public key or an identity provider's JWKS), or, in
dev auth, the identity the client chose."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import parse_qs

import jwt

from ..domain.models import Identity, Role, valid_user_id
from ..domain.visitors import IssuedToken
from ..errors import AuthUnavailable, Unauthorized

log = logging.getLogger(__name__)


class KeySource(Protocol):
    """Where the key that verifies a token comes from."""

    async def key_for(self, token: str, algorithm: str) -> Any: ...


@dataclass(frozen=True)
class SharedSecret:
    """HS256/384/512: one secret signs and verifies."""

    secret: str = field(repr=False)

    async def key_for(self, token: str, algorithm: str) -> Any:
        return self.secret


@dataclass(frozen=True)
class PublicKeys:
    """``JWT_PUBLIC_KEY``: a PEM public key, prepared once for each algorithm it fits."""

    by_algorithm: Mapping[str, Any]

    @classmethod
    def from_pem(cls, pem: str, algorithms: tuple[str, ...]) -> PublicKeys:
        prepared: dict[str, Any] = {}
        for name in algorithms:
            with contextlib.suppress(ValueError, TypeError, jwt.InvalidKeyError):
                prepared[name] = jwt.get_algorithm_by_name(name).prepare_key(pem)
        if not prepared:
            raise ValueError(f"not a PEM public key for {', '.join(algorithms)}")
        return cls(prepared)

    async def key_for(self, token: str, algorithm: str) -> Any:
        key = self.by_algorithm.get(algorithm)
        if key is None:
            raise Unauthorized(f"The token's algorithm {algorithm} does not fit the key")
        return key


class JwksKeys:
    """``JWT_JWKS_URL``: the identity provider's key set, fetched by PyJWT's ``PyJWKClient``
    (cached; refetched for a ``kid`` it does not know, at most once per cooldown)."""

    def __init__(self, url: str, *, cache_seconds: float, cooldown_seconds: float) -> None:
        self.url = url
        self._client = jwt.PyJWKClient(
            url, lifespan=cache_seconds, cooldown_duration=cooldown_seconds, timeout=5
        )

    async def key_for(self, token: str, algorithm: str) -> Any:
        # PyJWKClient fetches with urllib, which blocks: keep it off the event loop.
        try:
            found = await asyncio.to_thread(self._client.get_signing_key_from_jwt, token)
        except jwt.PyJWKClientConnectionError as exc:
            log.warning("the JWKS at %s could not be fetched: %s", self.url, exc)
            raise AuthUnavailable() from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"The token's signing key is not known: {exc}") from exc
        return found.key


VISITOR_KID = "visitor"  # the header of the tokens this server signs for visitors
VISITOR_ISSUER = "consultation-server:visitors"


@dataclass(frozen=True)
class VisitorTokens:
    """Visitor tokens, signed by this server (HS256) with ``secret``: JWT_SECRET, or
    VISITOR_TOKEN_SECRET when the users' tokens come from an identity provider. Their header
    says ``kid: visitor``, and only a ``visitor`` role is accepted in them, so the key can
    never mint a user, an operator or an admin."""

    secret: str = field(repr=False)
    ttl: timedelta = timedelta(days=30)

    def issue_visitor(self, visitor_id: str, tenant_id: str) -> IssuedToken:
        now = datetime.now(UTC).replace(microsecond=0)
        expires_at = now + self.ttl
        claims = {
            "sub": visitor_id,
            "tenant": tenant_id,
            "role": Role.VISITOR.value,
            "iss": VISITOR_ISSUER,
            "iat": now,
            "exp": expires_at,
        }
        token = jwt.encode(claims, self.secret, algorithm="HS256", headers={"kid": VISITOR_KID})
        return IssuedToken(token, expires_at)

    def verify(self, token: str) -> Identity:
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=["HS256"],
                issuer=VISITOR_ISSUER,
                options={"require": ["sub", "exp", "iss"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("The token has expired", reason="expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"The token is not valid: {exc}") from exc
        identity = _identity(claims)
        if identity.role is not Role.VISITOR:
            raise Unauthorized("A visitor token must have the visitor role")
        return identity


@dataclass(frozen=True)
class Authenticator:
    """Verifies tokens with ``keys``; without keys it is dev auth (nothing to verify).
    Visitor tokens (``kid: visitor``) are verified with ``visitors``, in either mode."""

    keys: KeySource | None
    algorithms: tuple[str, ...] = ("HS256",)
    audience: str | None = None
    issuer: str | None = None
    visitors: VisitorTokens | None = None

    @classmethod
    def with_secret(cls, secret: str | None, **options: Any) -> Authenticator:
        return cls(SharedSecret(secret) if secret else None, **options)

    @property
    def dev_auth(self) -> bool:
        return self.keys is None

    async def identify(
        self, token: str | None, *, dev: Mapping[str, Any] | None = None
    ) -> Identity:
        """Verify ``token``. In dev auth there is nothing to verify: the client may choose who
        it is (``dev``: userId, name, role), or is a guest."""
        if not token:
            if self.keys is None:
                return dev_identity(dev)
            raise Unauthorized("A token is required")
        if self.visitors is not None and _key_id(token) == VISITOR_KID:
            return self.visitors.verify(token)
        if self.keys is None:
            # Without a key nothing can be verified: trusting an unverified token would let
            # anyone claim any identity, so tokens are refused rather than believed.
            raise Unauthorized("This server runs dev auth (no JWT key): connect without a token")
        return await self._verify(self.keys, token)

    async def _verify(self, keys: KeySource, token: str) -> Identity:
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"The token is not valid: {exc}") from exc
        # Never "none" (config refuses it) nor an algorithm this server was not told to accept:
        # checked before any key is looked up, so a forged header costs no JWKS request.
        if algorithm not in self.algorithms:
            raise Unauthorized(f"The token's algorithm must be one of {list(self.algorithms)}")
        key = await keys.key_for(token, algorithm)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["sub", "exp"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("The token has expired", reason="expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"The token is not valid: {exc}") from exc
        return _identity(claims)

    def issue(
        self,
        sub: str,
        *,
        tenant: str = "default",
        role: Role = Role.USER,
        name: str | None = None,
        ttl: timedelta = timedelta(hours=1),
    ) -> str:
        if not isinstance(self.keys, SharedSecret):
            raise ValueError("JWT_SECRET is not set: there is no key to sign tokens with")
        now = datetime.now(UTC)
        claims: dict[str, Any] = {
            "sub": sub,
            "tenant": tenant,
            "role": role.value,
            "iat": now,
            "exp": now + ttl,
        }
        if name:
            claims["name"] = name
        if self.audience:
            claims["aud"] = self.audience
        if self.issuer:
            claims["iss"] = self.issuer
        return jwt.encode(claims, self.keys.secret, algorithm=self.algorithms[0])


def _key_id(token: str) -> str | None:
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError:
        return None  # verified (and refused) by the main path
    return kid if isinstance(kid, str) else None


def _identity(claims: Mapping[str, Any]) -> Identity:
    sub, tenant, role, name = (
        claims.get("sub"),
        claims.get("tenant", "default"),
        claims.get("role", "user"),
        claims.get("name"),
    )
    if not isinstance(sub, str) or not sub:
        raise Unauthorized("The token's sub claim must be a non-empty string")
    if not isinstance(tenant, str) or not tenant:
        raise Unauthorized("The token's tenant claim must be a non-empty string")
    try:
        parsed_role = Role(role)
    except ValueError as exc:
        raise Unauthorized(f"The token's role must be one of {[r.value for r in Role]}") from exc
    return Identity(
        user_id=sub,
        tenant_id=tenant,
        role=parsed_role,
        name=name if isinstance(name, str) else None,
        expires_at=datetime.fromtimestamp(claims["exp"], UTC),
    )


def dev_identity(claims: Mapping[str, Any] | None) -> Identity:
    """A dev-auth identity as the client chose it, or a fresh guest."""
    claims = claims or {}
    user_id = claims.get("userId")
    if not valid_user_id(user_id):
        return Identity(user_id=f"guest-{secrets.token_hex(6)}", guest=True)
    role = claims.get("role", Role.USER.value)
    name = claims.get("name")
    return Identity(
        user_id=str(user_id),
        role=Role(role) if role in {r.value for r in Role} else Role.USER,
        name=name[:128] if isinstance(name, str) and name.strip() else None,
    )


def token_from_handshake(environ: Mapping[str, Any], auth: Any) -> str | None:
    """The token from the Socket.IO ``auth`` payload, the Authorization header or ``?token=``."""
    if isinstance(auth, Mapping):
        token = auth.get("token")
        if isinstance(token, str) and token:
            return token
    bearer = bearer_token(environ.get("HTTP_AUTHORIZATION"))
    if bearer:
        return bearer
    query = parse_qs(str(environ.get("QUERY_STRING", "")))
    values = query.get("token")
    return values[0] if values and values[0] else None


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None
