"""HTTP routes: history API, health probes, status; CORS for browser callers."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ..domain.consultations import ConsultationService
from ..domain.handoff import HandoffService
from ..domain.models import Identity, Mode, Role, iso
from ..domain.ports import TokenVerifier
from ..errors import AppError, Forbidden, InvalidPayload, NotFound, PayloadTooLarge
from . import catalogue_docs
from .auth import bearer_token

log = logging.getLogger(__name__)


Readiness = Callable[[], Awaitable[dict[str, str]]]
Status = Callable[[], Awaitable[dict[str, Any]]]


def error_response(error: AppError) -> web.Response:
    response = web.json_response({"ok": False, "error": error.to_wire()}, status=error.http_status)
    retry_after = error.details.get("retryAfter")
    if isinstance(retry_after, int):
        response.headers["Retry-After"] = str(retry_after)
    return response


class Routes:
    def __init__(
        self,
        service: ConsultationService,
        verifier: TokenVerifier,
        readiness: Readiness,
        *,
        connections: Callable[[], int] = lambda: 0,
        status: Status | None = None,
        status_public: bool = False,
        handoff: HandoffService | None = None,
    ) -> None:
        self._handlers = catalogue_docs.handlers()
        self._handoff = handoff
        self._connections = connections
        self._status = status
        self._status_public = status_public
        self._service = service
        self._auth = verifier
        self._readiness = readiness

    def install(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/api/consultations/{consultation_id}/messages", self.messages)
        app.router.add_get("/ws/status", self.status)
        app.router.add_get("/api/operator/queue", self.operator_queue)
        app.router.add_get("/api/consultations", self.consultations)
        app.router.add_get("/api/stats", self.stats)
        app.router.add_get("/ws/handlers", self.handlers)
        app.router.add_get("/asyncapi.json", self.asyncapi)

    async def handlers(self, request: web.Request) -> web.Response:
        """Every event of the catalogue, with its payload schema: for frontend developers."""
        return web.json_response(self._handlers)

    async def asyncapi(self, request: web.Request) -> web.Response:
        return web.json_response(catalogue_docs.asyncapi(request.host))

    async def stats(self, request: web.Request) -> web.Response:
        """``?from=&to=`` (ISO 8601): the tenant's figures, for operators and admins."""
        try:
            identity = await request_identity(self._auth, request)
            since = _time_param(request, "from")
            until = _time_param(request, "to")
            found = await self._service.stats(identity, since, until)
        except AppError as exc:
            return error_response(exc)
        return web.json_response(
            {
                "ok": True,
                "from": iso(since) if since else None,
                "to": iso(until) if until else None,
                "consultations": found.consultations,
                "messages": found.messages,
                "avgAiResponseMs": _rounded(found.avg_ai_response_ms),
                "resolvedWithoutOperatorRatio": _rounded(found.resolved_without_operator_ratio, 4),
                "handoffs": found.handoffs,
                "avgRating": _rounded(found.avg_rating, 2),
                "ratings": found.ratings,
                "topSources": [
                    {"id": i, "title": title, "count": n} for i, title, n in found.top_sources
                ],
                "topQuestions": [{"text": text, "count": n} for text, n in found.top_questions],
                "unanswered": found.unanswered,
            }
        )

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "connections": self._connections()})

    async def readyz(self, request: web.Request) -> web.Response:
        checks = await self._readiness()
        ready = all(state == "ok" for state in checks.values())
        return web.json_response(
            {"status": "ready" if ready else "unavailable", "checks": checks},
            status=200 if ready else 503,
        )

    async def status(self, request: web.Request) -> web.Response:
        """This instance's figures (and the cluster's): admins only, unless public."""
        try:
            if not self._status_public:
                identity = await request_identity(self._auth, request)
                if identity.role is not Role.ADMIN:
                    raise Forbidden("The status is for admins")
        except AppError as exc:
            return error_response(exc)
        body = await self._status() if self._status is not None else {}
        return web.json_response(body)

    async def operator_queue(self, request: web.Request) -> web.Response:
        """The tenant's waiting consultations, in the order they will be served."""
        try:
            identity = await request_identity(self._auth, request)
            if self._handoff is None:
                raise NotFound()
            items = await self._handoff.queue(identity)
        except AppError as exc:
            return error_response(exc)
        return web.json_response({"ok": True, "items": [item.to_wire() for item in items]})

    async def consultations(self, request: web.Request) -> web.Response:
        """``?mode=ai|waiting|operator|closed``: the tenant's consultations, for dashboards."""
        try:
            identity = await request_identity(self._auth, request)
            raw = request.query.get("mode") or None
            try:
                mode = Mode(raw) if raw else None
            except ValueError:
                modes = ", ".join(m.value for m in Mode)
                raise InvalidPayload(f"mode must be one of {modes}", field="mode") from None
            if self._handoff is None:
                raise NotFound()
            found = await self._handoff.listing(identity, mode)
        except AppError as exc:
            return error_response(exc)
        return web.json_response({"ok": True, "consultations": [c.to_wire() for c in found]})

    async def messages(self, request: web.Request) -> web.Response:
        try:
            identity = await request_identity(self._auth, request)
            after_seq = _int_param(request, "afterSeq", minimum=0)
            limit = _int_param(request, "limit", minimum=1)
            messages = await self._service.history(
                identity, request.match_info["consultation_id"], after_seq, limit
            )
        except AppError as exc:
            return error_response(exc)
        return web.json_response({"ok": True, "messages": [m.to_wire() for m in messages]})


async def request_identity(verifier: TokenVerifier, request: web.Request) -> Identity:
    """Who calls a REST route: the ``Authorization: Bearer`` token, verified (dev auth
    without one)."""
    return await verifier.identify(bearer_token(request.headers.get("Authorization")))


async def json_object(request: web.Request, limit: int) -> dict[str, Any]:
    """The request's JSON object body (at most ``limit`` bytes): InvalidPayload otherwise,
    PayloadTooLarge past the limit."""
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise PayloadTooLarge(f"The body is larger than {limit} bytes")
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise InvalidPayload("The body must be JSON") from None
    if not isinstance(body, dict):
        raise InvalidPayload("The body must be a JSON object")
    return body


def _int_param(request: web.Request, name: str, *, minimum: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidPayload(f"{name} must be an integer") from None
    if value < minimum:
        raise InvalidPayload(f"{name} must be >= {minimum}")
    return value


def _time_param(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidPayload(
            f"{name} must be an ISO 8601 date or time (2026-12-01 or 2026-12-01T08:00:00Z)",
            field=name,
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def cors_middleware(
    origins: Sequence[str] | str | None, also: Callable[[str, str], bool] | None = None
) -> Any:
    """CORS for the REST routes, with the same origins as Socket.IO (which handles its own);
    ``also(path, origin)`` allows more (the visitor routes: the widget keys' sites)."""

    def allowed(path: str, origin: str) -> bool:
        if origins == "*" or (isinstance(origins, list) and origin in origins):
            return True
        return also is not None and also(path, origin)

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        is_api = request.path.startswith("/api/")
        if not (origin and is_api and allowed(request.path, origin)):
            return await handler(request)
        if request.method == "OPTIONS":
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            response.headers["Access-Control-Max-Age"] = "600"
        else:
            response = await handler(request)
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
        return response

    return middleware
