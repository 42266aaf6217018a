"""The Rooms port on python-socketio's rooms (and, with Redis, its client manager)."""

from __future__ import annotations

import socketio

from ...domain.events import ServerEvent


class SocketIORooms:
    def __init__(self, sio: socketio.AsyncServer, namespace: str) -> None:
        self._sio = sio
        self._namespace = namespace

    async def join(self, connection_id: str, room: str) -> None:
        await self._sio.enter_room(connection_id, room, namespace=self._namespace)

    async def leave(self, connection_id: str, room: str) -> None:
        await self._sio.leave_room(connection_id, room, namespace=self._namespace)

    async def to_room(self, room: str, event: ServerEvent, *, skip: str | None = None) -> None:
        await self._sio.emit(
            event.name, event.to_wire(), room=room, namespace=self._namespace, skip_sid=skip
        )

    async def to_connection(self, connection_id: str, event: ServerEvent) -> None:
        await self._sio.emit(
            event.name, event.to_wire(), to=connection_id, namespace=self._namespace
        )
