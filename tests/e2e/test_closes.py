"""Server-initiated closes, by reason, as real clients see them.

- A token's expiry ends the session: the official socket.io-client gets ``error
  {code: "token_expired"}``, then ``disconnect`` with ``"io server disconnect"`` within 2 s of
  ``exp``, and stays disconnected, on every transport.
- A consumer that stops reading is closed once what waits for it passes ``OUTBOX_MAX_BYTES``,
  while the server's memory stays bounded and the healthy members get every message in order.
- An instance shutting down drops the transport: clients reconnect.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest

from server.app import COMPONENTS
from tests.conftest import JWT_SECRET, StartServer, make_token
from tests.e2e.test_raw_websocket import raw
from tests.helpers import ChatClient, eventually, run_node
from tests.servers import AppProcess, MongoServer


async def node_closes(url: str, token: str, transports: str, watch_ms: int) -> dict[str, Any]:
    return await run_node("closes.mjs", url, token, transports, str(watch_ms), timeout=40)


@pytest.mark.parametrize("transports", ["websocket", "polling,websocket", "polling"])
async def test_an_expired_token_ends_the_session_on_every_transport(
    start_server: StartServer, transports: str
) -> None:
    server = await start_server(jwt_secret=JWT_SECRET)
    token = make_token("ivy", expires_in=timedelta(seconds=3))
    expires_ms = jwt.decode(token, options={"verify_signature": False})["exp"] * 1000
    seen = await node_closes(server.url, token, transports, watch_ms=2500)

    assert seen["connects"] == 1, seen  # never reconnected with the dead token
    assert seen["connectErrors"] == [], seen
    [expired] = [e for e in seen["errors"] if e["code"] == "token_expired"]
    [disconnect] = seen["disconnects"]  # and nothing after it for 2.5 s
    assert disconnect["reason"] == "io server disconnect", seen
    assert disconnect["active"] is False  # socket.io-client will not reconnect by itself
    assert expires_ms <= expired["at"] <= disconnect["at"] <= expires_ms + 2000, seen
    if transports != "polling":
        assert seen["transport"] == "websocket"
    assert server.app[COMPONENTS].connections.count == 0


async def test_a_policy_close_of_the_raw_websocket_uses_its_code(
    start_server: StartServer,
) -> None:
    """/ws/chat: token expiry closes with 4401 (the Socket.IO side is above)."""
    server = await start_server(jwt_secret=JWT_SECRET)
    client = await raw(server.url, token=make_token("rae", expires_in=timedelta(seconds=2)))
    [error] = await client.wait_for("error", lambda e: e["code"] == "token_expired", timeout=6)
    code, reason = await client.wait_closed()
    assert (code, reason) == (4401, "token expired")
    assert error["code"] == "token_expired"


async def test_shutting_down_drops_transports_so_clients_reconnect(
    start_server: StartServer,
) -> None:
    server = await start_server()
    seen = asyncio.create_task(node_closes(server.url, "", "websocket", watch_ms=1500))
    await eventually(lambda: server.app[COMPONENTS].connections.count == 1)
    await server.app[COMPONENTS].bridge.close_all()
    result = await seen
    assert result["disconnects"][0]["reason"] == "transport close", result
    assert result["disconnects"][0]["active"] is True  # it reconnects by itself
    assert result["connects"] == 2, result


# -- slow consumers -------------------------------------------------------------------------------

MESSAGES = 300
CONTENT = 60_000  # characters per message, as in the report: 300 x 60 kB = 18 MB per member
OUTBOX = 1024 * 1024


class StalledWebSocket:
    """A WebSocket client that stops reading after its handshake: a tiny receive buffer, and
    nobody reads it. Only the set-up frames are read."""

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(4096)
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head

    def send(self, text: str) -> None:
        payload, mask = text.encode(), os.urandom(4)
        length = len(payload)
        header = (
            struct.pack("!BB", 0x81, 0x80 | length)
            if length < 126
            else (struct.pack("!BBH", 0x81, 0x80 | 126, length))
        )
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def receive_until(self, prefix: str) -> None:
        while True:
            while len(self.buffer) < 2 or len(self.buffer) < self._frame_length():
                chunk = self.sock.recv(65536)
                assert chunk, "closed during set-up"
                self.buffer += chunk
            size, start = self._frame_length(), self._payload_start()
            text = self.buffer[start:size].decode()
            self.buffer = self.buffer[size:]
            if text.startswith(prefix):
                return

    def _payload_start(self) -> int:
        length = self.buffer[1] & 0x7F
        return 2 if length < 126 else 4 if length == 126 else 10

    def _frame_length(self) -> int:
        length = self.buffer[1] & 0x7F
        if length == 126:
            if len(self.buffer) < 4:
                return 4
            length = struct.unpack("!H", self.buffer[2:4])[0]
        elif length == 127:
            if len(self.buffer) < 10:
                return 10
            length = struct.unpack("!Q", self.buffer[2:10])[0]
        return self._payload_start() + length

    def is_closed_by_server(self) -> bool:
        """Read what is buffered: True when the server ended the TCP connection."""
        self.sock.settimeout(0.5)
        try:
            while self.sock.recv(1 << 20):
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        return True


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field}")


async def test_stalled_members_of_both_transports_are_closed_and_memory_stays_bounded(
    mongo_server: MongoServer, tmp_path: Path
) -> None:
    app = AppProcess(
        {
            "MONGODB_URL": mongo_server.url,
            "MONGODB_DB": f"slow_{os.getpid()}_{id(tmp_path)}",
            "AI_REPLIES": "off",
            "MAX_MESSAGE_CHARS": str(CONTENT),
            "RATE_LIMIT_MESSAGES": "100000",
            "OUTBOX_MAX_BYTES": str(OUTBOX),
        },
        tmp_path / "server.log",
    )
    app.start()
    try:
        app.wait_ready()
        stalled_sio = StalledWebSocket(app.port, "/socket.io/?EIO=4&transport=websocket")
        stalled_sio.receive_until("0{")
        stalled_sio.send("40/chat,")
        stalled_sio.receive_until("40/chat,")
        stalled_sio.send('42/chat,1["joinConsultation",{"consultationId":"slow"}]')
        stalled_sio.receive_until("43/chat,1")
        stalled_raw = StalledWebSocket(app.port, "/ws/chat?userId=stalled")
        stalled_raw.receive_until('{"event":"connected"')
        stalled_raw.send('{"event":"joinConsultation","data":{"consultationId":"slow"},"id":1}')
        stalled_raw.receive_until('{"event":"ack"')

        healthy = ChatClient(app.url, auth={"userId": "healthy"})
        sender = ChatClient(app.url, auth={"userId": "sender"})
        await healthy.connect()
        await sender.connect()
        await healthy.join("slow")
        await sender.join("slow")
        before = rss_kb(_pid(app))
        body = "x" * (CONTENT - 10)
        for number in range(1, MESSAGES + 1):
            ack = await sender.send("slow", f"{number:09d} {body}")
            assert ack["seq"] == number
        await healthy.wait_for("userMessage", lambda m: m["seq"] == MESSAGES, timeout=60)
        peak = rss_kb(_pid(app), "VmHWM")

        seqs = [m["seq"] for m in healthy.of("userMessage") if m["consultationId"] == "slow"]
        assert seqs == list(range(1, MESSAGES + 1))  # every one, in order, none twice
        metrics = await asyncio.to_thread(_get_text, app.url + "/metrics")
        assert "chat_slow_consumer_disconnects_total 2.0" in metrics, metrics[-3000:]
        assert stalled_sio.is_closed_by_server() and stalled_raw.is_closed_by_server()
        # Unbounded, each stalled member held ~18 MB less the socket buffers: 30+ MB in all.
        growth_mb = (peak - before) / 1024
        assert growth_mb < 2 * OUTBOX / 2**20 + 10, f"RSS grew {growth_mb:.1f} MB"
        await healthy.disconnect()
        await sender.disconnect()
    finally:
        app.stop()


def _pid(app: AppProcess) -> int:
    assert app.process is not None
    return app.process.pid


def _get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())
