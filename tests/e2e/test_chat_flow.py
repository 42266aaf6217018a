"""The full /chat flow against a real server, a real client and the fake LLM API."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server.transport.pages import CDN_CLIENT_INTEGRITY, CDN_CLIENT_URL
from tests.conftest import JWT_SECRET, Connect, StartServer, make_token
from tests.fakes.openai_server import FakeOpenAI, reply_for
from tests.helpers import ChatClient, assert_clean_stream, chunks_by_message


def expected_reply(fake: FakeOpenAI, model: str) -> str:
    return reply_for(fake.requests_for(model)[-1]["messages"])


async def test_send_streams_a_reply_chunk_by_chunk_to_the_whole_room(
    start_server: StartServer, connect: Connect, fake_openai: FakeOpenAI
) -> None:
    server = await start_server(ai_chunk_flush_ms=0, jwt_secret=JWT_SECRET)  # one chunk a delta
    alice = await connect(server.url, token=make_token("alice"))
    watcher = await connect(server.url, token=make_token("walt"), join="room-2")
    joined = await alice.join("room-1")
    assert joined["messages"] == []
    assert joined["consultation"]["consultationId"] == "room-1"
    assert joined["consultation"]["mode"] == "ai"

    sent = await alice.send("room-1", "I have a headache", userId="spoofed", tenantId="spoofed")
    assert sent["seq"] == 1
    assert sent["role"] == "user"
    assert sent["content"] == "I have a headache"
    assert sent["userId"] == "alice"  # identity comes from the token, never from the payload

    await alice.wait_reply_done()
    reply = expected_reply(fake_openai, "good")
    assert alice.of("aiThinking") == [
        {"consultationId": "room-1", "status": "processing"},
        {"consultationId": "room-1", "status": "done"},
    ]
    [ai_message] = alice.of("aiMessage")
    assert_clean_stream(alice, ai_message)
    chunks = chunks_by_message(alice)[ai_message["id"]]
    assert [c["isComplete"] for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert len(chunks) > 3  # streamed, not one blob
    assert ai_message["content"] == reply
    assert ai_message["seq"] == 2
    assert ai_message["role"] == "assistant"
    assert ai_message["model"] == "good"
    assert ai_message["status"] == "complete"
    assert alice.of("userMessage") == []  # the sender has its ack, not an echo
    assert watcher.events == []  # another room sees nothing

    # Event order: thinking → chunks → message → done.
    names = [n for n, _ in alice.events]
    assert names[0] == "aiThinking" and names[-1] == "aiThinking"
    assert names.index("aiMessage") == len(names) - 2


async def test_the_reply_context_is_the_system_prompt_and_the_last_messages(
    start_server: StartServer, connect: Connect, fake_openai: FakeOpenAI
) -> None:
    server = await start_server(ai_context_messages=3, ai_system_prompt="Be brief.")
    client = await connect(server.url, join="ctx")
    for i in range(3):
        await client.ask("ctx", f"question {i}")
    messages = fake_openai.requests_for("good")[-1]["messages"]
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert [m["role"] for m in messages[1:]] == ["user", "assistant", "user"]
    assert messages[-1]["content"] == "question 2"
    assert messages[1]["content"] == "question 1"


async def test_the_next_model_answers_when_the_first_fails_before_any_token(
    start_server: StartServer, connect: Connect, fake_openai: FakeOpenAI
) -> None:
    server = await start_server(ai_models=("fail-500", "fail-429", "good"))
    client = await connect(server.url, join="fallback")
    await client.send("fallback", "hello")
    await client.wait_reply_done()
    [message] = client.of("aiMessage")
    assert message["model"] == "good"
    assert message["content"] == expected_reply(fake_openai, "good")
    assert len(fake_openai.requests_for("fail-500")) == 1  # no SDK retries
    assert client.of("error") == []


async def test_when_every_model_fails_the_room_gets_ai_unavailable_and_the_message_stays(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(ai_models=("fail-500", "fail-503"))
    client = await connect(server.url, join="down")
    await client.send("down", "anyone there?")
    await client.wait_reply_done()
    [error] = client.of("error")
    assert error["code"] == "ai_unavailable"
    assert error["consultationId"] == "down"
    assert client.of("aiMessage") == []
    history = (await client.join("down"))["messages"]
    assert [m["content"] for m in history] == ["anyone there?"]


async def test_a_stream_that_breaks_midway_is_stored_as_incomplete_without_retrying(
    start_server: StartServer, connect: Connect, fake_openai: FakeOpenAI
) -> None:
    server = await start_server(ai_models=("drop-after-3", "good"))
    client = await connect(server.url, join="broken")
    await client.send("broken", "tell me everything")
    await client.wait_reply_done()
    [message] = client.of("aiMessage")
    assert message["status"] == "incomplete"
    assert message["content"] == "Echo: tell me "  # the three tokens that arrived
    chunks = chunks_by_message(client)[message["id"]]
    assert "".join(c["content"] for c in chunks) == message["content"]
    assert chunks[-1]["isComplete"] is True
    assert [e["code"] for e in client.of("error")] == ["ai_unavailable"]
    assert fake_openai.requests_for("good") == []  # text had reached the room: no restart
    history = (await client.join("broken"))["messages"]
    assert [(m["role"], m["status"]) for m in history] == [
        ("user", "complete"),
        ("assistant", "incomplete"),
    ]


async def test_messages_sent_during_a_reply_are_answered_by_the_next_one(
    start_server: StartServer, connect: Connect, fake_openai: FakeOpenAI
) -> None:
    server = await start_server(ai_models=("slow-40",))
    client = await connect(server.url, join="busy")
    await client.send("busy", "first")
    await client.wait_for("aiChunk")  # the first reply is streaming now
    await client.send("busy", "second")
    await client.send("busy", "third")
    await client.wait_reply_done(count=2, timeout=20)
    # A marker: had "third" started a reply of its own, it would come before this one's.
    await client.ask("busy", "marker", timeout=20)
    assert len(client.of("aiMessage")) == 3
    # Replies never overlap: each reply's chunks come between its thinking events.
    statuses = [d["status"] for d in client.of("aiThinking")]
    assert statuses == ["processing", "done"] * 3
    second_context = fake_openai.requests_for("slow-40")[1]["messages"]
    assert [m["content"] for m in second_context if m["role"] == "user"][-2:] == [
        "second",
        "third",
    ]
    history = (await client.join("busy"))["messages"]
    assert [m["seq"] for m in history] == [1, 2, 3, 4, 5, 6, 7]


async def test_rejoining_with_last_seq_returns_exactly_the_missed_messages(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(offline_word_delay_seconds=0)
    first = await connect(server.url, join="resume")
    await first.send("resume", "one")
    await first.wait_reply_done()
    seen = (await first.join("resume"))["messages"]
    last_seq = seen[-1]["seq"]
    await first.send("resume", "two")
    await first.wait_reply_done(count=2)
    await first.send("resume", "three")
    await first.wait_reply_done(count=3)

    resumed = await first.join("resume", lastSeq=last_seq)
    assert [m["seq"] for m in resumed["messages"]] == [3, 4, 5, 6]
    assert [m["content"] for m in resumed["messages"] if m["role"] == "user"] == ["two", "three"]
    assert (await first.join("resume", lastSeq=6))["messages"] == []


async def test_join_returns_the_last_50_messages(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(ai_models=("fail-500",), rate_limit_messages=100)
    client = await connect(server.url, join="long")
    for i in range(55):
        await client.send("long", f"m{i}")
    messages = (await client.join("long"))["messages"]
    assert len(messages) == 50
    assert messages[-1]["content"] == "m54"
    assert [m["seq"] for m in messages] == list(range(6, 56))


async def test_events_of_one_socket_run_in_order_without_waiting_for_acks(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server()
    client: ChatClient = await connect(server.url)
    # Exactly what the browser-console snippet does: emit, emit, no waiting.
    await client.emit("joinConsultation", {"consultationId": "test-123"})
    await client.emit("sendMessage", {"consultationId": "test-123", "content": "hi"})
    [message] = await client.wait_for("aiMessage")
    assert message["seq"] == 2
    assert client.of("error") == []


async def test_leave_stops_delivery_and_sending_requires_a_join(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server()
    client: ChatClient = await connect(server.url)
    not_joined = await client.call("sendMessage", {"consultationId": "x", "content": "hi"})
    assert not_joined["ok"] is False
    assert not_joined["error"]["code"] == "not_joined"
    await client.join("x")
    assert (await client.call("leaveConsultation", {"consultationId": "x"})) == {
        "ok": True,
        "left": True,
    }
    after_leave = await client.call("sendMessage", {"consultationId": "x", "content": "hi"})
    assert after_leave["error"]["code"] == "not_joined"


async def test_health_and_readiness_and_pages(start_server: StartServer, tmp_path: Path) -> None:
    bundle = tmp_path / "socket.io.min.js"
    bundle.write_text("window.io = function () {};")
    server = await start_server(socketio_client_bundle=str(bundle))
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + "/healthz") as response:
            assert response.status == 200
        async with http.get(server.url + "/readyz") as response:
            assert response.status == 200
            assert (await response.json())["checks"] == {"storage": "ok"}
        for page in ("/", "/operator"):
            async with http.get(server.url + page) as response:
                html = await response.text()
                # The local bundle first; the CDN only when it did not define io.
                assert '<script src="/vendor/socket.io.min.js"></script>' in html
                assert (
                    '<script src="/static/client-fallback.js" '
                    f'data-src="{CDN_CLIENT_URL}" data-integrity="{CDN_CLIENT_INTEGRITY}">'
                ) in html
                assert "{{" not in html
                assert "<script>" not in html  # no inline script: the CSP allows none
                csp = response.headers["Content-Security-Policy"]
                assert "script-src 'self' https://cdn.socket.io;" in csp
        async with http.get(server.url + "/static/operator.js") as response:
            assert "acceptConsultation" in await response.text()
        async with http.get(server.url + "/static/chat.js") as response:
            assert response.status == 200
            assert response.content_type == "text/javascript"
        async with http.get(server.url + "/static/../config.py") as response:
            assert response.status == 404
        async with http.get(server.url + "/vendor/socket.io.min.js") as response:
            assert await response.text() == "window.io = function () {};"


async def test_the_pages_use_the_cdn_without_a_local_bundle_and_an_override_first(
    start_server: StartServer, tmp_path: Path
) -> None:
    missing = str(tmp_path / "missing.js")
    server = await start_server(socketio_client_bundle=missing)
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + "/") as response:
            html = await response.text()
            assert (
                f'<script src="{CDN_CLIENT_URL}" integrity="{CDN_CLIENT_INTEGRITY}" '
                'crossorigin="anonymous"></script>'
            ) in html
            assert "client-fallback.js" not in html  # nothing to fall back to
        async with http.get(server.url + "/vendor/socket.io.min.js") as response:
            assert response.status == 404
    other = await start_server(
        socketio_client_url="/static/sio-test.js", socketio_client_bundle=missing
    )
    async with aiohttp.ClientSession() as http, http.get(other.url + "/") as response:
        html = await response.text()
        assert '<script src="/static/sio-test.js"></script>' in html
        assert f'data-src="{CDN_CLIENT_URL}"' in html  # the fallback


async def test_fast_deltas_are_coalesced_and_the_first_token_goes_out_at_once(
    start_server: StartServer, connect: Connect, fake_openai: FakeOpenAI
) -> None:
    server = await start_server(ai_models=("slow-2",), ai_chunk_flush_ms=60)
    client = await connect(server.url, join="coalesce")
    long_question = " ".join(f"word{i}" for i in range(60))
    await client.send("coalesce", long_question)
    [message] = await client.wait_for("aiMessage", timeout=10)
    chunks = chunks_by_message(client)[message["id"]]
    tokens = len(message["content"].split())
    assert chunks[0]["content"] == "Echo: "  # the first token, alone and immediately
    assert len(chunks) < tokens / 3, (len(chunks), tokens)  # ~2 ms tokens, 60 ms windows
    assert "".join(c["content"] for c in chunks) == message["content"]
    assert [c["index"] for c in chunks] == list(range(len(chunks)))


@pytest.mark.parametrize("transports", [["websocket"], ["polling"]], ids=["websocket", "polling"])
async def test_a_burst_of_broadcasts_arrives_complete_and_in_order(
    start_server: StartServer, connect: Connect, transports: list[str]
) -> None:
    # Broadcast frames may be written straight to an idle WebSocket or queued behind the
    # socket's own packets (acks here): either way each socket sees them in order.
    server = await start_server(
        jwt_secret=JWT_SECRET,
        rate_limit_messages=1000,
        ai_replies=False,
        ping_interval=2,  # python-socketio's polling client waits out its last long-poll
        ping_timeout=2,
    )
    sender = await connect(server.url, token=make_token("zed"), join="burst-order")
    receiver = await connect(
        server.url, token=make_token("zed"), transports=transports, join="burst-order"
    )

    async def receiver_chatter() -> None:
        for _ in range(50):  # the receiver's own acks interleave with the broadcasts
            await receiver.call("leaveConsultation", {"consultationId": "elsewhere"})

    await asyncio.gather(
        asyncio.gather(*(sender.send("burst-order", f"m{i}") for i in range(200))),
        receiver_chatter(),
    )
    received = await receiver.wait_for("userMessage", count=200, timeout=20)
    assert [m["seq"] for m in received] == list(range(1, 201))


async def test_broadcasts_never_overtake_an_ack_queued_before_them(
    start_server: StartServer, connect: Connect
) -> None:
    # With the memory store a join handler runs without suspending: every userMessage whose
    # seq is above the newest message in a join ack was broadcast after that ack was queued,
    # so it must arrive after it, whether it is written to the socket directly or queued.
    server = await start_server(
        jwt_secret=JWT_SECRET, rate_limit_messages=100_000, ai_replies=False
    )
    sender = await connect(server.url, token=make_token("yan"), join="overtake")
    receiver = await connect(server.url, token=make_token("yan"), transports=["websocket"])
    arrivals: list[tuple[str, int]] = []
    receiver.sio.on(
        "userMessage", lambda m: arrivals.append(("message", m["seq"])), namespace="/chat"
    )
    flooding = True

    async def flood() -> None:
        i = 0
        while flooding:
            await asyncio.gather(*(sender.send("overtake", f"m{i + k}") for k in range(10)))
            i += 10

    flooder = asyncio.create_task(flood())
    try:
        for _ in range(40):
            acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def on_ack(ack: dict[str, Any], done: asyncio.Future[None] = acked) -> None:
                newest = max((m["seq"] for m in ack["messages"]), default=0)
                arrivals.append(("ack", newest))
                done.set_result(None)

            await receiver.sio.emit(
                "joinConsultation",
                {"consultationId": "overtake"},
                namespace="/chat",
                callback=on_ack,
            )
            await acked
    finally:
        flooding = False
        await flooder
    assert sum(kind == "ack" for kind, _ in arrivals) == 40
    for position, (kind, seq) in enumerate(arrivals):
        if kind != "ack":
            continue
        early = [s for k, s in arrivals[:position] if k == "message" and s > seq]
        assert early == [], f"messages {early[:5]} overtook an ack of history up to {seq}"
