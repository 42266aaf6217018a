"""The chaos run (``scripts/chaos``): nothing a user saw is lost while instances, Redis and
MongoDB die under load.

Three ``python -m server`` instances behind the real nginx (``deploy/nginx.conf``), SecantusDB
on disk, redis-server and the fake LLM; 30 clients (python-socketio, through nginx) in 10
consultations send questions with a ``clientMessageId`` and retry on errors as a careful
frontend does, reconnecting and rejoining with ``lastSeq``. Meanwhile an instance is SIGKILLed
and restarted every ~30 s, Redis is restarted (empty) once and MongoDB once. At the end every
client's view is compared with the store and a table is printed; the run fails when anything
that must be zero is not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
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
    _lost_at: float | None = None
    _joined: bool = False
    _ever_connected: bool = False
    _up: asyncio.Event = field(default_factory=asyncio.Event)  # the namespace is connected

    def __post_init__(self) -> None:
        self.sio = socketio.AsyncClient(
            reconnection=True,  # as socket.io-client in a browser: reconnect by itself
            reconnection_delay=0.2,
            reconnection_delay_max=2,
            http_session=self._session,
        )
        for event in ("userMessage", "aiMessage"):
            self.sio.on(event, self._stored, namespace=NAMESPACE)
        self.sio.on("connect", self._up.set, namespace=NAMESPACE)
        self.sio.on("disconnect", self._disconnected, namespace=NAMESPACE)

    def _session(self) -> Any:
        import aiohttp

        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(self.source_ip, 0)))

    async def _stored(self, message: dict[str, Any]) -> None:
        if message.get("consultationId") != self.consultation:
            return
        if self.view.get(message["seq"]) == message["id"] and self._joined:
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

    async def send(self, content: str, stop: asyncio.Event) -> None:
        """Send until acknowledged, with one clientMessageId: retries are idempotent."""
        client_id = uuid.uuid4().hex
        payload = {
            "consultationId": self.consultation,
            "content": content,
            "clientMessageId": client_id,
        }
        while not stop.is_set():
            if not await self._ensure_joined(stop):
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
                self.acked[client_id] = message["id"]
                self.view[message["seq"]] = message["id"]
                return
            self._count(ack["error"]["code"])
            self.retries += 1
            await asyncio.sleep(0.3 if ack["error"].get("retryable") else 1.0)  # backoff, as above

    async def run(self, stop: asyncio.Event, rng: random.Random) -> None:
        n = 0
        while not stop.is_set():
            await self.send(f"{self.name} question {n}", stop)
            n += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), rng.uniform(1.5, 3.5))

    def _count(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1
        self.trace.append((time.monotonic(), f"error {what}", 0))


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
        "AI_LOCK_TTL_SECONDS": "3",
        "RATE_LIMIT_MESSAGES": "100000",
        "MAX_CONNECTIONS_PER_USER": "1000",
        "LOG_LEVEL": "INFO",
    }
    apps = [AppProcess(dict(env), workdir / f"app{i + 1}.log") for i in range(3)]
    for app in apps:
        app.start()
    for app in apps:
        await asyncio.to_thread(app.wait_ready, 30)
    nginx = Nginx(upstreams=[f"127.0.0.1:{app.port}" for app in apps], workdir=workdir / "nginx")
    nginx.start()
    return Stack(workdir, fake, mongo, redis, apps, nginx)


async def chaos(stack: Stack, seconds: float, rng: random.Random) -> None:
    """Kill and restart an instance every ~30 s; restart Redis once and MongoDB once."""
    plan: list[tuple[float, str]] = [(seconds * 0.4, "redis"), (seconds * 0.65, "mongo")]
    kill_at = min(15.0, seconds / 4)
    while kill_at < seconds - 8:
        plan.append((kill_at, "kill"))
        kill_at += 30
    for at, what in sorted(plan):
        await asyncio.sleep(max(0.0, stack.started + at - time.monotonic()))
        if what == "kill":
            app = rng.choice(stack.apps)
            app.kill()
            stack.note(f"SIGKILL instance on :{app.port}")
            await asyncio.sleep(2)
            await asyncio.to_thread(app.start)
            stack.note(f"instance on :{app.port} restarted")
        elif what == "redis":
            stack.redis.stop()
            stack.note("Redis stopped")
            await asyncio.sleep(2)
            await asyncio.to_thread(stack.redis.start)
            stack.note("Redis restarted (empty)")
        else:
            stack.mongo.terminate()
            stack.note("MongoDB stopped")
            await asyncio.sleep(2)
            await asyncio.to_thread(stack.mongo.start)
            stack.note("MongoDB restarted")


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
    clients: list[Client], stack: Stack, timeout: float
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
    clients: list[Client], store: dict[str, list[dict[str, Any]]], stack: Stack, seconds: float
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
    differing = [c for c in clients if c.view != _expected(store, c)]
    explain(clients, store, stack, differing)
    questions_left = sum(unanswered(messages) for messages in store.values())
    takeovers = sum(app.log().count("taking over reply") for app in stack.apps)
    recoveries = [r for c in clients for r in c.recoveries]
    must_be_zero = {
        "acked but missing from the store": len(missing),
        "duplicates (stored or delivered twice)": duplicates,
        "clients whose final view differs from the store": len(differing),
        "questions left without an answer": questions_left,
    }
    rows: list[tuple[str, Any]] = [
        ("run (s)", round(seconds)),
        ("clients / consultations", f"{len(clients)} / {len({c.consultation for c in clients})}"),
        ("messages acked", len(acked)),
        ("user messages stored", sum(1 for m in stored if m["role"] == "user")),
        ("assistant replies stored", sum(1 for m in stored if m["role"] == "assistant")),
        *must_be_zero.items(),
        ("replies taken over after a kill", takeovers),
        ("sends retried after an error", sum(c.retries for c in clients)),
        ("reconnections", len(recoveries)),
        ("longest recovery (s)", round(max(recoveries, default=0.0), 1)),
    ]
    return rows, all(value == 0 for value in must_be_zero.values())


def _expected(store: dict[str, list[dict[str, Any]]], client: Client) -> dict[int, str]:
    return {m["seq"]: str(m["_id"]) for m in store.get(client.consultation, [])}


def explain(
    clients: list[Client],
    store: dict[str, list[dict[str, Any]]],
    stack: Stack,
    differing: list[Client],
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
    clients = [
        Client(f"client-{i}", f"consultation-{i % 10}", stack.nginx.url, f"127.0.0.{10 + i}")
        for i in range(30)
    ]
    stop = asyncio.Event()
    try:
        stack.started = time.monotonic()
        stack.note("load starts")
        senders = [asyncio.create_task(c.run(stop, rng)) for c in clients]
        await chaos(stack, seconds, rng)
        await asyncio.sleep(max(0.0, stack.started + seconds - time.monotonic()))
        stop.set()
        stack.note("load stops; settling")
        await asyncio.gather(*senders, return_exceptions=True)
        store = await settle(clients, stack, timeout=45)
        stack.note("settled")
        rows, ok = report(clients, store, stack, seconds)
        return markdown(rows, stack.events), ok
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await client.sio.disconnect()
            http = getattr(client.sio.eio, "http", None)
            if http is not None and not http.closed:
                await http.close()
        stack.nginx.stop()
        for app in stack.apps:
            app.stop()
        stack.redis.stop()
        stack.mongo.stop()
        await stack.fake.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=180, help="length of the run")
    parser.add_argument("--seed", type=int, help="for a reproducible choice of victims")
    parser.add_argument("--json", action="store_true", help="print the table as JSON too")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    table, ok = asyncio.run(run(args.seconds, seed=args.seed))
    print("\n" + table)
    if args.json:
        print(json.dumps({"ok": ok}))
    print("\nOK: nothing lost" if ok else "\nFAILED: see the rows that must be 0", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
