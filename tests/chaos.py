"""The chaos run (``scripts/chaos``): nothing a user saw is lost while instances, Redis and
MongoDB die, pause and restart under load.

Three ``python -m server`` instances behind the real nginx (``deploy/nginx.conf``), SecantusDB
on disk, redis-server and the fake LLM; 30 Socket.IO clients (python-socketio) and 10 plain
WebSocket clients (``/ws/chat``), all through nginx, in 10 consultations send questions with a
``clientMessageId`` and retry on errors as a careful frontend does, reconnecting and rejoining
with ``lastSeq``. Meanwhile an instance is SIGKILLed and restarted every ~30 s, one is paused
(SIGSTOP) for longer than the reply lock's TTL and resumed every ~45 s, Redis restarts (empty)
every ~2 min and MongoDB every ~2.5 min (each at least once), and a WebSocket client stops
reading for a while every ~20 s. At the end every client's view is compared with the store and
a table is printed; the run fails when anything that must be zero is not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import socketio
from pymongo import AsyncMongoClient

from tests.fakes.openai_server import FakeOpenAI
from tests.servers import AppProcess, MongoServer, Nginx, RedisServer

SECRET = "chaos-secret-" + "x" * 64
NAMESPACE = "/chat"
DATABASE = "chaos"
log = logging.getLogger("chaos")


def token(user: str) -> str:
    claims = {"sub": user, "tenant": "chaos", "exp": datetime.now(UTC) + timedelta(hours=1)}
    return jwt.encode(claims, SECRET, algorithm="HS256")


# -- a careful frontend ---------------------------------------------------------------------------

# A refused connect, join or send is retried after a pause (a send sooner when the error
# says it is retryable), as a careful frontend does while a
# server restarts: the pause is the behaviour under test, not a wait for a condition.
BACKOFF_SECONDS = 0.5
STORE_POLL_SECONDS = 0.5


async def first_of(*events: asyncio.Event) -> None:
    """Until one of the events is set."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


