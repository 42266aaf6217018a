"""The Notifier port on Socket.IO: domain events go to a consultation's room."""

from __future__ import annotations

from typing import Any

import socketio

from ..domain.models import ConsultationKey


class SocketIONotifier:
    def __init__(self, sio: socketio.AsyncServer, namespace: str) -> None:
        self._sio = sio
        self._namespace = namespace

    async def to_room(
        self, key: ConsultationKey, event: str, data: dict[str, Any], *, skip: str | None = None
    ) -> None:
        await self._sio.emit(event, data, room=key.room, namespace=self._namespace, skip_sid=skip)

    async def to_connection(self, connection_id: str, event: str, data: dict[str, Any]) -> None:
        await self._sio.emit(event, data, to=connection_id, namespace=self._namespace)
