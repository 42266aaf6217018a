"""``/api/knowledge``: the tenant's knowledge base over REST, for its admins. Parse, call the
knowledge service, answer JSON."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..domain.knowledge import KnowledgeService
from ..domain.models import Article
from ..domain.ports import TokenVerifier
from ..errors import AppError
from .rest import error_response, json_object, request_identity

BODY_SLACK = 64 * 1024  # beyond KNOWLEDGE_MAX_CHARS: the title, the URL, JSON escaping


class KnowledgeRoutes:
    def __init__(self, service: KnowledgeService, verifier: TokenVerifier) -> None:
        self._service = service
        self._auth = verifier

    def install(self, app: web.Application) -> None:
        app.router.add_get("/api/knowledge", self.all)
        app.router.add_post("/api/knowledge", self.create)
        app.router.add_get("/api/knowledge/{article_id}", self.get)
        app.router.add_put("/api/knowledge/{article_id}", self.replace)
        app.router.add_delete("/api/knowledge/{article_id}", self.delete)

    async def all(self, request: web.Request) -> web.Response:
        try:
            identity = await request_identity(self._auth, request)
            articles = await self._service.all(identity)
        except AppError as exc:
            return error_response(exc)
        return web.json_response({"ok": True, "articles": [a.to_wire() for a in articles]})

    async def get(self, request: web.Request) -> web.Response:
        try:
            identity = await request_identity(self._auth, request)
            article = await self._service.get(identity, request.match_info["article_id"])
        except AppError as exc:
            return error_response(exc)
        return web.json_response({"ok": True, "article": article.to_wire()})

    async def create(self, request: web.Request) -> web.Response:
        try:
            given = (body := await self._body(request)).get("id")
            article = await self._put(
                request, body, given if isinstance(given, str) and given else None
            )
        except AppError as exc:
            return error_response(exc)
        return web.json_response({"ok": True, "article": article.to_wire()}, status=201)

    async def replace(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request)
            article = await self._put(
                request, body, request.match_info["article_id"], must_exist=True
            )
        except AppError as exc:
            return error_response(exc)
        return web.json_response({"ok": True, "article": article.to_wire()})

    async def delete(self, request: web.Request) -> web.Response:
        try:
            identity = await request_identity(self._auth, request)
            await self._service.delete(identity, request.match_info["article_id"])
        except AppError as exc:
            return error_response(exc)
        return web.json_response({"ok": True})

    async def _put(
        self,
        request: web.Request,
        body: dict[str, Any],
        article_id: str | None,
        *,
        must_exist: bool = False,
    ) -> Article:
        return await self._service.put(
            await request_identity(self._auth, request),
            title=body.get("title"),
            content=body.get("content"),
            url=body.get("url"),
            tags=body.get("tags"),
            article_id=article_id,
            must_exist=must_exist,
        )

    async def _body(self, request: web.Request) -> dict[str, Any]:
        # UTF-8 and JSON escapes make a body up to 4 bytes per character of content.
        return await json_object(request, self._service.settings.max_chars * 4 + BODY_SLACK)
