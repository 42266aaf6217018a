"""Identity from a JWT (or, without a secret, dev-auth guests)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import jwt

from ..domain.models import Identity, Role, valid_user_id
from ..errors import Unauthorized

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Authenticator:
    secret: str | None = field(repr=False)
    algorithms: tuple[str, ...] = ("HS256",)
    audience: str | None = None
    issuer: str | None = None

    @property
    def dev_auth(self) -> bool:
        return not self.secret

    def identify(self, token: str | None, *, dev: Mapping[str, Any] | None = None) -> Identity:
        """Verify ``token``. Without a secret (dev auth) there is nothing to verify: the
        client may choose who it is (``dev``: userId, name, role), or is a guest."""
        if not token:
            if self.dev_auth:
                return dev_identity(dev)
            raise Unauthorized("A token is required")
        if self.dev_auth:
            # Without a secret nothing can be verified: trusting an unverified token would let
            # anyone claim any identity, so tokens are refused rather than believed.
            raise Unauthorized("This server runs dev auth (no JWT_SECRET): connect without a token")
        return self._verify(token)

    def _verify(self, token: str) -> Identity:
        assert self.secret is not None
        try:
            claims = jwt.decode(
                token,
                self.secret,
                # Never "none": PyJWT refuses it unless listed, and it is never listed here.
                algorithms=[a for a in self.algorithms if a.lower() != "none"],
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
        if not self.secret:
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
        return jwt.encode(claims, self.secret, algorithm=self.algorithms[0])


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
