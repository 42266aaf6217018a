"""A Socket.IO connection as a member of the room hub.

A frame reaches the socket the way its Engine.IO writer would send it, minus the hops: when
the writer is parked on an empty queue on an open WebSocket (nothing of this socket is queued
or being written, so order holds), the pre-built WebSocket frame is written straight to the
transport; otherwise the Engine.IO packet goes on the socket's queue (unbounded: nothing is
lost or reordered). No task and no await per recipient.
"""

from __future__ import annotations

from typing import Any

from engineio import packet as eio_packet

from ..rooms import Frame
from .server import LeanSocket


class SocketIOMember:
    __slots__ = ("_eio_sid", "_namespace", "_sockets", "id")

    def __init__(self, connection_id: str, eio_sid: str, sockets: Any, namespace: str) -> None:
        self.id = connection_id
        self._eio_sid = eio_sid
        self._sockets = sockets  # the Engine.IO server's socket table
        self._namespace = namespace

    def deliver(self, frame: Frame) -> None:
        socket = self._sockets.get(self._eio_sid)
        if socket is None or socket.closed:
            return
        transport = socket.writable_now() if isinstance(socket, LeanSocket) else None
        if transport is None:
            if frame.packet is None:
                frame.packet = eio_packet.Packet(
                    eio_packet.MESSAGE, frame.socketio_text(self._namespace)
                )
            socket.queue.put_nowait(frame.packet)
        else:
            transport.write(frame.socketio_ws(self._namespace))