@dataclass
class Client:
    name: str
    consultation: str
    url: str
    source_ip: str
    view: dict[int, str] = field(default_factory=dict)  # seq -> message id, all it has seen
    acked: dict[str, str] = field(default_factory=dict)  # clientMessageId -> message id
    live_twice: int = 0  # the same stored message delivered live twice
    recoveries: list[float] = field(default_factory=list)
    trace: list[tuple[float, str, int]] = field(default_factory=list)  # (time, how, seq)
    retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    replies_seen: set[str] = field(default_factory=set)  # ids of replies seen streaming
    delivered: int = 0  # stored messages received live
    sent: int = 0  # messages it set out to send (each with its own clientMessageId)
    _lost_at: float | None = None
    _joined: bool = False
    _ever_connected: bool = False
    _up: asyncio.Event = field(default_factory=asyncio.Event)  # the namespace is connected
    _closed: asyncio.Event = field(default_factory=asyncio.Event)  # the run is over
    generation: int = 0  # connections so far: a send retried on a new one is seen live there
    resent: set[int] = field(default_factory=set)  # own seqs acked on a later connection
    _join_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _rejoining: asyncio.Future[bool] | None = None

    def __post_init__(self) -> None:
        self.sio = socketio.AsyncClient(
            reconnection=True,  # as socket.io-client in a browser: reconnect by itself
            reconnection_delay=0.2,
            reconnection_delay_max=2,
            http_session=self._session,
        )
        for event in ("userMessage", "aiMessage"):
            self.sio.on(event, self._stored, namespace=NAMESPACE)
        self.sio.on("aiChunk", self._chunk, namespace=NAMESPACE)
        self.sio.on("connect", self._on_connect, namespace=NAMESPACE)
        self.sio.on("disconnect", self._disconnected, namespace=NAMESPACE)
        self.sio.on("error", self._error, namespace=NAMESPACE)

    async def _on_connect(self) -> None:
        self.generation += 1
        self._up.set()
        self._rejoin()  # as a frontend does on every reconnection, not only at its next send

    async def _error(self, error: dict[str, Any]) -> None:
        if error.get("consultationId") == self.consultation and error["code"] == "history_gap":
            # The documented reaction: messages after afterSeq may be missing here; a join
            # with lastSeq fetches them.
            self._count("history_gap")
            self._joined = False
            self._rejoin()

    def _rejoin(self) -> None:
        if self._rejoining is None or self._rejoining.done():
            self._rejoining = asyncio.ensure_future(self._ensure_joined(self._closed))

    def _session(self) -> Any:
        import aiohttp

        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(self.source_ip, 0)))

    async def _chunk(self, chunk: dict[str, Any]) -> None:
        self.replies_seen.add(chunk["messageId"])

    async def _stored(self, message: dict[str, Any]) -> None:
        if message.get("consultationId") != self.consultation:
            return
        self.delivered += 1
        # A send acked only on a later connection (the first attempt's ack was lost with its
        # connection) is broadcast to the new connection too: the sender skipped was the old
        # one. That is one delivery per connection, as promised.
        own_retry = message["seq"] in self.resent
        if self.view.get(message["seq"]) == message["id"] and self._joined and not own_retry:
            self.live_twice += 1
            self.trace.append((time.monotonic(), "live again", message["seq"]))
        else:
            self.trace.append((time.monotonic(), "live", message["seq"]))
        self.view[message["seq"]] = message["id"]

    async def _disconnected(self, reason: Any = None) -> None:
        self.trace.append((time.monotonic(), f"disconnected {reason}", 0))
        self._up.clear()
        self._joined = False
        if self._lost_at is None:
            self._lost_at = time.monotonic()

    def contiguous(self) -> int:
        seq = 0
        while seq + 1 in self.view:
            seq += 1
        return seq

    async def _connected(self, stop: asyncio.Event) -> bool:
        """Connected: the first time by connecting; afterwards python-socketio reconnects by
        itself (as socket.io-client does in a browser), and we only wait for it."""
        while not self._up.is_set() and not stop.is_set():
            if self._ever_connected:
                await first_of(self._up, stop)
                continue
            try:
                await self.sio.connect(
                    self.url,
                    namespaces=[NAMESPACE],
                    auth={"token": token(self.consultation)},
                    transports=["websocket"],
                    wait_timeout=5,
                )
                self._ever_connected = True
                self._up.set()
            except socketio.exceptions.ConnectionError as exc:
                self._count(f"connect refused: {exc}")
                await asyncio.sleep(BACKOFF_SECONDS)
        return self._up.is_set()

    async def _ensure_joined(self, stop: asyncio.Event) -> bool:
        async with self._join_lock:  # the sender and a rejoin after a reconnection or a gap
            return await self._join(stop)

    async def _join(self, stop: asyncio.Event) -> bool:
        while await self._connected(stop):
            if self._joined:
                return True
            try:
                ack = await self.sio.call(
                    "joinConsultation",
                    {"consultationId": self.consultation, "lastSeq": self.contiguous()},
                    namespace=NAMESPACE,
                    timeout=5,
                )
            except (socketio.exceptions.SocketIOError, TimeoutError, OSError):
                self._count("timeout or disconnect")
                await asyncio.sleep(BACKOFF_SECONDS)
                continue
            if not ack.get("ok"):
                self._count(ack["error"]["code"])
                await asyncio.sleep(BACKOFF_SECONDS)
                continue
            for message in ack["messages"]:
                self.view[message["seq"]] = message["id"]
                self.trace.append((time.monotonic(), "join", message["seq"]))
            self.trace.append((time.monotonic(), f"joined after {self.contiguous()}", 0))
            self._joined = True
            if self._lost_at is not None:
                self.recoveries.append(time.monotonic() - self._lost_at)
                self._lost_at = None
            return True
        return False

    async def send(self, content: str) -> None:
        """Send until acknowledged, with one clientMessageId: retries are idempotent. A send
        under way when the load stops goes on until acknowledged, as a message pending on a
        screen does (the server may have stored it already)."""
        self.sent += 1
        client_id = uuid.uuid4().hex
        payload = {
            "consultationId": self.consultation,
            "content": content,
            "clientMessageId": client_id,
        }
        first_generation = self.generation
        while not self._closed.is_set():
            if not await self._ensure_joined(self._closed):
                return
            try:
                ack = await self.sio.call("sendMessage", payload, namespace=NAMESPACE, timeout=5)
            except (socketio.exceptions.SocketIOError, TimeoutError, OSError):
                self._count("timeout or disconnect")
                self.retries += 1
                continue
            if ack.get("ok"):
                message = ack["message"]
                self.trace.append((time.monotonic(), "ack", message["seq"]))
                if self.generation != first_generation:
                    self.resent.add(message["seq"])
                self.acked[client_id] = message["id"]
                self.view[message["seq"]] = message["id"]
                return
            self._count(ack["error"]["code"])
            self.retries += 1
            await asyncio.sleep(0.3 if ack["error"].get("retryable") else 1.0)  # backoff, as above

    async def run(self, stop: asyncio.Event, rng: random.Random) -> None:
        n = 0
        while not stop.is_set():
            await self.send(f"{self.name} question {n}")
            n += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), rng.uniform(1.5, 3.5))

    def _count(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1
        self.trace.append((time.monotonic(), f"error {what}", 0))


class RawClient:
    """A careful ``/ws/chat`` frontend (the ``websockets`` library): reconnects, rejoins with
    ``lastSeq``, sends with a ``clientMessageId`` until acknowledged. ``stall`` stops reading
    for a while, as a frozen browser tab does."""

    def __init__(self, name: str, consultation: str, url: str, source_ip: str) -> None:
        self.name = name
        self.source_ip = source_ip  # nginx hashes client addresses over the instances
        self.consultation = consultation
        self.url = url.replace("http://", "ws://") + "/ws/chat?token=" + token(consultation)
        self.view: dict[int, str] = {}
        self.acked: dict[str, str] = {}
        self.live_twice = 0
        self.generation = 0
        self.resent: set[int] = set()
        self.recoveries: list[float] = []
        self.trace: list[tuple[float, str, int]] = []
        self.retries = 0
        self.errors: dict[str, int] = {}
        self.replies_seen: set[str] = set()
        self.delivered = 0
        self.sent = 0
        self._ws: Any = None
        self._joined = asyncio.Event()
        self._acks: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._lost_at: float | None = None
        self._reading = asyncio.Event()
        self._reading.set()
        self._closed = asyncio.Event()  # the run is over and settled: stop reconnecting
        self._rejoin = asyncio.Event()  # told history_gap: join again with lastSeq
        self._connection: asyncio.Future[None] | None = None

    contiguous = Client.contiguous
    _count = Client._count

    async def connection(self) -> None:
        """Stay connected and joined until :meth:`close` (through the settling after the
        load stops, as the Socket.IO clients do)."""
        import websockets

        stop = self._closed
        while not stop.is_set():
            try:
                async with websockets.connect(
                    self.url, open_timeout=5, max_size=None, local_addr=(self.source_ip, 0)
                ) as ws:
                    self._ws = ws
                    self.generation += 1
                    await self._serve(ws, stop)
            except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                self._count(f"connection: {type(exc).__name__}")
            self._ws = None
            self._joined.clear()
            for future in self._acks.values():
                if not future.done():  # answered as a dropped connection: the caller retries
                    future.set_result({"ok": False, "error": {"code": "disconnected"}})
            self._acks.clear()
            if self._lost_at is None:
                self._lost_at = time.monotonic()
            self.trace.append((time.monotonic(), "disconnected", 0))
            if not stop.is_set():
                await asyncio.sleep(BACKOFF_SECONDS)

    async def _serve(self, ws: Any, stop: asyncio.Event) -> None:
        reader = asyncio.ensure_future(self._read(ws))
        try:
            while not stop.is_set() and not reader.done():
                ack = await self._call("joinConsultation", {
                    "consultationId": self.consultation, "lastSeq": self.contiguous(),
                })  # fmt: skip
                if ack is None:
                    return
                if not ack.get("ok"):
                    self._count(ack["error"]["code"])
                    await asyncio.sleep(BACKOFF_SECONDS)
                    continue
                for message in ack["messages"]:
                    self.view[message["seq"]] = message["id"]
                    self.trace.append((time.monotonic(), "join", message["seq"]))
                self._joined.set()
                if self._lost_at is not None:
                    self.recoveries.append(time.monotonic() - self._lost_at)
                    self._lost_at = None
                await first_of(stop, _done(reader), self._rejoin)
                if not self._rejoin.is_set():
                    return
                self._rejoin.clear()
                self._joined.clear()
        finally:
            reader.cancel()

    async def _read(self, ws: Any) -> None:
        async for text in ws:
            await self._reading.wait()  # stalled: the frames wait in the socket
            frame = json.loads(text)
            event, data = frame.get("event"), frame.get("data")
            if event == "ack":
                future = self._acks.pop(frame.get("id"), None)
                if future is not None and not future.done():
                    future.set_result(data)
            elif event in ("userMessage", "aiMessage"):
                self._stored(data)
            elif event == "aiChunk":
                self.replies_seen.add(data["messageId"])
            elif event == "error" and data.get("code") == "history_gap" and self._mine(data):
                self._count("history_gap")
                self._rejoin.set()

    def _mine(self, event: dict[str, Any]) -> bool:
        return bool(event.get("consultationId") == self.consultation)

    def _stored(self, message: dict[str, Any]) -> None:
        if not self._mine(message):
            return
        self.delivered += 1
        own_retry = message["seq"] in self.resent  # as in Client._stored
        if (
            self.view.get(message["seq"]) == message["id"]
            and self._joined.is_set()
            and not own_retry
        ):
            self.live_twice += 1
            self.trace.append((time.monotonic(), "live again", message["seq"]))
        else:
            self.trace.append((time.monotonic(), "live", message["seq"]))
        self.view[message["seq"]] = message["id"]

    async def _call(self, event: str, data: dict[str, Any]) -> dict[str, Any] | None:
        """The ack, or None when the connection went away or it timed out."""
        ws = self._ws
        if ws is None:
            return None
        self._next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._acks[self._next_id] = future
        try:
            await ws.send(json.dumps({"event": event, "data": data, "id": self._next_id}))
            return await asyncio.wait_for(future, 5)
        except Exception:
            self._count("timeout or disconnect")
            return None

    async def send(self, content: str) -> None:
        self.sent += 1
        client_id = uuid.uuid4().hex
        payload = {
            "consultationId": self.consultation,
            "content": content,
            "clientMessageId": client_id,
        }
        first_generation = self.generation
        while not self._closed.is_set():  # until acknowledged, as Client.send
            await first_of(self._joined, self._closed)
            if self._closed.is_set():
                return
            ack = await self._call("sendMessage", payload)
            if ack is not None and ack.get("ok"):
                message = ack["message"]
                if self.generation != first_generation:
                    self.resent.add(message["seq"])
                self.acked[client_id] = message["id"]
                self.view[message["seq"]] = message["id"]
                return
            if ack is not None:
                self._count(ack["error"]["code"])
            self.retries += 1
            await asyncio.sleep(0.3)

    async def run(self, stop: asyncio.Event, rng: random.Random) -> None:
        self._connection = asyncio.ensure_future(self.connection())
        n = 0
        while not stop.is_set():
            await self.send(f"{self.name} question {n}")
            n += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), rng.uniform(1.5, 3.5))

    async def stall(self, seconds: float) -> None:
        """Stop reading for ``seconds`` (what arrives waits in the socket, then the server's
        outbox; past OUTBOX_MAX_BYTES the server closes it and it reconnects)."""
        self._reading.clear()
        self.trace.append((time.monotonic(), "stalled", 0))
        try:
            await asyncio.sleep(seconds)
        finally:
            self._reading.set()

    async def close(self) -> None:
        self._closed.set()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._connection is not None:
            self._connection.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._connection


