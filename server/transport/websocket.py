"""``GET /ws/chat``: the chat over a plain WebSocket, for clients without a Socket.IO library
(Postman's raw mode, Python ``websockets``, devices, existing WebSocket chat clients).

Frames are JSON text. Client → server ``{"event", "data", "id"?}`` (``type`` is an alias of
``event``; without ``data`` the other top-level fields are the data). Server → client
``{"event", "data"}``; an acknowledgement is ``{"event": "ack", "id", "data": {"ok", ...}}``.

Everything else is shared with Socket.IO: the connection policy (identity, limits, token
expiry), the events and their schemas (``ChatSession.dispatch``), and the rooms — a raw
connection is a member of the same room hub, so it receives what Socket.IO clients of the
room receive, on every instance, through the same broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from ..domain.connections import CloseReason, ConnectionService
from ..domain.models import Identity, iso, utcnow
from ..domain.session import ChatSession
from ..errors import AppError, InvalidPayload, TooManyConnections, Unauthorized
from ..fanout.frames import Frame
from ..fanout.hub import RoomHub
from ..fanout.outbox import DEFAULT_MAX_BYTES, Outbox, OutboxStats
from .auth import bearer_token
from .net import Network, client_address, origin_allowed
from .sinks import WebSocketSink, close_websocket, websocket_frame

log = logging.getLogger(__name__)

AUTH_TIMEOUT_SECONDS = 10.0
MAX_FRAME_BYTES = 1_000_000
CLOSE_UNAUTHORIZED = 4401
CLOSE_TOO_MANY = 4429
CLOSE_IDLE = 4408
CLOSE_POLICY = 4403
CLOSE_SLOW_CONSUMER = 4008
CLOSES: dict[CloseReason, tuple[int, str]] = {
    CloseReason.TOKEN_EXPIRED: (CLOSE_UNAUTHORIZED, "token expired"),
    CloseReason.POLICY: (CLOSE_POLICY, "closed by policy"),
    CloseReason.SLOW_CONSUMER: (CLOSE_SLOW_CONSUMER, "slow consumer"),
    CloseReason.DRAINING: (WSCloseCode.GOING_AWAY, "server shutting down"),
}


def raw_encoding(frame: Frame) -> tuple[str, bytes]:
    """``{"event": name, "data": payload}`` and its WebSocket frame, made once per frame."""
    encoded: tuple[str, bytes] | None = frame.encoded.get(raw_encoding)
    if encoded is None:
        text = f'{{"event":"{frame.event}","data":{frame.data_json}}}'
        encoded = frame.encoded[raw_encoding] = (text, websocket_frame(text.encode()))
    return encoded


@dataclass(frozen=True)
class RawSettings:
    ping_interval: float = 25.0
    idle_timeout: float = 300.0
    compression: bool = False
    auth_timeout: float = AUTH_TIMEOUT_SECONDS
    outbox_max_bytes: int = DEFAULT_MAX_BYTES


class RawMember:
    """A plain WebSocket as a member of the room hub: every frame (broadcasts, replies,
    acknowledgements) goes through its outbox, in order."""

    def __init__(
        self,
        connection_id: str,
        ws: web.WebSocketResponse,
        transport: asyncio.BaseTransport | None,
        settings: RawSettings,
        stats: OutboxStats | None,
    ) -> None:
        self.id = connection_id
        self.ws = ws
        self.transport = transport
        self.wants_chunks = True  # a client that sends ``stream: false`` gets whole replies
        sink = WebSocketSink(ws, transport, direct=not settings.compression)
        self.outbox = Outbox(sink, settings.outbox_max_bytes, self._slow_consumer, stats)
        self._closing: asyncio.Task[None] | None = None

    def deliver(self, frame: Frame) -> None:
        if frame.event == "aiChunk" and not self.wants_chunks:
            return
        self.outbox.send(*raw_encoding(frame))

    def send(self, event: str, data: Any) -> None:
        self.deliver(Frame(event, json.dumps(data, separators=(",", ":"))))

    def ack(self, frame_id: int | str, data: Any) -> None:
        """``{"event": "ack", "id": frame_id, "data": data}``, in order with the rest."""
        body = {"event": "ack", "id": frame_id, "data": data}
        self.outbox.send(json.dumps(body, separators=(",", ":")))

    def close_with(self, code: int, reason: str) -> None:
        """Close the socket with an application code, once, without waiting here."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(
                close_websocket(
                    self.ws, self.transport, code, reason.encode()[:120], outbox=self.outbox
                )
            )

    async def closed(self) -> None:
        """Wait for a close under way."""
        if self._closing is not None:
            with contextlib.suppress(Exception):
                await self._closing

    def _slow_consumer(self) -> None:
        self.close_with(*CLOSES[CloseReason.SLOW_CONSUMER])


