"""Test helpers: free ports, waiting for sockets, a recording Socket.IO client."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import socketio

NAMESPACE = "/chat"
SERVER_EVENTS = ("userMessage", "aiThinking", "aiChunk", "aiMessage", "error", "rateWarning")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


Predicate = Callable[[dict[str, Any]], bool]


class ChatClient:
    """A real python-socketio client that records every server event of ``/chat``."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        transports: list[str] | None = None,
        headers: dict[str, str] | None = None,
        source_ip: str | None = None,
        reconnection: bool = False,
    ) -> None:
        self.url = url
        self.token = token
        self.transports = transports
        self.headers = headers or {}
        self.events: list[tuple[str, Any]] = []
        self.connect_error: Any = None
        self._changed = asyncio.Condition()
        options: dict[str, Any] = {}
        if source_ip is not None:
            # A distinct client address (127.0.0.x) so nginx's hash spreads test clients.
            def bound_session() -> aiohttp.ClientSession:
                connector = aiohttp.TCPConnector(local_addr=(source_ip, 0))
                return aiohttp.ClientSession(connector=connector)

            options["http_session"] = bound_session
        self.sio = socketio.AsyncClient(
            reconnection=reconnection, reconnection_delay=0.2, reconnection_delay_max=1, **options
        )
        for name in SERVER_EVENTS:
            self.sio.on(name, self._recorder(name), namespace=NAMESPACE)
        self.sio.on("connect_error", self._on_connect_error, namespace=NAMESPACE)

    def _recorder(self, name: str) -> Callable[[Any], Any]:
        async def record(data: Any = None) -> None:
            async with self._changed:
                self.events.append((name, data))
                self._changed.notify_all()

        return record

    async def _on_connect_error(self, data: Any = None) -> None:
        self.connect_error = data

    async def connect(self) -> ChatClient:
        await self.sio.connect(
            self.url,
            namespaces=[NAMESPACE],
            auth={"token": self.token} if self.token else None,
            transports=self.transports,
            headers=self.headers,
            wait_timeout=10,
        )
        return self

    async def disconnect(self) -> None:
        await self.sio.disconnect()

    async def call(self, event: str, data: Any = None, timeout: float = 10) -> Any:
        return await self.sio.call(event, data, namespace=NAMESPACE, timeout=timeout)

    async def emit(self, event: str, data: Any = None) -> None:
        await self.sio.emit(event, data, namespace=NAMESPACE)

    async def join(self, consultation_id: str, **extra: Any) -> dict[str, Any]:
        ack = await self.call("joinConsultation", {"consultationId": consultation_id, **extra})
        assert ack["ok"], ack
        return dict(ack)

    async def send(self, consultation_id: str, content: str, **extra: Any) -> dict[str, Any]:
        ack = await self.call(
            "sendMessage", {"consultationId": consultation_id, "content": content, **extra}
        )
        assert ack["ok"], ack
        return dict(ack["message"])

    def of(self, name: str, predicate: Predicate | None = None) -> list[Any]:
        return [d for n, d in self.events if n == name and (predicate is None or predicate(d))]

    async def wait_for(
        self, name: str, predicate: Predicate | None = None, *, count: int = 1, timeout: float = 10
    ) -> list[Any]:
        """Wait until ``count`` events named ``name`` (matching ``predicate``) have arrived."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.of(name, predicate)) >= count)
        return self.of(name, predicate)

    async def wait_quiet(self, quiet: float = 1.5, timeout: float = 30) -> None:
        """Wait until no event has arrived for ``quiet`` seconds (replies have settled)."""
        async with asyncio.timeout(timeout):
            while True:
                seen = len(self.events)
                await asyncio.sleep(quiet)
                if len(self.events) == seen:
                    return

    async def wait_reply_done(self, count: int = 1, timeout: float = 10) -> None:
        await self.wait_for(
            "aiThinking", lambda d: d["status"] == "done", count=count, timeout=timeout
        )


def chunks_by_message(client: ChatClient) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for chunk in client.of("aiChunk"):
        grouped.setdefault(chunk["messageId"], []).append(chunk)
    return grouped
