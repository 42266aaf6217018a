"""The cluster benchmark's baseline: python-socketio's stock ``AsyncRedisManager`` (one Redis
channel, every instance receives and decodes every broadcast) with the same relay events as
ours (join a room; a message goes to the room but its sender). Bench code, not the product.

Usage: python bench/stock_server.py PORT REDIS_URL
``GET /bench/stats`` → ``{messages_received, bytes_received}`` read from Redis.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import socketio
from aiohttp import web


class CountingRedisManager(socketio.AsyncRedisManager):  # type: ignore[misc]
    """The stock manager, counting what its listener reads from Redis."""

    messages_received = 0
    bytes_received = 0

    async def _listen(self) -> AsyncIterator[Any]:
        async for message in super()._listen():
            CountingRedisManager.messages_received += 1
            CountingRedisManager.bytes_received += len(message) if message else 0
            yield message


def main() -> None:
    port, redis_url = int(sys.argv[1]), sys.argv[2]
    manager = CountingRedisManager(redis_url, channel="bench-stock")
    sio = socketio.AsyncServer(
        async_mode="aiohttp", client_manager=manager, cors_allowed_origins="*"
    )
    seqs: dict[str, int] = {}

    @sio.on("joinConsultation", namespace="/chat")  # type: ignore[misc]
    async def join(sid: str, data: dict[str, Any]) -> dict[str, Any]:
        await sio.enter_room(sid, data["consultationId"], namespace="/chat")
        return {"ok": True, "consultation": {"id": data["consultationId"]}, "messages": []}

    @sio.on("sendMessage", namespace="/chat")  # type: ignore[misc]
    async def send(sid: str, data: dict[str, Any]) -> dict[str, Any]:
        cid = data["consultationId"]
        seqs[cid] = seqs.get(cid, 0) + 1
        message = {
            "id": uuid.uuid4().hex, "consultationId": cid, "seq": seqs[cid], "role": "user",
            "userId": "bench", "content": data["content"], "status": "complete",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        }  # fmt: skip
        await sio.emit("userMessage", message, room=cid, skip_sid=sid, namespace="/chat")
        return {"ok": True, "message": message}

    @sio.on("connect", namespace="/chat")  # type: ignore[misc]
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        return None

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "messages_received": CountingRedisManager.messages_received,
                "bytes_received": CountingRedisManager.bytes_received,
            }
        )

    app = web.Application()
    sio.attach(app)
    app.router.add_get("/bench/stats", stats)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