class RawChatEndpoint:
    def __init__(
        self,
        connections: ConnectionService,
        hub: RoomHub,
        settings: RawSettings,
        *,
        dev_auth: bool,
        allowed_origins: list[str] | str | None = None,
        trusted_proxies: tuple[Network, ...] = (),
        outbox_stats: OutboxStats | None = None,
    ) -> None:
        self._allowed_origins = allowed_origins
        self._outbox_stats = outbox_stats
        self._connections = connections
        self._hub = hub
        self._settings = settings
        self._dev_auth = dev_auth
        self._proxies = trusted_proxies
        self._open: set[RawMember] = set()

    def install(self, app: web.Application) -> None:
        app.router.add_get("/ws/chat", self.handle)

    async def close_all(self) -> None:
        """Shutdown: close every raw socket so clients reconnect elsewhere."""
        code, reason = CLOSES[CloseReason.DRAINING]
        members = list(self._open)
        for member in members:
            member.close_with(code, reason)
        await asyncio.gather(*(member.closed() for member in members))

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        if not origin_allowed(request, self._allowed_origins):
            # Cross-site WebSocket hijacking: a page elsewhere must not ride a user's cookies
            # or network position. Clients that send no Origin (not browsers) are not affected.
            raise web.HTTPForbidden(text="This Origin may not open /ws/chat (CORS_ORIGINS)\n")
        ws = web.WebSocketResponse(
            max_msg_size=MAX_FRAME_BYTES,
            heartbeat=self._settings.ping_interval,  # WebSocket pings; a dead peer is dropped
            compress=self._settings.compression,
        )
        await ws.prepare(request)
        connection_id = f"{uuid.uuid4().hex}@{self._hub.instance_id}"
        member = RawMember(connection_id, ws, request.transport, self._settings, self._outbox_stats)
        self._open.add(member)
        self._hub.attach(member)
        session: ChatSession | None = None
        try:
            session = await self._authenticate(request, ws, member)
            if session is not None:
                await self._serve(ws, member, session)
        finally:
            self._open.discard(member)
            if session is not None:
                await self._connections.close(connection_id)
            await self._hub.detach(connection_id)
            member.outbox.close()
            await member.closed()
            if not ws.closed:
                await close_websocket(ws, request.transport, WSCloseCode.OK, b"")
        return ws

    # -- authentication -------------------------------------------------------------------------

    async def _authenticate(
        self, request: web.Request, ws: web.WebSocketResponse, member: RawMember
    ) -> ChatSession | None:
        token = request.query.get("token") or bearer_token(request.headers.get("Authorization"))
        if token or self._dev_auth:
            # Dev auth: ?userId=&name=&role= choose who this client is (nothing is verified).
            dev = {k: request.query[k] for k in ("userId", "name", "role") if k in request.query}
            session = await self._open_session(request, ws, member, token, dev)
            if session is not None:
                member.send("connected", self._connected(member, session.identity))
            return session
        # JWT mode without a token in the URL: the first frame must authenticate.
        member.send("connected", self._connected(member, None))
        try:
            async with asyncio.timeout(self._settings.auth_timeout):
                message = await ws.receive()
        except TimeoutError:
            timeout = f"{self._settings.auth_timeout:g}"
            await self._refuse(ws, member, Unauthorized(f"No auth frame within {timeout} s"))
            return None
        if message.type != WSMsgType.TEXT:
            return None  # closed, or binary instead of an auth frame
        frame = _parse(message.data)
        if frame.error is not None or frame.event != "auth":
            await self._refuse(ws, member, Unauthorized('Send {"event": "auth"} first'))
            return None
        token = frame.data.get("token") if isinstance(frame.data, dict) else None
        session = await self._open_session(
            request, ws, member, token if isinstance(token, str) else None, None
        )
        if session is not None and frame.id is not None:
            member.ack(frame.id, {"ok": True, **_who(session.identity)})
        return session

    async def _open_session(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        member: RawMember,
        token: str | None,
        dev: dict[str, str] | None,
    ) -> ChatSession | None:
        async def close(reason: CloseReason) -> None:
            code, text = CLOSES[reason]
            member.close_with(code, text)
            await member.closed()

        address = client_address(
            request.remote, request.headers.get("X-Forwarded-For"), self._proxies
        )
        try:
            return await self._connections.open(
                token, member.id, close, dev=dev, transport="websocket", address=address
            )
        except AppError as exc:
            await self._refuse(ws, member, exc)
            return None

    async def _refuse(self, ws: web.WebSocketResponse, member: RawMember, error: AppError) -> None:
        """Tell why, then close with an application code every WebSocket client can read."""
        member.send("error", error.to_wire())
        code = CLOSE_TOO_MANY if isinstance(error, TooManyConnections) else CLOSE_UNAUTHORIZED
        member.close_with(code, error.message)  # after the error frame, in its outbox's order
        await member.closed()

    def _connected(self, member: RawMember, identity: Identity | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "clientId": member.id,
            "serverTime": iso(utcnow()),
            "heartbeatInterval": self._settings.ping_interval,
        }
        if identity is not None:
            body.update(_who(identity))
        return body

    # -- frames ---------------------------------------------------------------------------------

    async def _serve(
        self, ws: web.WebSocketResponse, member: RawMember, session: ChatSession
    ) -> None:
        idle = self._settings.idle_timeout
        while True:
            try:
                async with asyncio.timeout(idle):
                    message = await ws.receive()
            except TimeoutError:
                await ws.close(code=CLOSE_IDLE, message=f"idle for {idle:g} s".encode())
                return
            if message.type == WSMsgType.TEXT:
                await self._on_text(member, session, message.data)
            elif message.type == WSMsgType.BINARY:
                error = InvalidPayload("Frames must be JSON text, not binary")
                await session.fail(error)
            elif message.type == WSMsgType.ERROR:
                # aiohttp closes an oversized frame with 1009 itself.
                log.info("raw websocket %s: %s", member.id, ws.exception())
                return
            else:  # CLOSE, CLOSING, CLOSED
                return

    async def _on_text(self, member: RawMember, session: ChatSession, text: str) -> None:
        frame = _parse(text)
        if frame.error is not None:
            await session.fail(frame.error)
            if frame.id is not None:
                member.ack(frame.id, {"ok": False, "error": frame.error.to_wire()})
            return
        if frame.event == "ping":
            reply = {"timestamp": int(time.time() * 1000)}
            member.send("pong", reply)
            if frame.id is not None:
                member.ack(frame.id, {"ok": True, **reply})
            return
        if frame.event == "sendMessage" and isinstance(frame.data, dict):
            stream = frame.data.get("stream")
            if isinstance(stream, bool):
                member.wants_chunks = stream
        ack = await session.dispatch(frame.event, frame.data)
        if frame.id is not None:
            # No await between the handler's end and this: no broadcast it caused can come
            # first on this connection.
            member.ack(frame.id, ack)


@dataclass(frozen=True)
class _Frame:
    event: str = ""
    data: Any = None
    id: int | str | None = None
    error: AppError | None = None


def _parse(text: str) -> _Frame:
    try:
        body = json.loads(text)
    except ValueError:
        return _Frame(error=InvalidPayload("The frame is not valid JSON"))
    if not isinstance(body, dict):
        return _Frame(error=InvalidPayload('A frame must be an object: {"event", "data"}'))
    frame_id = body.get("id")
    if frame_id is not None and (isinstance(frame_id, bool) or not isinstance(frame_id, int | str)):
        return _Frame(error=InvalidPayload('"id" must be a number or a string'))
    event = body.get("event", body.get("type"))
    if not isinstance(event, str) or not event:
        missing = InvalidPayload('A frame needs an "event" (or "type") naming the event')
        return _Frame(id=frame_id, error=missing)
    if "data" in body:
        data = body["data"]
    else:  # older clients put the payload at the top level: {"type": "ping"}
        data = {k: v for k, v in body.items() if k not in {"event", "type", "id"}}
    return _Frame(event[:64], data, frame_id)


def _who(identity: Identity) -> dict[str, Any]:
    return {"userId": identity.user_id, "tenantId": identity.tenant_id, "role": identity.role.value}
