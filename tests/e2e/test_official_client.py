"""The official Node socket.io-client (what browsers and apps use) against a real server."""

from __future__ import annotations

from typing import Any

import pytest

from server.storage.mongo import MongoStore
from tests.conftest import JWT_SECRET, StartServer
from tests.helpers import run_node


async def run_snippet(url: str, *transport: str) -> dict[str, Any]:
    return await run_node("console_snippet.mjs", url, *transport)


@pytest.mark.parametrize("transport", [(), ("websocket",)], ids=["polling-upgrade", "websocket"])
async def test_the_console_snippet_gets_a_streamed_answer(
    start_server: StartServer, transport: tuple[str, ...]
) -> None:
    server = await start_server()  # dev auth, fake LLM
    seen = await run_snippet(server.url, *transport)
    message = seen["aiMessage"]
    assert seen["logged"] == f"AI: {message['content']}"
    assert seen["warned"] == []
    assert "I have a headache, what should I do?" in message["content"]
    assert "".join(c["content"] for c in seen["chunks"]) == message["content"]
    assert seen["chunks"][-1]["isComplete"] is True
    assert seen["thinking"][0] == "processing"
    assert seen["errors"] == []
    assert seen["transport"] == "websocket"  # polling upgraded, or websocket from the start


async def test_the_console_snippet_works_on_mongo_with_the_offline_assistant(
    start_server: StartServer, mongo_store: MongoStore
) -> None:
    server = await start_server(
        store=mongo_store, openai_api_key=None, offline_word_delay_seconds=0.005
    )
    seen = await run_snippet(server.url)
    assert seen["aiMessage"]["model"] == "offline"
    assert seen["aiMessage"]["content"].startswith("[Offline assistant]")
    assert seen["errors"] == []


async def test_the_console_snippet_works_when_pasted_twice(start_server: StartServer) -> None:
    server = await start_server()  # dev auth: a second paste is a second guest
    first = await run_snippet(server.url, "websocket")
    second = await run_snippet(server.url, "websocket")
    for seen in (first, second):
        assert "I have a headache, what should I do?" in seen["aiMessage"]["content"]
        assert seen["errors"] == []
    assert second["aiMessage"]["seq"] > first["aiMessage"]["seq"]  # the same consultation


async def test_the_console_snippet_says_why_it_cannot_connect_or_send(
    start_server: StartServer,
) -> None:
    locked = await start_server(jwt_secret=JWT_SECRET)  # no token in the snippet
    seen = await run_snippet(locked.url, "websocket")
    assert seen["warned"] == ["Cannot connect: unauthorized"]
    assert seen["aiMessage"] is None
    strict = await start_server(max_message_chars=10)
    seen = await run_snippet(strict.url, "websocket")
    [warned] = seen["warned"]
    assert warned.startswith("Error: invalid_payload content")
    assert seen["aiMessage"] is None
