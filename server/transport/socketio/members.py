"""A Socket.IO connection as a member of the room hub: frames go through its outbox."""

from __future__ import annotations

from ...fanout.frames import Frame
from .bridge import EngineConnection
from .codec import SocketIOCodec


class SocketIOMember:
    __slots__ = ("_codec", "_connection", "id")

    def __init__(
        self, connection_id: str, connection: EngineConnection, codec: SocketIOCodec
    ) -> None:
        self.id = connection_id
        self._connection = connection
        self._codec = codec

    def deliver(self, frame: Frame) -> None:
        text, wire = self._codec.encode(frame)
        self._connection.send(text, wire)
