"""The WebSocket side of an outbox, on aiohttp's public API.

While the socket's write buffer is under its high-water mark, a frame is written straight
into it (``asyncio.Transport.write``: no task, no await per recipient; a broadcast's frame is
built once and shared). Past the mark the outbox holds frames and drains them with
``WebSocketResponse.send_str``, which waits for the transport to drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

from aiohttp import web

from ..fanout.outbox import Outbox

DEFAULT_HIGH_WATER = 64 * 1024  # asyncio's default for a socket transport


def websocket_frame(payload: bytes, *, binary: bool = False) -> bytes:
    """An unmasked, final WebSocket frame (RFC 6455 §5.2), as a server sends it."""
    opcode = 0x82 if binary else 0x81
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", opcode, length)
    elif length < 65536:
        header = struct.pack("!BBH", opcode, 126, length)
    else:
        header = struct.pack("!BBQ", opcode, 127, length)
    return header + payload


class WebSocketSink:
    __slots__ = ("_high", "_transport", "_ws")

    def __init__(
        self, ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None, *, direct: bool
    ) -> None:
        self._ws = ws
        # Direct writes only without compression (a compressed frame needs the socket's
        # deflate context) and on a transport that can say how full it is.
        # uvloop's transports are not asyncio's classes: they are asked for what is used.
        writable = hasattr(transport, "get_write_buffer_size") and hasattr(transport, "write")
        self._transport: asyncio.WriteTransport | None = (
            transport if direct and writable else None  # type: ignore[assignment]
        )
        self._high = DEFAULT_HIGH_WATER
        if self._transport is not None:
            self._high = self._transport.get_write_buffer_limits()[1] or DEFAULT_HIGH_WATER

    def write_now(self, data: str | bytes, frame: bytes | None) -> bool:
        transport = self._transport
        if (
            transport is None
            or transport.is_closing()
            or self._ws.closed
            or transport.get_write_buffer_size() >= self._high
        ):
            return False
        if frame is None:
            if isinstance(data, bytes):
                frame = websocket_frame(data, binary=True)
            else:
                frame = websocket_frame(data.encode())
        transport.write(frame)
        return True

    async def write(self, data: str | bytes) -> None:
        if isinstance(data, str):
            await self._ws.send_str(data)
        else:
            await self._ws.send_bytes(data)


async def close_websocket(
    ws: web.WebSocketResponse,
    transport: asyncio.BaseTransport | None,
    code: int,
    message: bytes,
    *,
    grace: float = 2.0,
    outbox: Outbox | None = None,
) -> None:
    """Close with ``code`` after what ``outbox`` holds; a peer that does not take the close
    frame within ``grace`` seconds (a stalled reader) loses its TCP connection instead."""
    if ws.closed:
        return
    if outbox is not None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace / 2):
                await outbox.flushed()
        outbox.close()
    try:
        async with asyncio.timeout(grace):
            await ws.close(code=code, message=message)
    except (TimeoutError, ConnectionError, RuntimeError):
        abort = getattr(transport, "abort", None)
        if abort is not None:
            abort()
