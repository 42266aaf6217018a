"""A lean broadcast path, behind python-socketio's client-manager extension point.

python-socketio's ``AsyncManager.emit`` creates one asyncio task per recipient (each awaiting
``eio.send_packet`` → ``socket.send`` → ``queue.put``) and then waits for all of them: in a
profile of room fan-out that task machinery is about half of the server's CPU. Here a room emit
is encoded once, and the same Engine.IO packet goes straight onto each local recipient's send
queue (``put_nowait``: the queue is unbounded, so nothing is lost or reordered) — no task, no
await per recipient. Each socket's writer sends its queue in order, so per-socket ordering
holds. Emits with an ack callback, and binary payloads, take the stock path.
"""

from __future__ import annotations

from typing import Any

import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet


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
    encoded = manager.server.packet_class(
        sio_packet.EVENT, namespace=namespace, data=[event, *args]
    ).encode()
    if isinstance(encoded, list):  # binary attachments: several frames per recipient
        return False
    frame = eio_packet.Packet(eio_packet.MESSAGE, encoded)
    skip = set(skip_sid) if isinstance(skip_sid, list) else {skip_sid}
    sockets = manager.server.eio.sockets
    for sid, eio_sid in manager.get_participants(namespace, room):
        if sid in skip:
            continue
        socket = sockets.get(eio_sid)
        if socket is not None and not socket.closed:
            socket.queue.put_nowait(frame)
    return True


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
