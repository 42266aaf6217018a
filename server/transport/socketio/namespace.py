"""Namespace ``/chat``: connect through the connection policy, hand every event to the
session's ``dispatch``, answer its ack. No chat logic lives here.

Connection ids are ``<sid>@<instance>``, so that any instance can route to them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import socketio

from ...domain.connections import CloseReason, ConnectionService
from ...domain.events import ErrorAck
from ...errors import AppError, InvalidPayload, Unauthorized
from ...fanout.hub import RoomHub
from ..auth import token_from_handshake
from ..net import Network, handshake_address
from .bridge import SCOPE_KEY, EngineConnection
from .codec import SocketIOCodec
from .members import SocketIOMember

log = logging.getLogger(__name__)

NAMESPACE = "/chat"


class ChatNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    def __init__(
        self,
        connections: ConnectionService,
        hub: RoomHub,
        trusted_proxies: Sequence[Network] = (),
    ) -> None:
        super().__init__(NAMESPACE)
        self._connections = connections
        self._hub = hub
        self._proxies = tuple(trusted_proxies)
        self._engine: dict[str, EngineConnection] = {}  # Socket.IO sid -> its connection
        self._codec = SocketIOCodec(NAMESPACE)

    def connection_id(self, sid: str) -> str:
        return f"{sid}@{self._hub.instance_id}"

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        connection: EngineConnection = environ["asgi.scope"][SCOPE_KEY]
        # python-socketio keeps the handshake's environ while the connection lives. Its body
        # reader was read to the end, and python-engineio defines a class per request for it
        # (about 2.5 kB an idle connection would carry).
        environ.pop("wsgi.input", None)

        async def close(reason: CloseReason) -> None:
            if reason.ends_session:
                # A Socket.IO DISCONNECT (after the error event already in the outbox):
                # socket.io-client reports "io server disconnect" and does not reconnect with
                # a dead token. The transport follows, unless the client closes it first.
                await connection.flushed()
                await self.server.disconnect(sid, namespace=NAMESPACE)
                connection.close_transport_later(1000, b"session ended")
            else:
                # A transport close: socket.io-client reconnects and catches up.
                connection.close_transport(1001, reason.value.replace("_", " ").encode())

        cid = self.connection_id(sid)
        self._engine[sid] = connection
        self._hub.attach(SocketIOMember(cid, connection, self._codec))
        try:
            await self._connections.open(
                token_from_handshake(environ, auth),
                cid,
                close,
                dev=auth if isinstance(auth, dict) else None,
                transport="socketio",
                address=handshake_address(environ, self._proxies),
            )
        except AppError as exc:
            self._engine.pop(sid, None)
            await self._hub.detach(cid)
            # Two arguments: socket.io-client then sees err.message and err.data.code.
            raise socketio.exceptions.ConnectionRefusedError(exc.code, exc.to_wire()) from None

    async def on_disconnect(self, sid: str, reason: str | None = None) -> None:
        cid = self.connection_id(sid)
        self._engine.pop(sid, None)
        await self._connections.close(cid)
        await self._hub.detach(cid)

    async def trigger_event(self, event: Any, *args: Any) -> Any:
        sid = args[0] if args else None
        if self._is_lifecycle(event, sid):
            return await super().trigger_event(event, *args)
        ack = await self._handle(event, str(sid), args[1:])
        connection = self._engine.get(str(sid))
        if connection is not None:
            await connection.before_ack()
        return ack

    async def _handle(self, event: Any, sid: str, data: tuple[Any, ...]) -> Any:
        session = self._connections.session(self.connection_id(sid))
        if session is None:
            error = Unauthorized("This connection has no session")
            return ErrorAck(error=error.to_wire()).to_wire()
        if len(data) > 1:
            invalid = InvalidPayload("expected one payload object")
            await session.fail(invalid)
            return ErrorAck(error=invalid.to_wire()).to_wire()
        # Unknown events, and reserved names sent as events by a client, are answered by
        # dispatch with unknown_event instead of silence (or a second handshake).
        name = event if isinstance(event, str) else repr(event)
        return await session.dispatch(name, data[0] if data else None)

    def _is_lifecycle(self, event: Any, sid: Any) -> bool:
        if event == "connect":
            return self._connections.session(self.connection_id(str(sid))) is None
        if event == "disconnect":
            # During a real disconnect python-socketio has already marked the sid as leaving.
            return not self.server.manager.is_connected(sid, NAMESPACE)
        return False
