"""The server on the real MongoDB-wire store: ordering, persistence, outages."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
import pytest

from server.storage.mongo import MongoStore
from tests.conftest import JWT_SECRET, Connect, StartServer, make_token
from tests.helpers import ChatClient, eventually
from tests.servers import MongoServer


async def test_the_console_sequence_works_on_mongo(
    start_server: StartServer, connect: Connect, mongo_store: MongoStore
) -> None:
    server = await start_server(store=mongo_store)
    clients: list[ChatClient] = [await connect(server.url) for _ in range(5)]
    for i, client in enumerate(clients):
        # emit, emit, no waiting: the send must find the join done even with a real database.
        await client.emit("joinConsultation", {"consultationId": f"test-{i}"})
        await client.emit(
            "sendMessage",
            {"consultationId": f"test-{i}", "content": "I have a headache", "userId": "user-1"},
        )
    for client in clients:
        [message] = await client.wait_for("aiMessage")
        assert message["seq"] == 2
        assert client.of("error") == []


async def test_history_survives_a_server_restart(
    start_server: StartServer, connect: Connect, mongo_server: MongoServer
) -> None:
    database = f"test_{uuid.uuid4().hex[:12]}"
    settings = {"mongodb_url": mongo_server.url, "mongodb_db": database, "jwt_secret": JWT_SECRET}
    first = await start_server(**settings)
    client: ChatClient = await connect(first.url, token=make_token("alice"))
    await client.join("persist")
    await client.send("persist", "remember me")
    await client.wait_reply_done()
    [reply] = client.of("aiMessage")
    await client.disconnect()

    second = await start_server(**settings)
    again: ChatClient = await connect(second.url, token=make_token("alice"))
    history = (await again.join("persist"))["messages"]
    assert [(m["seq"], m["role"], m["content"]) for m in history] == [
        (1, "user", "remember me"),
        (2, "assistant", reply["content"]),
    ]
    assert history[1] == reply


async def test_a_database_outage_is_answered_fast_and_nothing_is_broadcast(
    start_server: StartServer, connect: Connect
) -> None:
    mongo = MongoServer()
    mongo.start()
    try:
        store = MongoStore(mongo.url, "outage", timeout_seconds=1.5)
        server = await start_server(store=store)
        client = await connect(server.url, join="outage")
        mongo.stop()

        started = time.monotonic()
        ack = await client.call("sendMessage", {"consultationId": "outage", "content": "lost?"})
        elapsed = time.monotonic() - started
        assert ack["ok"] is False
        assert ack["error"]["code"] == "storage_unavailable"
        assert ack["error"]["retryable"] is True
        assert elapsed < 5, elapsed
        assert client.sio.connected
        async with aiohttp.ClientSession() as http, http.get(server.url + "/readyz") as response:
            assert response.status == 503
            assert (await response.json())["checks"]["storage"] != "ok"

        # The database returns (empty): the first message answered afterwards is the only one
        # the room ever saw a reply for: the refused one started none.
        mongo.start()

        async def stored() -> dict[str, Any] | None:
            ack = await client.call("sendMessage", {"consultationId": "outage", "content": "back"})
            return ack if ack["ok"] else None

        await eventually(stored, timeout=20, interval=0.3)
        await client.wait_reply_done()
        assert [d["status"] for d in client.of("aiThinking")] == ["processing", "done"]
        [reply] = client.of("aiMessage")
        assert "back" in reply["content"]
    finally:
        mongo.stop()


@pytest.mark.parametrize("writers", [8])
async def test_concurrent_senders_get_unique_gap_free_seqs(
    start_server: StartServer, connect: Connect, mongo_store: MongoStore, writers: int
) -> None:
    server = await start_server(store=mongo_store, jwt_secret=JWT_SECRET, ai_models=("fail-500",))
    devices: list[ChatClient] = [
        await connect(server.url, token=make_token("alice")) for _ in range(writers)
    ]
    for device in devices:
        await device.join("busy")
    acks = await asyncio.gather(
        *(device.send("busy", f"from {i}") for i, device in enumerate(devices))
    )
    assert sorted(a["seq"] for a in acks) == list(range(1, writers + 1))
