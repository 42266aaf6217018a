"""A Socket.IO connection as a member of the room hub: frames go through its outbox."""

from __future__ import annotations

from ..rooms import Frame
from .bridge import EngineConnection


class SocketIOMember:
    __slots__ = ("_connection", "_namespace", "id")

    def __init__(self, connection_id: str, connection: EngineConnection, namespace: str) -> None:
        self.id = connection_id
        self._connection = connection
        self._namespace = namespace

    def deliver(self, frame: Frame) -> None:
        namespace = self._namespace
        self._connection.send(frame.engineio_text(namespace), frame.socketio_ws(namespace))
