"""python-socketio behind an aiohttp route, through its documented ASGI interface.

python-socketio runs in ``async_mode="asgi"``; this module is its ASGI server. Every byte
Engine.IO writes comes through our ``send`` callable and every frame it reads through our
``receive``, so the connection is ours without touching a library internal:

- **One outbox per connection** (:mod:`server.fanout.outbox`). A connection that starts on
  WebSocket writes through its outbox directly: broadcasts (``SocketIOMember``) and Engine.IO's
  own packets (handshake, acks, pings) join the same ordered, bounded queue. A connection on
  long-polling, or upgraded from it, hands frames to Engine.IO's public ``send_packet`` at most
  ``ENGINE_WINDOW`` bytes ahead of what its transport has written (counted here, as poll
  responses and WebSocket frames leave): the rest waits in the outbox, under the same bound.
- **Closes by reason.** ``close_transport`` drops the transport (the client reconnects);
  ending a session (a Socket.IO DISCONNECT) is python-socketio's public ``disconnect``.
- **The protocol edge.** A frame that is not an Engine.IO packet, or a Socket.IO packet that
  python-socketio could not decode, closes the peer with one warning (python-socketio would
  log a traceback per packet and keep it), before the library sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import socketio
from aiohttp import WSMsgType, web
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from ...fanout.outbox import Outbox, OutboxStats
from ..sinks import WebSocketSink, close_websocket

log = logging.getLogger(__name__)

SCOPE_KEY = "consultation.connection"  # the EngineConnection, in the ASGI scope (and environ)
ENGINE_WINDOW = 64 * 1024  # bytes handed to Engine.IO's queue ahead of what was written
ENGINEIO_TYPES = frozenset("0123456")
SOCKETIO_HINT = (
    "This is the Socket.IO endpoint of the consultation server (namespace /chat).\n"
    "Connect with socket.io-client v4: io('https://this-host/chat', {auth: {token}});\n"
    "plain WebSocket clients use /ws/chat. GET /ws/handlers lists the events.\n"
)
SOCKETIO_TYPES = frozenset(
    {
        sio_packet.CONNECT,
        sio_packet.DISCONNECT,
        sio_packet.EVENT,
        sio_packet.ACK,
        sio_packet.BINARY_EVENT,
        sio_packet.BINARY_ACK,
    }
)
SESSION_END_GRACE_SECONDS = 1.0  # after a Socket.IO DISCONNECT, before the transport closes
CLOSE_GRACE_SECONDS = 2.0  # how long a closing transport may take before it is aborted

ASGIMessage = dict[str, Any]


class ProtocolError(Exception):
    pass


class EngineSink:
    """Frames for a connection on long-polling (or upgraded from it): handed to Engine.IO's
    queue through its public ``send_packet``, never more than ``ENGINE_WINDOW`` bytes ahead
    of what its transport has written."""

    __slots__ = ("_served_event", "_server", "connection", "unsent")

    def __init__(self, server: socketio.AsyncServer, connection: EngineConnection) -> None:
        self._server = server
        self.connection = connection
        self.unsent = 0
        self._served_event: asyncio.Event | None = None  # made when something waits

    def write_now(self, data: str | bytes, frame: bytes | None) -> bool:
        return False  # send_packet is a coroutine: the outbox's drain task hands frames over

    async def write(self, data: str | bytes) -> None:
        while self.unsent > ENGINE_WINDOW:
            await self._next_served()
        sid = self.connection.sid
        if sid is None or self.connection.closed:
            raise ConnectionError("the connection is gone")
        self.unsent += len(data)
        # ``data`` is an Engine.IO MESSAGE as written on the wire ("4..."): send its payload.
        payload = data[1:] if isinstance(data, str) else data
        await self._server.eio.send_packet(sid, eio_packet.Packet(eio_packet.MESSAGE, payload))

    def served(self, nbytes: int) -> None:
        self.unsent = max(0, self.unsent - nbytes)
        if self._served_event is not None:
            self._served_event.set()

    async def written(self) -> None:
        """Wait until what was handed to Engine.IO has been written."""
        while self.unsent > 0:
            await self._next_served()

    async def _next_served(self) -> None:
        if self._served_event is None:
            self._served_event = asyncio.Event()
        self._served_event.clear()
        await self._served_event.wait()


class EngineConnection:
    """One Engine.IO connection as the bridge sees it, whatever its transport."""

    __slots__ = (
        "__weakref__",
        "_awaited_ack",
        "_bridge",
        "_closing",
        "ack_prefix",
        "attachments_expected",
        "closed",
        "direct",
        "engine_sink",
        "outbox",
        "sid",
        "transport",
        "ws",
    )

    def __init__(self, bridge: EngineBridge) -> None:
        self._bridge = bridge
        self.sid: str | None = None
        self.ws: web.WebSocketResponse | None = None
        self.transport: asyncio.BaseTransport | None = None
        self.direct = False  # started on WebSocket: the outbox writes to it directly
        self.closed = False
        self.engine_sink = EngineSink(bridge.server, self)
        self.outbox = Outbox(
            self.engine_sink, bridge.outbox_limit, self._slow_consumer, bridge.stats
        )
        self.attachments_expected = 0  # binary frames announced by a Socket.IO packet
        self.ack_prefix: str | None = None  # the ACK the event being handled will be answered by
        self._awaited_ack = "\0"
        self._closing: asyncio.Task[None] | None = None

    def send(self, data: str | bytes, frame: bytes | None = None) -> None:
        """An Engine.IO-encoded frame ("4…" for a message) for this client, in order."""
        self.outbox.send(data, frame)

    def attach_websocket(
        self, ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None
    ) -> None:
        self.ws = ws
        self.transport = transport
        if self.sid is None:  # a connection that starts on WebSocket
            self.direct = True
            self.outbox.sink = WebSocketSink(ws, transport, direct=not self._bridge.compression)

    async def before_ack(self) -> None:
        """The event being handled is answered now: its acknowledgement leaves after what the
        handler sent, and nothing sent later overtakes it. python-socketio queues the ACK in
        Engine.IO as soon as the handler returns; on WebSocket the outbox holds later frames
        until that ACK has passed through it."""
        prefix, self.ack_prefix = self.ack_prefix, None
        if prefix is None or self.closed:
            return
        if self.direct:
            self._awaited_ack = prefix
            self.outbox.hold()
            return
        # Long-polling: what the handler sent must reach Engine.IO's queue before the ACK.
        await self.flushed()

    async def flushed(self) -> None:
        """Wait (briefly) until the outbox has handed what it holds to the transport: a packet
        python-socketio sends next (an ACK, a DISCONNECT) then comes after it."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_GRACE_SECONDS):
                await self.outbox.flushed()

    async def engine_writes(self, data: str | bytes) -> None:
        """Engine.IO writes ``data`` on this connection's WebSocket."""
        if self.direct:
            if self.sid is None and isinstance(data, str) and data.startswith("0{"):
                self._bridge.register(self, data)
            if not self.outbox.holding:
                self.outbox.send(data)
                return
            # Engine.IO queued this before the ACK being waited for (or it is that ACK).
            self.outbox.send_ahead(data)
            if isinstance(data, str) and data.startswith(self._awaited_ack):
                self.outbox.release()
            return
        ws = self.ws
        if ws is None or ws.closed:
            raise ConnectionError("the WebSocket is closed")
        if isinstance(data, str):
            await ws.send_str(data)
        else:
            await ws.send_bytes(data)
        self.engine_sink.served(len(data))

    def close_transport(self, code: int = 1001, message: bytes = b"") -> None:
        """Drop the transport (not the Socket.IO session): the client reconnects. Idempotent."""
        if self._closing is None and not self.closed:
            self._closing = asyncio.ensure_future(self._close_transport(code, message))
            self._bridge.track(self._closing)

    def close_transport_later(self, code: int, message: bytes) -> None:
        """Close the transport after a grace period: what was sent before has time to leave,
        and a client that closes it first (as socket.io-client does) closes it cleanly."""
        loop = asyncio.get_running_loop()
        loop.call_later(SESSION_END_GRACE_SECONDS, self.close_transport, code, message)

    async def _close_transport(self, code: int, message: bytes) -> None:
        if not self.outbox.closed:
            # What was sent before the close leaves first (bounded: a stalled reader never
            # takes it). Through Engine.IO, "written" is when its transport has written it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_GRACE_SECONDS / 2):
                    await self.outbox.flushed()
                    if not self.direct:
                        await self.engine_sink.written()
        ws = self.ws
        if ws is not None and not ws.closed:
            await close_websocket(ws, self.transport, code, message, grace=CLOSE_GRACE_SECONDS)
        elif self.sid is not None:  # long-polling: the next poll answers a CLOSE packet
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_GRACE_SECONDS):
                    await self._bridge.server.eio.disconnect(self.sid)

    def _slow_consumer(self) -> None:
        # 1008 "policy violation" carries the reason to a WebSocket; either way the client
        # reconnects and catches up with lastSeq.
        self.close_transport(1008, b"slow consumer")

    def gone(self) -> None:
        self.closed = True
        self.outbox.close()


