"""Anonymous visitors from a website: a public widget key says which tenant they belong to;
the server gives each one a signed visitor token; signing in moves their consultations to the
user they turn out to be."""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from ..errors import Forbidden, RateLimited
from .events import ConsultationUpdated
from .models import Identity, Role
from .ports import Ownership, RateLimits, Rooms

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WidgetKey:
    """``key:tenant[:https://a.example|https://b.example]``: a public key, not a secret. No
    origins: any site may embed it."""

    key: str
    tenant_id: str
    origins: tuple[str, ...] = ()

    def allows(self, origin: str) -> bool:
        return not self.origins or origin in self.origins


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_at: datetime


class VisitorTokenIssuer(Protocol):
    def issue_visitor(self, visitor_id: str, tenant_id: str) -> IssuedToken:
        """A token for ``visitor_id`` of ``tenant_id`` with the role ``visitor``."""
        ...


@dataclass(frozen=True)
class Visitor:
    visitor_id: str
    tenant_id: str
    token: IssuedToken


@dataclass(frozen=True)
class Identified:
    user_id: str
    moved: list[str]  # the consultation ids that now belong to the user


class VisitorService:
    def __init__(
        self,
        keys: Mapping[str, WidgetKey],
        issuer: VisitorTokenIssuer,
        rates: RateLimits,
        ownership: Ownership,
        rooms: Rooms,
        *,
        issue_per_minute: int = 10,
    ) -> None:
        self.keys = dict(keys)
        self._issuer = issuer
        self._rates = rates
        self._ownership = ownership
        self._rooms = rooms
        self._per_minute = issue_per_minute

    def check_origin(self, key: WidgetKey, origin: str | None, own: Collection[str]) -> None:
        """A browser names the page's origin: it must be one the key allows, or this server's
        own (the widget's frame, whose embedding ``frame-ancestors`` restricts). A request
        without one is not a browser's: the key is public anyway, the rate limit applies."""
        if origin is None or origin in own or key.allows(origin):
            return
        raise Forbidden(f"This widget key may not be used on {origin}")

    async def issue(
        self, widget_key: str, *, origin: str | None, own_origins: Collection[str], address: str
    ) -> Visitor:
        key = self.keys.get(widget_key)
        if key is None:
            raise Forbidden("Unknown widget key")
        self.check_origin(key, origin, own_origins)
        # Per client address, so one script cannot mint visitors (and their connection and
        # message allowances) without bound.
        decision = await self._rates.hit(f"visitor-issue:{address}", self._per_minute, 60.0)
        if not decision.allowed:
            retry_after = max(1, math.ceil(decision.retry_after))
            raise RateLimited(
                f"At most {self._per_minute} new visitors per minute from one address: "
                f"retry in {retry_after} s",
                retryAfter=retry_after,
            )
        visitor_id = f"visitor-{secrets.token_urlsafe(12)}"
        token = self._issuer.issue_visitor(visitor_id, key.tenant_id)
        log.info(
            "visitor issued",
            extra={"fields": {"userId": visitor_id, "tenant": key.tenant_id, "origin": origin}},
        )
        return Visitor(visitor_id, key.tenant_id, token)

    def refresh(self, visitor: Identity) -> Visitor:
        """A fresh token for the same visitor (its consultations stay its own): a widget
        renews before the old one expires, and ``refreshToken`` takes it on open sockets."""
        if visitor.role is not Role.VISITOR:
            raise Forbidden("Refresh needs a visitor token in Authorization")
        token = self._issuer.issue_visitor(visitor.user_id, visitor.tenant_id)
        return Visitor(visitor.user_id, visitor.tenant_id, token)

    async def identify(self, visitor: Identity, user: Identity) -> Identified:
        """The visitor signed in as ``user``: its consultations (history, handoff state and
        rating) are the user's from now on, and the visitor's token no longer opens them."""
        if visitor.role is not Role.VISITOR:
            raise Forbidden("Identify needs a visitor token in Authorization")
        if user.tenant_id != visitor.tenant_id:
            raise Forbidden("The user token is of another tenant")
        if user.role is Role.VISITOR:
            raise Forbidden("The user token is a visitor token")
        moved = await self._ownership.transfer(
            visitor.tenant_id, visitor.user_id, user.user_id, user.role
        )
        for consultation in moved:
            # To the room: the visitor's open connections (and an operator) learn its owner.
            event = ConsultationUpdated(
                consultation_id=consultation.consultation_id,
                mode=consultation.mode,
                owner_id=consultation.owner_id,
            )
            await self._rooms.to_room(consultation.key.room, event)
        log.info(
            "visitor identified",
            extra={
                "fields": {
                    "userId": visitor.user_id,
                    "identifiedAs": user.user_id,
                    "tenant": user.tenant_id,
                    "moved": len(moved),
                }
            },
        )
        return Identified(user.user_id, [c.consultation_id for c in moved])