def _done(task: asyncio.Future[Any]) -> asyncio.Event:
    """An event set when ``task`` ends."""
    event = asyncio.Event()
    task.add_done_callback(lambda _: event.set())
    return event


Viewer = Client | RawClient


# -- the run --------------------------------------------------------------------------------------


@dataclass
class Stack:
    workdir: Path
    fake: FakeOpenAI
    mongo: MongoServer
    redis: RedisServer
    apps: list[AppProcess]
    nginx: Nginx
    events: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def note(self, what: str) -> None:
        line = f"{time.monotonic() - self.started:6.1f}s  {what}"
        self.events.append(line)
        log.info(line)


async def start_stack(workdir: Path) -> Stack:
    fake = FakeOpenAI()
    await fake.start()
    (workdir / "mongo").mkdir(parents=True, exist_ok=True)
    mongo = MongoServer(storage_path=str(workdir / "mongo"))
    redis = RedisServer()
    await asyncio.gather(asyncio.to_thread(mongo.start), asyncio.to_thread(redis.start))
    env = {
        "MONGODB_URL": mongo.url,
        "MONGODB_DB": DATABASE,
        "MONGODB_TIMEOUT_SECONDS": "2",
        "REDIS_URL": redis.url,
        "JWT_SECRET": SECRET,
        "OPENAI_API_KEY": "sk-chaos",
        "OPENAI_BASE_URL": fake.url,
        "AI_MODELS": "slow-25",
        "AI_LOCK_TTL_SECONDS": str(LOCK_TTL_SECONDS),
        "RATE_LIMIT_MESSAGES": "100000",
        "MAX_CONNECTIONS_PER_USER": "1000",
        "LOG_LEVEL": "INFO",
    }
    apps = [AppProcess(dict(env), workdir / f"app{i + 1}.log") for i in range(3)]
    try:
        for app in apps:
            app.start()
        for app in apps:
            await asyncio.to_thread(app.wait_ready, 30)
        upstreams = [f"127.0.0.1:{app.port}" for app in apps]
        nginx = Nginx(upstreams=upstreams, workdir=workdir / "nginx")
        nginx.start()
    except BaseException:
        # A stack that could not start leaves nothing running (an earlier run without nginx
        # left three servers and a MongoDB behind for hours).
        for app in apps:
            with contextlib.suppress(Exception):
                app.stop()
        redis.stop()
        mongo.stop()
        await fake.stop()
        raise
    return Stack(workdir, fake, mongo, redis, apps, nginx)