class EngineBridge:
    """The aiohttp route for ``/socket.io/``, serving python-socketio's ASGI interface."""

    def __init__(
        self,
        server: socketio.AsyncServer,
        *,
        outbox_limit: int,
        compression: bool,
        max_message_bytes: int,
        stats: OutboxStats | None = None,
        path: str = "/socket.io/",
    ) -> None:
        self.server = server
        self.outbox_limit = outbox_limit
        self.compression = compression
        self.stats = stats
        self.protocol_errors = 0
        self._max_message_bytes = max_message_bytes
        self._path = path
        # Engine.IO keeps the handshake's environ (and so our connection) while the
        # connection lives: the table forgets it when Engine.IO does.
        self._connections: weakref.WeakValueDictionary[str, EngineConnection] = (
            weakref.WeakValueDictionary()
        )
        self._tasks: set[asyncio.Task[None]] = set()

    def install(self, app: web.Application) -> None:
        app.router.add_route("*", self._path, self.handle)

    def register(self, connection: EngineConnection, open_packet: str | bytes) -> None:
        """The Engine.IO OPEN packet names the connection's sid."""
        try:
            text = open_packet.decode() if isinstance(open_packet, bytes) else open_packet
            sid = json.loads(text[1:])["sid"]
        except (ValueError, KeyError, TypeError):
            return
        connection.sid = str(sid)
        self._connections[connection.sid] = connection

    def track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close_all(self) -> None:
        """Shutdown: drop every transport, so clients reconnect to another instance."""
        for connection in list(self._connections.values()):
            connection.close_transport(1001, b"server shutting down")
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- requests -------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        if "EIO" not in request.query:
            # A person or a probe, not a Socket.IO client (which always names its protocol).
            return web.Response(status=400, text=SOCKETIO_HINT)
        return await self._http(request)

    async def _http(self, request: web.Request) -> web.StreamResponse:
        sid = request.query.get("sid")
        connection = self._connections.get(sid) if sid else None
        handshake = sid is None and request.method == "GET"
        if handshake:
            connection = EngineConnection(self)
        body = await request.read()
        if connection is not None and request.method == "POST" and body:
            try:
                self._check_payload(connection, body)
            except ProtocolError as exc:
                self._protocol_error(connection, str(exc))
                return web.Response(status=400, text="malformed packet")
        response = _HttpResponse()
        received = False

        async def receive() -> ASGIMessage:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}

        await self.server.handle_request(
            self._scope(request, "http", connection), receive, response.send
        )
        payload = b"".join(response.body)
        if connection is not None and request.method == "GET" and response.status == 200:
            if handshake:
                self.register(connection, payload)
            else:
                connection.engine_sink.served(len(payload))
        return web.Response(status=response.status, headers=response.headers, body=payload)

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        sid = request.query.get("sid")
        connection = self._connections.get(sid) if sid else EngineConnection(self)
        if connection is None:
            connection = EngineConnection(self)  # an unknown sid: Engine.IO refuses it
        ws = web.WebSocketResponse(max_msg_size=self._max_message_bytes, compress=self.compression)
        state = _OpenSocket()
        receive = self._ws_receiver(ws, connection)

        async def send(message: ASGIMessage) -> None:
            kind = message["type"]
            if kind == "websocket.accept":
                await ws.prepare(request)
                state.accepted = True
                connection.attach_websocket(ws, request.transport)
            elif kind == "websocket.send":
                text = message.get("text")
                await connection.engine_writes(text if text is not None else message["bytes"])
            elif kind == "websocket.close":
                if state.accepted:
                    await ws.close(code=int(message.get("code") or 1000))
                else:
                    state.refusal = str(message.get("reason") or "Bad Request")

        try:
            await self.server.handle_request(
                self._scope(request, "websocket", connection), receive, send
            )
        finally:
            if connection.direct or connection.ws is ws:
                connection.gone()
            if state.accepted and not ws.closed:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(CLOSE_GRACE_SECONDS):
                        await ws.close()
        if not state.accepted:
            return web.Response(status=400, text=state.refusal or "Bad Request")
        return ws

    def _ws_receiver(
        self, ws: web.WebSocketResponse, connection: EngineConnection
    ) -> Callable[[], Awaitable[ASGIMessage]]:
        connected = False

        async def receive() -> ASGIMessage:
            nonlocal connected
            if not connected:
                connected = True
                return {"type": "websocket.connect"}
            message = await ws.receive()
            if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                try:
                    self._check_frame(connection, message.data)
                except ProtocolError as exc:
                    self._protocol_error(connection, str(exc))
                    return {"type": "websocket.disconnect", "code": 1008}
                if message.type == WSMsgType.TEXT:
                    return {"type": "websocket.receive", "text": message.data}
                return {"type": "websocket.receive", "bytes": message.data}
            return {"type": "websocket.disconnect", "code": ws.close_code or 1005}

        return receive

    def _scope(
        self, request: web.Request, kind: str, connection: EngineConnection | None
    ) -> dict[str, Any]:
        peer = request.remote
        return {
            "type": kind,
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": request.scheme,
            "path": request.path,
            "raw_path": request.raw_path.encode(),
            "query_string": request.query_string.encode(),
            # aiohttp's own tuple, not a copy: Engine.IO upper-cases the names it reads.
            "headers": request.raw_headers,
            "client": (peer, 0) if peer else None,
            SCOPE_KEY: connection,
        }

    # -- the protocol edge ----------------------------------------------------------------------

    def _check_payload(self, connection: EngineConnection, body: bytes) -> None:
        """A long-polling POST: Engine.IO packets separated by \\x1e."""
        try:
            text = body.decode()
        except UnicodeDecodeError:
            raise ProtocolError("the payload is not UTF-8") from None
        for encoded in text.split("\x1e"):
            if encoded.startswith("b"):  # a base64 binary packet
                self._check_frame(connection, b"")
            else:
                self._check_frame(connection, encoded)

    def _check_frame(self, connection: EngineConnection, data: str | bytes) -> None:
        """Raise :class:`ProtocolError` for what python-socketio would fail on."""
        if isinstance(data, bytes):
            if connection.attachments_expected <= 0:
                raise ProtocolError("an unannounced binary frame")
            connection.attachments_expected -= 1
            return
        if not data or data[0] not in ENGINEIO_TYPES:
            raise ProtocolError("not an Engine.IO packet")
        if data[0] != "4":
            return
        if connection.attachments_expected > 0:  # python-socketio takes it as the attachment
            connection.attachments_expected -= 1
            return
        try:
            decoded = sio_packet.Packet(encoded_packet=data[1:])
        except Exception as exc:
            raise ProtocolError(f"{type(exc).__name__}: {str(exc)[:120]}") from None
        if decoded.packet_type not in SOCKETIO_TYPES:
            raise ProtocolError(f"Socket.IO packet type {decoded.packet_type}")
        if decoded.packet_type in (sio_packet.EVENT, sio_packet.BINARY_EVENT):
            if not isinstance(decoded.data, list) or not decoded.data:
                raise ProtocolError("an event without a name")
            namespace = decoded.namespace if decoded.namespace not in (None, "/") else ""
            connection.ack_prefix = (
                None
                if decoded.id is None
                else f"43{namespace}{',' if namespace else ''}{decoded.id}["
            )
        if decoded.packet_type in (sio_packet.BINARY_EVENT, sio_packet.BINARY_ACK):
            namespace = decoded.namespace or "/"
            if connection.sid is None or not self.server.manager.sid_from_eio_sid(
                connection.sid, namespace
            ):
                raise ProtocolError("a binary packet outside a connected namespace")
            count = int(decoded.attachment_count or 0)
            if count < 1:
                raise ProtocolError("a binary packet without attachments")
            connection.attachments_expected = count

    def _protocol_error(self, connection: EngineConnection, reason: str) -> None:
        self.protocol_errors += 1
        log.warning("closing %s: malformed packet (%s)", connection.sid, reason)
        connection.close_transport(1008, b"malformed packet")


class _OpenSocket:
    __slots__ = ("accepted", "refusal")

    def __init__(self) -> None:
        self.accepted = False
        self.refusal = ""


class _HttpResponse:
    """What Engine.IO answers an HTTP request, collected from its ASGI messages."""

    def __init__(self) -> None:
        self.status = 500
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []

    async def send(self, message: ASGIMessage) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            self.headers = [
                (_text(name), _text(value)) for name, value in message.get("headers", [])
            ]
        elif message["type"] == "http.response.body":
            self.body.append(bytes(message.get("body") or b""))


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value
