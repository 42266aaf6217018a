"""Test helpers: a recording Socket.IO client, and waiting on conditions."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import socketio

from server.domain.events import CATALOGUE

NAMESPACE = "/chat"
SERVER_EVENTS = tuple(event.name for event in CATALOGUE.server)

T = TypeVar("T")
Predicate = Callable[[dict[str, Any]], bool]


async def eventually(
    check: Callable[[], T | Awaitable[T]], *, timeout: float = 10, interval: float = 0.05
) -> T:
    """Poll ``check`` (sync or async) until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s (last: {result!r})")
        await asyncio.sleep(interval)


class ChatClient:
    """A real python-socketio client that records every server event of ``/chat``."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        auth: dict[str, Any] | None = None,
        transports: list[str] | None = None,
        headers: dict[str, str] | None = None,
        source_ip: str | None = None,
        reconnection: bool = False,
    ) -> None:
        self.url = url
        self.auth = {**(auth or {}), **({"token": token} if token else {})} or None
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
            auth=self.auth,
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

    async def ask(
        self, consultation_id: str, content: str, *, timeout: float = 20
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Send, then wait for the reply that answers it and its ``aiThinking done``: (the stored
        message, the reply)."""
        sent = await self.send(consultation_id, content)
        [reply] = await self.wait_for(
            "aiMessage",
            lambda m: m["consultationId"] == consultation_id and m["seq"] > sent["seq"],
            timeout=timeout,
        )
        position = self.events.index(("aiMessage", reply))

        def done_after_reply() -> bool:
            return any(
                name == "aiThinking" and data["status"] == "done"
                for name, data in self.events[position:]
            )

        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(done_after_reply)
        return sent, reply

    async def fails(self, event: str, data: Any = None) -> str:
        """Send an event that must be refused; return its error code."""
        ack = await self.call(event, data)
        assert ack["ok"] is False, ack
        return str(ack["error"]["code"])

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


def assert_clean_stream(client: ChatClient, message: dict[str, Any]) -> None:
    """The reply's chunks arrived gap-free, in order, once each, and add up to the reply."""
    chunks = chunks_by_message(client)[message["id"]]
    assert [c["index"] for c in chunks] == list(range(len(chunks))), "gap, reorder or duplicate"
    assert "".join(c["content"] for c in chunks) == message["content"]


class RawClient:
    """A plain WebSocket client of ``/ws/chat`` (the ``websockets`` library), recording every
    frame the server sends."""

    def __init__(self, url: str, *, token: str | None = None, path: str = "/ws/chat") -> None:
        base = url.replace("http://", "ws://").replace("https://", "wss://")
        self.url = base + path + (f"?token={token}" if token else "")
        self.frames: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None  # (code, reason) once the server closed
        self._changed = asyncio.Condition()
        self._next_id = 0
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def connect(self, *, wait_connected: bool = True) -> RawClient:
        import websockets

        self._ws = await websockets.connect(self.url, max_size=None, compression=None)
        self._reader = asyncio.create_task(self._read())
        if wait_connected:
            await self.wait_for("connected")
        return self

    async def _read(self) -> None:
        import websockets

        try:
            async for text in self._ws:
                async with self._changed:
                    self.frames.append(json.loads(text))
                    self._changed.notify_all()
        except websockets.ConnectionClosed:
            pass
        async with self._changed:
            self.closed = (self._ws.close_code, self._ws.close_reason)
            self._changed.notify_all()

    async def send_text(self, text: str | bytes) -> None:
        await self._ws.send(text)

    async def emit(self, event: str, data: Any = None, **frame: Any) -> None:
        await self.send_text(json.dumps({"event": event, "data": data, **frame}))

    async def call(self, event: str, data: Any = None, timeout: float = 10) -> dict[str, Any]:
        self._next_id += 1
        frame_id = self._next_id
        # Only acks that arrive after this send count: a fuzzed frame may have carried the same id.
        before = len(self.frames)
        await self.emit(event, data, id=frame_id)

        def answers(ack: dict[str, Any]) -> bool:
            return ack["id"] == frame_id and any(f is ack for f in self.frames[before:])

        [ack] = await self.wait_for("ack", answers, timeout=timeout, raw=True)
        return dict(ack["data"])

    async def join(self, consultation_id: str, **extra: Any) -> dict[str, Any]:
        ack = await self.call("joinConsultation", {"consultationId": consultation_id, **extra})
        assert ack["ok"], ack
        return ack

    async def send(self, consultation_id: str, content: str, **extra: Any) -> dict[str, Any]:
        ack = await self.call(
            "sendMessage", {"consultationId": consultation_id, "content": content, **extra}
        )
        assert ack["ok"], ack
        return dict(ack["message"])

    def of(self, event: str, predicate: Predicate | None = None, *, raw: bool = False) -> list[Any]:
        found = [f if raw else f["data"] for f in self.frames if f["event"] == event]
        return [d for d in found if predicate is None or predicate(d)]

    async def wait_for(
        self,
        event: str,
        predicate: Predicate | None = None,
        *,
        count: int = 1,
        timeout: float = 10,
        raw: bool = False,
    ) -> list[Any]:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(
                lambda: len(self.of(event, predicate, raw=raw)) >= count or self.closed is not None
            )
        found = self.of(event, predicate, raw=raw)
        if len(found) < count:
            raise AssertionError(f"closed {self.closed} before {count} {event!r}: {self.frames}")
        return found

    async def wait_closed(self, timeout: float = 15) -> tuple[int, str]:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self.closed is not None)
        assert self.closed is not None
        return self.closed

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await self._reader