LOCK_TTL_SECONDS = 3.0
PAUSE_SECONDS = 2 * LOCK_TTL_SECONDS + 1  # past the TTL: its replies are taken over
STALL_SECONDS = 8.0


def chaos_plan(seconds: float) -> list[tuple[float, str]]:
    """When each blow lands: kills every ~30 s, pauses every ~45 s, Redis restarts every
    ~2 min and MongoDB every ~2.5 min (each at least once), client stalls every ~20 s."""

    def every(first: float, period: float, what: str) -> list[tuple[float, str]]:
        times = []
        at = first
        while at < seconds - 8:
            times.append((at, what))
            at += period
        return times

    return sorted(
        every(min(15.0, seconds / 4), 30, "kill")
        + every(min(25.0, seconds * 0.4), 45, "pause")
        + every(min(50.0, seconds * 0.4), 120, "redis")
        + every(min(80.0, seconds * 0.65), 150, "mongo")
        + every(10.0, 20, "stall")
    )


async def chaos(
    stack: Stack, seconds: float, rng: random.Random, stallable: list[RawClient]
) -> dict[str, int]:
    """Deal the blows of :func:`chaos_plan`; return how many of each landed."""
    landed: dict[str, int] = {}
    background: list[asyncio.Task[None]] = []
    for at, what in chaos_plan(seconds):
        await asyncio.sleep(max(0.0, stack.started + at - time.monotonic()))
        landed[what] = landed.get(what, 0) + 1
        if what == "kill":
            app = rng.choice(stack.apps)
            app.kill()
            stack.note(f"SIGKILL instance on :{app.port}")
            await asyncio.sleep(2)
            try:
                await asyncio.to_thread(app.start)
                stack.note(f"instance on :{app.port} restarted")
            except TimeoutError:  # it goes on starting; the run notes it and goes on
                stack.note(f"instance on :{app.port} slow to listen after its restart")
        elif what == "pause":
            app = rng.choice(stack.apps)
            assert app.process is not None
            app.process.send_signal(signal.SIGSTOP)
            stack.note(f"SIGSTOP instance on :{app.port} for {PAUSE_SECONDS:.0f} s")
            await asyncio.sleep(PAUSE_SECONDS)
            app.process.send_signal(signal.SIGCONT)
            stack.note(f"SIGCONT instance on :{app.port}")
        elif what == "redis":
            stack.redis.stop()
            stack.note("Redis stopped")
            await asyncio.sleep(2)
            await asyncio.to_thread(stack.redis.start)
            stack.note("Redis restarted (empty)")
        elif what == "mongo":
            stack.mongo.terminate()
            stack.note("MongoDB stopped")
            await asyncio.sleep(2)
            await asyncio.to_thread(stack.mongo.start)
            stack.note("MongoDB restarted")
        elif stallable:
            client = rng.choice(stallable)
            stack.note(f"{client.name} stops reading for {STALL_SECONDS:.0f} s")
            background.append(asyncio.create_task(client.stall(STALL_SECONDS)))
    await asyncio.gather(*background)
    return landed


