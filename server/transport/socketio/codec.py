"""The Socket.IO wire encoding of a hub frame: an EVENT packet in an Engine.IO MESSAGE, as
python-socketio encodes it, and the WebSocket frame that carries it."""

from __future__ import annotations

from ...fanout.frames import Frame
from ..sinks import websocket_frame


class SocketIOCodec:
    """Encodes frames for one namespace; each frame once, whoever receives it."""

    __slots__ = ("_prefix",)

    def __init__(self, namespace: str) -> None:
        self._prefix = f"42{namespace}," if namespace != "/" else "42"

    def encode(self, frame: Frame) -> tuple[str, bytes]:
        """``("42/chat,[name,data]", its WebSocket frame)``."""
        encoded: tuple[str, bytes] | None = frame.encoded.get(self)
        if encoded is None:
            text = f'{self._prefix}["{frame.event}",{frame.data_json}]'
            encoded = frame.encoded[self] = (text, websocket_frame(text.encode()))
        return encoded
