"""``/api/tenant-settings``: the greeting and the canned replies, for the tenant's staff to
read and its admins to replace."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ..domain.ports import TokenVerifier
from ..domain.tenants import TenantService
from ..errors import AppError, InvalidPayload
from .auth import bearer_token
from .rest import error_response

MAX_BODY_BYTES = 512 * 1024


class TenantRoutes:
    def __init__(self, service: TenantService, verifier: TokenVerifier) -> None:
        self._service = service
        self._auth = verifier

    def install(self, app: web.Application) -> None:
        app.router.add_get("/api/tenant-settings", self.get)
        app.router.add_put("/api/tenant-settings", self.put)

    async def get(self, request: web.Request) -> web.Response:
        try:
            identity = await self._auth.identify(bearer_token(request.headers.get("Authorization")))
            settings = await self._service.for_staff(identity)
        except AppError as exc:
            return error_response(exc)
        return web.json_response({"ok": True, "settings": settings.to_wire()})

    async def put(self, request: web.Request) -> web.Response:
        try:
            identity = await self._auth.identify(bearer_token(request.headers.get("Authorization")))
            settings = await self._service.put(identity, await _body(request))
        except AppError as exc:
            return error_response(exc)
        return web.json_response({"ok": True, "settings": settings.to_wire()})


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidPayload("The body is too large")
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise InvalidPayload("The body must be JSON") from None
    if not isinstance(body, dict):
        raise InvalidPayload("The body must be a JSON object")
    return body
