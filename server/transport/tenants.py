"""``/api/tenant-settings``: the greeting and the canned replies, for the tenant's staff to
read and its admins to replace."""

from __future__ import annotations

from aiohttp import web

from ..domain.ports import TokenVerifier
from ..domain.tenants import TenantService
from ..errors import AppError
from .rest import error_response, json_object, request_identity

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
            identity = await request_identity(self._auth, request)
            settings = await self._service.for_staff(identity)
        except AppError as exc:
            return error_response(exc)
        return web.json_response({"ok": True, "settings": settings.to_wire()})

    async def put(self, request: web.Request) -> web.Response:
        try:
            identity = await request_identity(self._auth, request)
            settings = await self._service.put(identity, await json_object(request, MAX_BODY_BYTES))
        except AppError as exc:
            return error_response(exc)
        return web.json_response({"ok": True, "settings": settings.to_wire()})
