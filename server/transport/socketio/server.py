"""The Socket.IO server, built from settings, hardened at the protocol edge.

- A peer that sends an undecodable Socket.IO packet is disconnected with one warning, as the
  reference server does on a parse error (python-socketio would log a traceback per packet and
  keep the peer).
- WebSocket frames that are not Engine.IO packets close the peer before Engine.IO parses them.
- Each socket's writer waits for packets without a task per wakeup, and its reader without a
  task per packet (:class:`LeanSocket`).
- permessage-deflate is configurable and off by default (python-engineio turns it on, and every
  browser asks for it: it costs CPU and ~90 KB of memory per connection for small chat frames).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import socketio
from aiohttp.web import WebSocketResponse
from engineio.async_drivers.aiohttp import WebSocket as DriverWebSocket
from engineio.async_socket import AsyncSocket
from engineio.exceptions import QueueEmpty, SocketIsClosedError
from engineio.exceptions import UnknownPacketError as EngineIOUnknownPacket
from engineio.packet import Packet

from ...config import Settings

log = logging.getLogger(__name__)

ENGINEIO_PACKET_TYPES = frozenset("0123456")


class ChatServer(socketio.AsyncServer):  # type: ignore[misc]
    protocol_errors = 0

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        socket = self.eio.sockets.get(eio_sid)
        if socket is None or socket.closed or socket.closing:
            return  # frames still in flight from a peer we closed
        try:
            await super()._handle_eio_message(eio_sid, data)
        except Exception as exc:
            # Our own handlers answer every error themselves (acks.py): what arrives here is
            # a packet python-socketio could not decode.
            self.protocol_errors += 1
            log.warning(
                "closing %s: malformed Socket.IO packet (%s: %s)",
                eio_sid,
                type(exc).__name__,
                str(exc)[:120],
            )
            await close_sockets(self, [eio_sid])


class LeanSocket(AsyncSocket):  # type: ignore[misc]
    """An Engine.IO socket whose writer waits for packets without creating a task per wakeup.

    The stock ``poll`` wraps every ``queue.get()`` in ``asyncio.wait_for``, which on Python
    3.11 creates a Task each time a socket's writer wakes up: ~22% of the server's CPU in room
    fan-out. ``asyncio.timeout`` gives the same deadline without the task.
    """

    connected: bool  # Engine.IO's own attributes, typed for the handler below
    upgraded: bool
    idle = False  # the writer waits on an empty queue: nothing of this socket is in flight
    websocket: WebSocketResponse | None = None  # set once upgraded, when frames go out raw
    transport: asyncio.Transport | None = None  # duck-typed: uvloop's are not asyncio's classes

    async def poll(self) -> list[Packet]:
        queue = self.queue
        self.idle = True
        try:
            async with asyncio.timeout(self.server.ping_interval + self.server.ping_timeout):
                first = await queue.get()
        except (TimeoutError, asyncio.CancelledError):  # as the stock poll: the writer ends
            raise QueueEmpty() from None
        finally:
            self.idle = False
        queue.task_done()
        if first is None:  # the end-of-stream marker
            return []
        packets = [first]
        while not queue.empty():
            packet = queue.get_nowait()
            queue.task_done()
            if packet is None:
                queue.put_nowait(None)  # leave the marker for the next poll
                break
            packets.append(packet)
        return packets

    async def _websocket_handler(self, ws: Any) -> None:
        """The stock handler for a socket that starts on WebSocket, with its read loop
        waiting under ``asyncio.timeout``: the stock loop creates a Task per received packet
        and a second one in ``wait_for`` (~7% of the CPU of room fan-out). A socket upgrading
        from long-polling takes the stock path (rare, and it has a handshake of its own)."""
        if self.connected:
            await super()._websocket_handler(ws)
            return
        self.connected = self.upgraded = True
        writer_task = asyncio.ensure_future(self._write_frames(ws))
        timeout = self.server.ping_interval + self.server.ping_timeout
        limit = self.server.max_http_buffer_size
        while True:
            try:
                async with asyncio.timeout(timeout):
                    data = await ws.wait()
            except (Exception, asyncio.CancelledError):  # as the stock loop: the socket ends
                break
            if data is None or len(data) > limit:  # closed by the client, or too large
                break
            try:
                await self.receive(Packet(encoded_packet=data))
            except EngineIOUnknownPacket:
                pass
            except SocketIsClosedError:
                break
            except Exception:
                self.server.logger.exception("Unknown receive error")
        await self.queue.put(None)  # unlock the writer so it can exit
        await writer_task
        await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)

    async def _write_frames(self, ws: Any) -> None:
        """The stock handler's writer: the queued packets, in order, until the queue ends."""
        while True:
            try:
                packets = await self.poll()
            except QueueEmpty:
                break
            if not packets:  # the end-of-stream marker: the connection is closing
                break
            try:
                for packet in packets:
                    await ws.send(packet.encode())
            except Exception:
                break
        await ws.close()

    async def close(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().close(*args, **kwargs)
        finally:
            # Drop the references at once: they tie the socket, its WebSocket and the request
            # into cycles that would otherwise wait for a (rare, tuned) full collection.
            self.websocket = self.transport = None

    def writable_now(self) -> asyncio.WriteTransport | None:
        """The transport a broadcast frame may be written to directly, or None.

        Only while the writer is parked on an empty queue (so no earlier packet of this socket
        is waiting or being written: order holds), on an upgraded, open WebSocket without
        compression. A packet put on the queue wakes the writer but stays in the queue until
        the writer runs, so ``queue.empty()`` also covers that moment.
        """
        websocket, transport = self.websocket, self.transport
        if (
            websocket is None
            or not self.idle
            or not self.upgraded
            or self.upgrading
            or self.closed
            or self.closing
            or not self.queue.empty()
            or websocket.closed
            or transport is None
            or transport.is_closing()
        ):
            return None
        return transport


class LeanSockets(dict[str, Any]):
    """``eio.sockets``: every socket Engine.IO registers becomes a :class:`LeanSocket` (a
    subclass that only replaces ``poll``) before its writer starts."""

    def __setitem__(self, sid: str, socket: Any) -> None:
        if type(socket) is AsyncSocket:
            socket.__class__ = LeanSocket
        super().__setitem__(sid, socket)


def websocket_class(compression: bool) -> type[DriverWebSocket]:
    class TunedWebSocket(DriverWebSocket):  # type: ignore[misc]
        async def __call__(self, environ: dict[str, Any]) -> WebSocketResponse:
            # The driver's own __call__, with compression as configured.
            request = environ["aiohttp.request"]
            self._sock = WebSocketResponse(
                max_msg_size=self.server.max_http_buffer_size, compress=compression
            )
            await self._sock.prepare(request)
            owner = getattr(self.handler, "__self__", None)
            if isinstance(owner, LeanSocket) and not compression:
                # Broadcasts may now write this socket's frames directly (members.py).
                owner.websocket, owner.transport = self._sock, request.transport
            self.environ = environ
            await self.handler(self)
            return self._sock

        async def wait(self) -> str | bytes:
            data: str | bytes = await super().wait()
            if isinstance(data, str) and (not data or data[0] not in ENGINEIO_PACKET_TYPES):
                raise OSError("not an Engine.IO packet")  # Engine.IO closes the socket
            return data

    return TunedWebSocket


class ClientErrorLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The logger given to python-socketio/engineio. What they log at ERROR is a client's bad
    request (a bare ``GET /socket.io/``, an unknown sid, a bad transport), said once: a WARNING
    here, without traceback. What they log at INFO is a protocol trace of every packet, auth
    and message text included: dropped, since message text and tokens never reach our logs
    (repeats of a client error are among them). Their bugs still log with a traceback
    (``exception``). Passing a logger object also keeps them from adding their own handler,
    which printed every line twice."""

    REPEATS = " (further occurrences of this error will be logged with level INFO)"

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})

    def error(self, msg: object, *args: Any, **kwargs: Any) -> None:
        kwargs.pop("exc_info", None)
        if isinstance(msg, str):
            msg = msg.replace(self.REPEATS, " (repeats are not logged)")
        self.log(logging.WARNING, msg, *args, **kwargs)

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        return None


def create_server(settings: Settings) -> ChatServer:
    server = ChatServer(
        async_mode="aiohttp",
        cors_allowed_origins=settings.allowed_origins,
        # Events of one socket run in the order they were sent (a send emitted right after a
        # join must find the join done); AI replies run as their own tasks, so nothing slow
        # holds a socket.
        async_handlers=False,
        ping_interval=settings.ping_interval,
        ping_timeout=settings.ping_timeout,
        max_http_buffer_size=settings.max_http_buffer_size,
        logger=ClientErrorLogger(logging.getLogger("socketio.server")),
        engineio_logger=ClientErrorLogger(logging.getLogger("engineio.server")),
    )
    server.eio.sockets = LeanSockets()
    # The aiohttp driver's WebSocket wrapper is python-engineio's hook for this.
    server.eio._async = {
        **server.eio._async,
        "websocket": websocket_class(settings.ws_compression),
    }
    return server


async def close_sockets(server: socketio.AsyncServer, eio_sids: list[str] | None = None) -> None:
    """Close Engine.IO sockets (all by default): socket.io-client reconnects after a transport
    close, not after a Socket.IO "server disconnect". ``eio.disconnect()`` is not used: it
    waits for each socket's queue to drain, forever for a client that has just gone away."""
    sids = list(server.eio.sockets) if eio_sids is None else eio_sids
    sockets = [s for sid in sids if (s := server.eio.sockets.get(sid)) is not None]
    if not sockets:
        return
    reason = server.eio.reason.SERVER_DISCONNECT
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(2):
            await asyncio.gather(
                *(s.close(wait=False, reason=reason) for s in sockets), return_exceptions=True
            )