async def stored_messages(mongo_url: str) -> dict[str, list[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    try:
        docs = await client[DATABASE]["messages"].find({}).sort("seq", 1).to_list()
    finally:
        await client.close()
    by_consultation: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        by_consultation.setdefault(doc["consultationId"], []).append(doc)
    return by_consultation


def unanswered(messages: list[dict[str, Any]]) -> int:
    answered_up_to = max(
        (m.get("answersSeq") or m["seq"] for m in messages if m["role"] == "assistant"), default=0
    )
    return sum(1 for m in messages if m["role"] == "user" and m["seq"] > answered_up_to)


async def settle(
    clients: list[Viewer], stack: Stack, timeout: float
) -> dict[str, list[dict[str, Any]]]:
    """Wait for the last replies and deliveries; return what the store holds."""
    deadline = time.monotonic() + timeout
    while True:
        store = await stored_messages(stack.mongo.url)
        complete = all(unanswered(messages) == 0 for messages in store.values()) and all(
            set(c.view.values()) >= {str(m["_id"]) for m in store.get(c.consultation, [])}
            for c in clients
        )
        if complete or time.monotonic() > deadline:
            return store
        await asyncio.sleep(STORE_POLL_SECONDS)  # MongoDB has no push: poll the condition


def report(
    clients: list[Viewer],
    store: dict[str, list[dict[str, Any]]],
    stack: Stack,
    seconds: float,
    landed: dict[str, int],
) -> tuple[list[tuple[str, Any]], bool]:
    acked = {cid: mid for c in clients for cid, mid in c.acked.items()}
    stored = [m for messages in store.values() for m in messages]
    stored_ids = {str(m["_id"]) for m in stored}
    by_client_id: dict[str, int] = {}
    for m in stored:
        if m.get("clientMessageId"):
            by_client_id[m["clientMessageId"]] = by_client_id.get(m["clientMessageId"], 0) + 1
    missing = [cid for cid, mid in acked.items() if mid not in stored_ids]
    duplicates = sum(n - 1 for n in by_client_id.values()) + len(stored) - len(stored_ids)
    duplicates += sum(c.live_twice for c in clients)
    gaps = sum(len(set(_expected(store, c)) - set(c.view)) for c in clients)
    differing = [c for c in clients if c.view != _expected(store, c)]
    explain(clients, store, stack, differing)
    questions_left = sum(unanswered(messages) for messages in store.values())
    started = {reply for c in clients for reply in c.replies_seen}
    replies = {str(m["_id"]) for m in stored if m["role"] == "assistant"}
    for lost in sorted(started - replies):  # what the instances said about it
        seen_by = [c.name for c in clients if lost in c.replies_seen]
        stack.note(f"reply {lost} seen streaming by {seen_by[:5]} and never stored:")
        for app in stack.apps:
            for line in app.log().splitlines():
                if lost in line:
                    stack.note(f"    {app.port}: {line[:200]}")
    takeovers = sum(app.log().count("taking over reply") for app in stack.apps)
    recoveries = [r for c in clients for r in c.recoveries]
    must_be_zero = {
        "acked but missing from the store": len(missing),
        "duplicates (stored or delivered twice)": duplicates,
        "gaps (stored messages missing from a client's final view)": gaps,
        "clients whose final view differs from the store": len(differing),
        "questions left without an answer": questions_left,
        "replies seen streaming but never stored": len(started - replies),
    }
    socketio_clients = sum(isinstance(c, Client) for c in clients)
    rows: list[tuple[str, Any]] = [
        ("run (s)", round(seconds)),
        (
            "clients (Socket.IO + WebSocket) / consultations",
            f"{socketio_clients} + {len(clients) - socketio_clients}"
            f" / {len({c.consultation for c in clients})}",
        ),
        ("messages sent", sum(c.sent for c in clients)),
        ("messages acked", len(acked)),
        ("user messages stored", sum(1 for m in stored if m["role"] == "user")),
        ("stored messages delivered live", sum(c.delivered for c in clients)),
        ("replies seen streaming", len(started)),
        ("assistant replies stored", len(replies)),
        *must_be_zero.items(),
        ("instances killed / paused", f"{landed.get('kill', 0)} / {landed.get('pause', 0)}"),
        ("Redis / MongoDB restarts", f"{landed.get('redis', 0)} / {landed.get('mongo', 0)}"),
        ("client stalls", landed.get("stall", 0)),
        ("replies taken over (kill or pause)", takeovers),
        ("sends retried after an error", sum(c.retries for c in clients)),
        ("reconnections", len(recoveries)),
        ("longest recovery (s)", round(max(recoveries, default=0.0), 1)),
    ]
    return rows, all(value == 0 for value in must_be_zero.values())


def _expected(store: dict[str, list[dict[str, Any]]], client: Viewer) -> dict[int, str]:
    return {m["seq"]: str(m["_id"]) for m in store.get(client.consultation, [])}


def explain(
    clients: list[Viewer],
    store: dict[str, list[dict[str, Any]]],
    stack: Stack,
    differing: list[Viewer],
) -> None:
    """Traces for what went wrong: missing messages, repeats, the slowest recovery."""
    for c in differing:
        expected = _expected(store, c)
        missing = sorted(set(expected) - set(c.view))
        wrong = sorted(s for s in c.view if s in expected and c.view[s] != expected[s])
        extra = sorted(set(c.view) - set(expected))
        stack.note(
            f"{c.name} ({c.consultation}) lacks seqs {missing[:10]}, "
            f"differs at {wrong[:10]}, has extra {extra[:10]}"
        )
        for at, how, seq in c.trace:
            if missing and (
                how.startswith(("disconnected", "joined")) or abs(seq - missing[0]) <= 3
            ):
                stack.note(f"    {at - stack.started:6.2f}s {how} {seq or ''}")
    slowest = max(clients, key=lambda c: max(c.recoveries, default=0.0))
    if max(slowest.recoveries, default=0.0) > 5:
        stack.note(f"slowest recovery: {slowest.name}")
        for at, how, _ in slowest.trace:
            if how.startswith(("disconnected", "joined", "error")):
                stack.note(f"    {at - stack.started:6.2f}s {how}")
    for c in clients:
        for at, how, seq in c.trace:
            if how == "live again":
                stack.note(f"{c.name}: seq {seq} delivered again at {at - stack.started:.2f}s")
                for when, what, number in c.trace:
                    if number == seq or (
                        what.startswith(("disconnected", "joined")) and abs(when - at) < 30
                    ):
                        stack.note(f"    {when - stack.started:6.2f}s {what} {number or ''}")


def markdown(rows: list[tuple[str, Any]], events: list[str]) -> str:
    lines = ["| measure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines += ["", "Timeline:", "", "```", *events, "```"]
    return "\n".join(lines)


async def run(
    seconds: float, *, seed: int | None = None, workdir: Path | None = None
) -> tuple[str, bool]:
    rng = random.Random(seed)
    workdir = workdir or Path(tempfile.mkdtemp(prefix="chaos-"))
    stack = await start_stack(workdir)
    socketio_clients = [
        Client(f"client-{i}", f"consultation-{i % 10}", stack.nginx.url, f"127.0.0.{10 + i}")
        for i in range(30)
    ]
    raw_clients = [
        RawClient(f"ws-client-{i}", f"consultation-{i % 10}", stack.nginx.url, f"127.0.0.{50 + i}")
        for i in range(10)
    ]
    clients: list[Viewer] = [*socketio_clients, *raw_clients]
    stop = asyncio.Event()
    try:
        stack.started = time.monotonic()
        stack.note("load starts")
        senders = [asyncio.create_task(c.run(stop, rng)) for c in clients]
        landed = await chaos(stack, seconds, rng, raw_clients)
        await asyncio.sleep(max(0.0, stack.started + seconds - time.monotonic()))
        stop.set()
        stack.note("load stops; settling")
        # Sends under way finish (acknowledged) first; a client still without its ack after
        # a minute shows up below as a message it lacks.
        await asyncio.wait(senders, timeout=60)
        store = await settle(clients, stack, timeout=60)
        stack.note("settled")
        rows, ok = report(clients, store, stack, seconds, landed)
        return markdown(rows, stack.events), ok
    finally:
        for client in socketio_clients:
            client._closed.set()
            with contextlib.suppress(Exception):
                await client.sio.disconnect()
            http = getattr(client.sio.eio, "http", None)
            if http is not None and not http.closed:
                await http.close()
        for raw in raw_clients:
            await raw.close()
        stack.nginx.stop()
        for app in stack.apps:
            app.stop()
        stack.redis.stop()
        stack.mongo.stop()
        await stack.fake.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=float, help="length of the run (default 180)")
    length.add_argument("--minutes", type=float, help="length of the run, in minutes")
    parser.add_argument("--seed", type=int, help="for a reproducible choice of victims")
    parser.add_argument("--json", action="store_true", help="print the table as JSON too")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    seconds = args.minutes * 60 if args.minutes else (args.seconds or 180.0)
    table, ok = asyncio.run(run(seconds, seed=args.seed))
    print("\n" + table)
    if args.json:
        print(json.dumps({"ok": ok}))
    print("\nOK: nothing lost" if ok else "\nFAILED: see the rows that must be 0", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
