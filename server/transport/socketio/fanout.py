"""A lean broadcast path, behind python-socketio's client-manager extension point.

python-socketio's ``AsyncManager.emit`` creates one asyncio task per recipient (each awaiting
``eio.send_packet`` → ``socket.send`` → ``queue.put``) and then waits for all of them: in a
profile of room fan-out that task machinery is about half of the server's CPU. Here a room emit
is encoded once. For a recipient whose WebSocket writer is idle with nothing queued, the same
pre-built frame is written straight to its transport (what its writer would have written, without
waking it); every other recipient gets the packet on its send queue (``put_nowait``: the queue is
unbounded, so nothing is lost or reordered) — no task, no await per recipient. Per-socket
ordering holds (see ``LeanSocket.writable_now``). Emits with an ack callback, and binary
payloads, take the stock path.
"""

from __future__ import annotations

import struct
from typing import Any

import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from .server import LeanSocket


def deliver_locally(
    manager: Any, event: str, data: Any, *, namespace: str, room: Any, skip_sid: Any
) -> bool:
    """Queue one encoded packet for every local participant; False when the stock path must
    handle it (binary payloads)."""
    if namespace not in manager.rooms:
        return True
    if isinstance(data, tuple):
        args = list(data)
    elif data is not None:
        args = [data]
    else:
        args = []
    encoded = encode_event(manager.server.packet_class, namespace, [event, *args])
    if encoded is None:  # binary attachments: several frames per recipient
        return False
    packet = eio_packet.Packet(eio_packet.MESSAGE, encoded)
    wire: bytes | None = None  # the WebSocket frame, built at most once per emit
    skip = set(skip_sid) if isinstance(skip_sid, list) else {skip_sid}
    sockets = manager.server.eio.sockets
    for sid, eio_sid in manager.get_participants(namespace, room):
        if sid in skip:
            continue
        socket = sockets.get(eio_sid)
        if socket is None or socket.closed:
            continue
        transport = socket.writable_now() if isinstance(socket, LeanSocket) else None
        if transport is None:
            socket.queue.put_nowait(packet)
            continue
        if wire is None:
            wire = text_frame(packet.encode().encode())
        transport.write(wire)  # what the socket's writer would have written, minus the hops
    return True


def encode_event(packet_class: Any, namespace: str, data: list[Any]) -> str | None:
    """The Socket.IO EVENT packet, as ``packet_class(EVENT, ...).encode()`` writes it, or None
    when the data holds binary parts (they need attachment frames).

    Encoded directly: the stock packet first walks the whole payload looking for bytes (through
    ``functools.reduce`` and a lambda per value), which costs more than the JSON encoding. The
    JSON encoder refuses bytes anyway, so a payload it accepts has none.
    """
    try:
        body: str = packet_class.json.dumps(data, separators=(",", ":"))
    except TypeError:
        return None
    prefix = str(sio_packet.EVENT) if namespace == "/" else f"{sio_packet.EVENT}{namespace},"
    return prefix + body


def text_frame(payload: bytes) -> bytes:
    """An unmasked, final WebSocket text frame (RFC 6455 §5.2), as a server sends it."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x81, length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x81, 126, length)
    else:
        header = struct.pack("!BBQ", 0x81, 127, length)
    return header + payload


class LeanManager(socketio.AsyncManager):  # type: ignore[misc]
    """The in-process client manager with the lean broadcast path."""

    async def emit(  # noqa: PLR0917  (python-socketio's signature)
        self,
        event: str,
        data: Any,
        namespace: str,
        room: Any = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: Any = None,
        **kwargs: Any,
    ) -> None:
        target = to or room
        if callback is None and deliver_locally(
            self, event, data, namespace=namespace, room=target, skip_sid=skip_sid
        ):
            return
        await super().emit(event, data, namespace, room, skip_sid, callback, to, **kwargs)