async def limits_hold_across_instances(
    url_a: str, url_b: str, connect: Callable[..., Awaitable[ChatClient]], token: str
) -> None:
    """Two instances started with ``RATE_LIMIT_MESSAGES=4`` and ``MAX_CONNECTIONS_PER_USER=2``:
    the user's four messages, two through each, use up the rate limit on both; a third
    connection is refused while one is open on each; a slot freed on B is free on A."""
    on_a = await connect(url_a, token=token, join="limited")
    on_b = await connect(url_b, token=token, join="limited")
    for i in range(4):
        await (on_a if i % 2 else on_b).send("limited", f"m{i}")
    for client in (on_a, on_b):
        refused = await client.call("sendMessage", {"consultationId": "limited", "content": "x"})
        assert refused["error"]["code"] == "rate_limited"
    third = ChatClient(url_a, token=token)
    try:
        await third.connect()
    except socketio.exceptions.ConnectionError:
        pass
    else:
        raise AssertionError("a third connection was accepted")
    assert third.connect_error["data"]["code"] == "too_many_connections"
    await on_b.disconnect()

    async def try_connect() -> ChatClient | None:
        client = ChatClient(url_a, token=token)
        try:
            return await client.connect()
        except socketio.exceptions.ConnectionError:
            return None

    # B's slot is freed cluster-wide once B has seen the disconnect.
    again = await eventually(try_connect, timeout=10)
    assert again.sio.connected
    await again.disconnect()


JS = Path(__file__).resolve().parent / "js"
BUNDLE = JS / "node_modules" / "socket.io-client" / "dist" / "socket.io.min.js"  # the browser build


async def run_node(script: str, *args: str, timeout: float = 30) -> dict[str, Any]:
    """Run ``tests/js/<script>`` with the official socket.io-client; its last stdout line is
    a JSON report."""
    node = shutil.which("node")
    if node is None or not (JS / "node_modules" / "socket.io-client").is_dir():
        pytest.fail("node and tests/js/node_modules are needed: run scripts/test")
    process = await asyncio.create_subprocess_exec(
        node,
        str(JS / script),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode == 0, (stdout, stderr)
    result: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    return result


async def run_browser_script(script: str, *args: str, timeout: float = 150) -> dict[str, Any]:
    """Run a headless-Chromium scenario ``tests/js/<script>`` (playwright-core) through
    :func:`run_node`; its report must not name a failed step."""
    if not (JS / "node_modules" / "playwright-core").is_dir():
        pytest.fail("tests/js/node_modules is needed: run scripts/test")
    if shutil.which("chromium") is None:
        pytest.fail("chromium is needed: scripts/test installs it")
    seen = await run_node(script, *args, timeout=timeout)
    assert "failure" not in seen, (seen["lastStep"], seen["failure"])
    return seen
