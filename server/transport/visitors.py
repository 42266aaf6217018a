"""``POST /api/visitors`` (a visitor token for a widget key) and ``POST /api/visitors/identify``
(a visitor signs in): parse, call the visitor service, answer JSON."""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from ..domain.models import Identity, iso
from ..domain.ports import TokenVerifier
from ..domain.visitors import Visitor, VisitorService
from ..errors import AppError, InvalidPayload, Unauthorized
from .auth import bearer_token
from .net import Network, client_address, own_origins
from .rest import error_response, json_object, request_identity

MAX_BODY_BYTES = 16 * 1024


class VisitorRoutes:
    def __init__(
        self, service: VisitorService, verifier: TokenVerifier, proxies: Sequence[Network]
    ) -> None:
        self._service = service
        self._auth = verifier
        self._proxies = proxies

    def install(self, app: web.Application) -> None:
        app.router.add_post("/api/visitors", self.issue)
        app.router.add_post("/api/visitors/identify", self.identify)
        app.router.add_post("/api/visitors/refresh", self.refresh)

    def cors_allowed(self, path: str, origin: str) -> bool:
        """The sites a widget key names may call these routes from their own pages."""
        if not path.startswith("/api/visitors"):
            return False
        return any(key.allows(origin) for key in self._service.keys.values())

    async def issue(self, request: web.Request) -> web.Response:
        try:
            body = await json_object(request, MAX_BODY_BYTES)
            widget_key = body.get("widgetKey")
            if not isinstance(widget_key, str) or not widget_key:
                raise InvalidPayload("widgetKey is required", field="widgetKey")
            address = client_address(
                request.remote, request.headers.get("X-Forwarded-For"), self._proxies
            )
            visitor = await self._service.issue(
                widget_key,
                origin=request.headers.get("Origin"),
                own_origins=own_origins(request.scheme, request.headers),
                address=address or "unknown",
            )
        except AppError as exc:
            return error_response(exc)
        return _issued(visitor, status=201)

    async def _caller(self, request: web.Request) -> Identity:
        """The bearer token's identity; a token is required (dev auth's guests included)."""
        if bearer_token(request.headers.get("Authorization")) is None:
            raise Unauthorized("Authorization: Bearer <visitor token> is required")
        return await request_identity(self._auth, request)

    async def refresh(self, request: web.Request) -> web.Response:
        """A fresh token for the visitor of a valid one (same visitorId)."""
        try:
            visitor = self._service.refresh(await self._caller(request))
        except AppError as exc:
            return error_response(exc)
        return _issued(visitor, status=200)

    async def identify(self, request: web.Request) -> web.Response:
        try:
            visitor = await self._caller(request)
            body = await json_object(request, MAX_BODY_BYTES)
            user_token = body.get("userToken")
            if not isinstance(user_token, str) or not user_token:
                raise InvalidPayload("userToken is required", field="userToken")
            user = await self._auth.identify(user_token)
            identified = await self._service.identify(visitor, user)
        except AppError as exc:
            return error_response(exc)
        return web.json_response(
            {"ok": True, "userId": identified.user_id, "moved": identified.moved}
        )


def _issued(visitor: Visitor, *, status: int) -> web.Response:
    return web.json_response(
        {
            "ok": True,
            "token": visitor.token.token,
            "visitorId": visitor.visitor_id,
            "tenantId": visitor.tenant_id,
            "expiresAt": iso(visitor.token.expires_at),
        },
        status=status,
    )
