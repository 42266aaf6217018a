"""Delivery guarantees and limits on one instance (cluster-wide variants: test_cluster.py)."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

import pytest
import socketio

from server.storage.mongo import MongoStore
from tests.conftest import JWT_SECRET, Connect, StartServer, make_token
from tests.helpers import ChatClient, assert_clean_stream, eventually
from tests.servers import MongoServer


async def test_a_retried_client_message_id_is_stored_broadcast_and_answered_once(
    start_server: StartServer, connect: Connect, mongo_store: MongoStore
) -> None:
    server = await start_server(store=mongo_store, jwt_secret=JWT_SECRET)
    sender = await connect(server.url, token=make_token("gina"), join="retry")
    watcher = await connect(server.url, token=make_token("gina"), join="retry")
    first = await sender.send("retry", "did you get this?", clientMessageId="cm-1")
    await watcher.wait_reply_done()
    events_before = len(watcher.events)

    retry = await sender.send("retry", "did you get this?", clientMessageId="cm-1")
    assert retry == first  # the original message and seq
    # A marker: a second broadcast or reply of the retry would come before this one's.
    marker, _ = await sender.ask("retry", "marker")
    await watcher.wait_reply_done(count=2)
    later = [(name, data.get("id")) for name, data in watcher.events[events_before:]]
    assert [e for e in later if e[0] == "userMessage"] == [("userMessage", marker["id"])]
    assert len([e for e in later if e[0] == "aiMessage"]) == 1
    history = (await watcher.join("retry"))["messages"]
    assert [m["content"] for m in history if m["role"] == "user"] == [
        "did you get this?",
        "marker",
    ]


async def test_a_burst_of_sends_with_retries_stores_each_message_once(
    start_server: StartServer, connect: Connect, mongo_store: MongoStore
) -> None:
    server = await start_server(
        store=mongo_store, jwt_secret=JWT_SECRET, rate_limit_messages=1000, ai_models=("slow-5",)
    )
    token = make_token("hank")
    phone = await connect(server.url, token=token, join="burst")
    laptop = await connect(server.url, token=token, join="burst")
    watcher = await connect(server.url, token=make_token("op", role="operator"), join="burst")

    # 80 distinct messages from the phone; 20 of them retried at once from the laptop (the
    # same user on a flaky network), 100 sends in all.
    sends = [phone.send("burst", f"message {i}", clientMessageId=f"cm-{i}") for i in range(80)]
    sends += [
        laptop.send("burst", f"message {i}", clientMessageId=f"cm-{i}") for i in range(0, 80, 4)
    ]
    acks = await asyncio.gather(*sends)
    assert len(acks) == 100
    by_client_id: dict[str, set[int]] = {}
    for ack in acks:
        by_client_id.setdefault(ack["clientMessageId"], set()).add(ack["seq"])
    assert all(len(seqs) == 1 for seqs in by_client_id.values())  # a retry returns the same seq

    await watcher.wait_for("userMessage", count=80, timeout=30)
    await watcher.wait_quiet(1.5, timeout=60)
    user_messages = watcher.of("userMessage")
    assert len(user_messages) == 80
    assert len({m["id"] for m in user_messages}) == 80
    # Replies never overlap, and the last one saw the last message.
    statuses = [d["status"] for d in watcher.of("aiThinking")]
    assert statuses == ["processing", "done"] * (len(statuses) // 2)
    assert len(watcher.of("aiMessage")) == len(statuses) // 2
    history = (await watcher.join("burst", lastSeq=0))["messages"]
    assert sum(m["role"] == "user" for m in history) == 80
    assert [m["seq"] for m in history] == list(range(1, len(history) + 1))


async def test_stop_generation_keeps_the_text_so_far_as_stopped(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(ai_models=("slow-80",))
    client = await connect(server.url, join="stop")
    await client.send("stop", "tell me a very long story about many things")
    await client.wait_for("aiChunk", count=3)
    ack = await client.call("stopGeneration", {"consultationId": "stop"})
    assert ack == {"ok": True, "stopping": True}
    [message] = await client.wait_for("aiMessage", timeout=5)
    await client.wait_reply_done()
    assert message["status"] == "stopped"
    assert_clean_stream(client, message)
    assert 0 < len(message["content"]) < len("Echo: tell me a very long story about many things")
    history = (await client.join("stop"))["messages"]
    assert history[-1] == message
    assert (await client.call("stopGeneration", {"consultationId": "stop"})) == {
        "ok": True,
        "stopping": False,
    }
    # The next message is answered normally.
    _, reply = await client.ask("stop", "short one")
    assert reply["status"] == "complete"


async def test_a_hanging_model_times_out_and_the_chain_moves_on(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(ai_models=("hang", "good"), ai_first_token_timeout_seconds=1)
    client = await connect(server.url, join="hang")
    started = time.monotonic()
    await client.send("hang", "anyone?")
    [message] = await client.wait_for("aiMessage", timeout=10)
    assert message["model"] == "good"
    assert 1 <= time.monotonic() - started < 5


async def test_when_every_model_hangs_the_room_gets_ai_unavailable(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(ai_models=("hang",), ai_first_token_timeout_seconds=0.5)
    client = await connect(server.url, join="all-hang")
    await client.send("all-hang", "hello?")
    [error] = await client.wait_for("error", timeout=10)
    assert error["code"] == "ai_unavailable"
    await client.wait_reply_done()
    assert client.of("aiMessage") == []


async def test_a_model_that_stalls_mid_stream_is_cut_by_the_request_timeout(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(ai_models=("stall-after-3", "good"), ai_timeout_seconds=1)
    client = await connect(server.url, join="stall")
    await client.send("stall", "go on")
    [message] = await client.wait_for("aiMessage", timeout=10)
    assert message["status"] == "incomplete"
    assert message["content"] == "Echo: go on "  # the three tokens before the stall
    assert [e["code"] for e in await client.wait_for("error")] == ["ai_unavailable"]


async def test_a_disconnect_mid_reply_does_not_stop_it(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(jwt_secret=JWT_SECRET, ai_models=("slow-30",))
    token = make_token("ivan")
    leaving = await connect(server.url, token=token, join="gone")
    staying = await connect(server.url, token=token, join="gone")
    await leaving.send("gone", "answer even if I leave")
    await leaving.wait_for("aiChunk")
    await leaving.disconnect()
    [message] = await staying.wait_for("aiMessage", timeout=15)
    assert message["status"] == "complete"
    back: ChatClient = await connect(server.url, token=token)
    history = (await back.join("gone"))["messages"]
    assert history[-1] == message


async def test_the_message_rate_is_limited_per_user_with_a_warning_first(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(
        jwt_secret=JWT_SECRET,
        rate_limit_messages=5,
        rate_limit_window_seconds=4,  # wide enough for a slow CI machine
        ai_models=("fail-500",),
    )
    token = make_token("judy")
    phone = await connect(server.url, token=token, join="rate")
    laptop = await connect(server.url, token=token, join="rate")
    other = await connect(server.url, token=make_token("kim"), join="rate-other")
    for i in range(3):
        await phone.send("rate", f"m{i}")
    assert phone.of("rateWarning") == []
    await laptop.send("rate", "m3")  # the same user on another device counts too
    [warning] = await laptop.wait_for("rateWarning")
    assert warning == {"limit": 5, "remaining": 1, "windowSeconds": 4}
    await phone.send("rate", "m4")
    refused = await phone.call("sendMessage", {"consultationId": "rate", "content": "m5"})
    assert refused["ok"] is False
    assert refused["error"]["code"] == "rate_limited"
    assert refused["error"]["retryable"] is True
    assert 1 <= refused["error"]["retryAfter"] <= 4
    assert (await other.send("rate-other", "another user is not limited"))["seq"] == 1
    await asyncio.sleep(refused["error"]["retryAfter"] + 0.1)
    assert (await phone.send("rate", "after the window"))["seq"] == 6
    history = (await phone.join("rate"))["messages"]
    assert "m5" not in [m["content"] for m in history]


async def test_connection_limits_per_user_and_per_instance(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(
        jwt_secret=JWT_SECRET, max_connections_per_user=2, max_connections=4
    )
    first: ChatClient = await connect(server.url, token=make_token("lena"))
    await connect(server.url, token=make_token("lena"))
    third = ChatClient(server.url, token=make_token("lena"))
    with pytest.raises(socketio.exceptions.ConnectionError):
        await third.connect()
    assert third.connect_error["data"]["code"] == "too_many_connections"
    await connect(server.url, token=make_token("mia"))  # other users are not affected
    await first.disconnect()
    # A slot frees up once the server has seen the disconnect.
    await eventually(lambda: server.components.connections.count == 2)
    again = await connect(server.url, token=make_token("lena"))
    await connect(server.url, token=make_token("ned"))
    full = ChatClient(server.url, token=make_token("olga"))  # 4 connected: the instance is full
    with pytest.raises(socketio.exceptions.ConnectionError):
        await full.connect()
    assert full.connect_error["data"]["code"] == "too_many_connections"
    assert again.sio.connected


async def test_an_expired_token_disconnects_unless_refreshed(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(jwt_secret=JWT_SECRET)
    short = make_token("pia", expires_in=timedelta(seconds=3))
    expiring: ChatClient = await connect(server.url, token=short)
    refreshed: ChatClient = await connect(server.url, token=short)
    ack = await refreshed.call(
        "refreshToken", {"token": make_token("pia", expires_in=timedelta(minutes=5))}
    )
    assert ack["ok"] is True and ack["expiresAt"].endswith("Z")
    denied = await refreshed.call("refreshToken", {"token": make_token("someone-else")})
    assert denied["error"]["code"] == "forbidden"
    invalid = await refreshed.call("refreshToken", {"token": "garbage"})
    assert invalid["error"]["code"] == "unauthorized"

    [error] = await expiring.wait_for("error", lambda e: e["code"] == "token_expired", timeout=8)
    assert "expired" in error["message"]
    await eventually(lambda: not expiring.sio.connected, timeout=5)
    # Both tokens expired at the same moment, and the first socket is gone: the refreshed one
    # would have been dropped with it.
    assert refreshed.sio.connected
    await refreshed.join("still-here")
    assert all(e["code"] != "token_expired" for e in refreshed.of("error"))


async def test_blocklisted_content_is_rejected_before_it_is_stored(
    start_server: StartServer, connect: Connect, tmp_path: Path
) -> None:
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text("# one term per line\nforbidden phrase\nBadWord\n")
    server = await start_server(moderation_blocklist_file=str(blocklist), ai_models=("fail-500",))
    client = await connect(server.url, join="moderated")
    for content in ("this has a badword in it", "a FORBIDDEN   phrase".replace("   ", " ")):
        refused = await client.call(
            "sendMessage", {"consultationId": "moderated", "content": content}
        )
        assert refused["error"]["code"] == "content_rejected"
    assert (await client.send("moderated", "badwords are not a whole-word match"))["seq"] == 1
    assert [m["seq"] for m in (await client.join("moderated"))["messages"]] == [1]


async def test_an_oversized_frame_is_refused_without_taking_the_server_down(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(max_http_buffer_size=20_000, max_message_chars=100_000)
    bystander = await connect(server.url, join="bystander")
    for transports in (["websocket"], ["polling"]):
        greedy: ChatClient = await connect(server.url, transports=transports)
        room = f"big-{transports[0]}"
        await greedy.join(room)
        with pytest.raises(Exception):  # noqa: B017 - the server drops the socket
            await greedy.call(
                "sendMessage", {"consultationId": room, "content": "x" * 50_000}, timeout=3
            )
        await eventually(lambda greedy=greedy: not greedy.sio.connected, timeout=5)
    assert bystander.sio.connected
    assert (await bystander.send("bystander", "still fine"))["seq"] == 1
    await connect(server.url, join="fresh")


async def test_mongodb_killed_and_restarted_loses_no_acknowledged_message(
    start_server: StartServer, connect: Connect, tmp_path: Path
) -> None:
    mongo = MongoServer(storage_path=str(tmp_path / "mongo"))
    (tmp_path / "mongo").mkdir()
    mongo.start()
    try:
        store = MongoStore(mongo.url, "restart", timeout_seconds=1.5)
        server = await start_server(
            store=store, jwt_secret=JWT_SECRET, ai_models=("fail-500",), rate_limit_messages=1000
        )
        client: ChatClient = await connect(server.url, token=make_token("quinn"))
        await client.join("durable")
        acknowledged: list[str] = []
        refused: list[str] = []

        async def send(i: int) -> None:
            ack = await client.call(
                "sendMessage", {"consultationId": "durable", "content": f"m{i}"}
            )
            if ack["ok"]:
                acknowledged.append(ack["message"]["content"])
            else:
                assert ack["error"]["code"] == "storage_unavailable"
                refused.append(f"m{i}")

        for i in range(5):
            await send(i)
        mongo.terminate()
        for i in range(5, 8):
            await send(i)
        assert refused == ["m5", "m6", "m7"]
        assert client.sio.connected
        mongo.start()
        deadline = time.monotonic() + 20
        i = 8
        while len(acknowledged) < 8 and time.monotonic() < deadline:  # recovers by itself
            await send(i)
            i += 1
        assert len(acknowledged) >= 8
        stored = [m["content"] for m in (await client.join("durable", lastSeq=0))["messages"]]
        assert stored == acknowledged  # nothing acknowledged is missing, nothing refused is there
        assert not set(refused) & set(stored)
    finally:
        mongo.stop()
