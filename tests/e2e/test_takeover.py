"""Replies survive the death of their instance: a survivor continues them (real processes,
SIGKILL, redis-server, SecantusDB, the fake LLM)."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import Cluster, Connect, make_token
from tests.helpers import ChatClient, assert_clean_stream
from tests.servers import AppProcess, http_json

QUESTION = "please answer with a long reply of many many words so that it streams for a while"
ADMIN = {"Authorization": f"Bearer {make_token('root', role='admin')}"}


async def status(app: AppProcess) -> dict[str, Any]:
    code, body = await asyncio.to_thread(http_json, app.url + "/ws/status", 3, ADMIN)
    assert code == 200, body
    return dict(body)


async def seen_before_kill(watcher: ChatClient, count: int = 3) -> list[dict[str, Any]]:
    return await watcher.wait_for("aiChunk", count=count, timeout=20)


def one_reply_per_question(history: list[dict[str, Any]]) -> None:
    assert [m["seq"] for m in history] == list(range(1, len(history) + 1))
    assert len({m["id"] for m in history}) == len(history)


async def test_the_reply_of_a_killed_instance_is_continued_by_a_survivor(
    cluster: Cluster, connect: Connect
) -> None:
    streaming, survivor = cluster.start_apps(2, AI_MODELS="slow-60", AI_LOCK_TTL_SECONDS="2")
    token = make_token("kira")
    asker = await connect(streaming.url, token=token, join="survive")
    watcher = await connect(survivor.url, token=token, join="survive")
    await asker.send("survive", QUESTION)
    before = await seen_before_kill(watcher)
    await watcher.send("survive", "and a follow-up, sent while the reply streams")
    streaming.kill()  # SIGKILL, mid-reply

    [reply] = await watcher.wait_for("aiMessage", timeout=30)
    await watcher.wait_reply_done(timeout=30)
    assert reply["status"] == "complete"
    assert reply["id"] == before[0]["messageId"]
    assert_clean_stream(watcher, reply)  # indexes 0..n, each once, adding up to the reply
    seen = "".join(c["content"] for c in before)
    assert reply["content"].startswith(seen) and len(reply["content"]) > len(seen)
    assert "many many words" in reply["content"]  # the same answer, continued
    assert (await status(survivor))["ai_replies_taken_over"] == 1

    # The follow-up that was pending behind it is answered after it.
    [follow_up] = await watcher.wait_for(
        "aiMessage", lambda m: "follow-up" in m["content"], timeout=30
    )
    assert follow_up["seq"] > reply["seq"]
    history = (await watcher.join("survive", lastSeq=0))["messages"]
    one_reply_per_question(history)
    assert [m for m in history if m["id"] == reply["id"]] == [reply]  # stored once
    _, answer = await watcher.ask("survive", "a normal question afterwards", timeout=30)
    assert answer["status"] == "complete"


async def test_with_two_survivors_racing_only_one_continues(
    cluster: Cluster, connect: Connect
) -> None:
    streaming, *survivors = cluster.start_apps(3, AI_MODELS="slow-60", AI_LOCK_TTL_SECONDS="2")
    token = make_token("lars")
    asker = await connect(streaming.url, token=token, join="race-takeover")
    watchers = [await connect(app.url, token=token, join="race-takeover") for app in survivors]
    await asker.send("race-takeover", QUESTION)
    await seen_before_kill(watchers[0])
    streaming.kill()
    for watcher in watchers:
        [reply] = await watcher.wait_for("aiMessage", timeout=30)
        assert_clean_stream(watcher, reply)
        assert reply["status"] == "complete"
    assert watchers[0].of("aiMessage") == watchers[1].of("aiMessage")
    assert watchers[0].of("aiChunk") == watchers[1].of("aiChunk")
    taken = [(await status(app))["ai_replies_taken_over"] for app in survivors]
    assert sorted(taken) == [0, 1]
    history = (await watchers[0].join("race-takeover", lastSeq=0))["messages"]
    assert [m["role"] for m in history] == ["user", "assistant"]


async def test_with_resume_off_what_streamed_is_stored_incomplete(
    cluster: Cluster, connect: Connect
) -> None:
    streaming, survivor = cluster.start_apps(
        2, AI_MODELS="slow-150", AI_LOCK_TTL_SECONDS="2", AI_RESUME="off"
    )
    await _stored_incomplete_after_a_kill(streaming, survivor, connect)


async def test_when_continuing_fails_what_streamed_is_stored_incomplete(
    cluster: Cluster, connect: Connect
) -> None:
    streaming, survivor = cluster.start_apps(
        2, AI_MODELS="nocontinue-slow-150", AI_LOCK_TTL_SECONDS="2"
    )
    await _stored_incomplete_after_a_kill(streaming, survivor, connect)


async def _stored_incomplete_after_a_kill(
    streaming: AppProcess, survivor: AppProcess, connect: Connect
) -> None:
    token = make_token("mona")
    asker = await connect(streaming.url, token=token, join="partial-kept")
    watcher = await connect(survivor.url, token=token, join="partial-kept")
    await asker.send("partial-kept", QUESTION)
    # 150 ms a token: the reply streams for ~3 s, so the kill lands mid-stream even when
    # the watcher sees its chunks late on a loaded machine.
    before = await seen_before_kill(watcher)
    streaming.kill()
    [reply] = await watcher.wait_for("aiMessage", timeout=30)
    assert reply["status"] == "incomplete"
    assert reply["content"].startswith("".join(c["content"] for c in before))
    assert_clean_stream(watcher, reply)
    [error] = await watcher.wait_for("error", lambda e: e["code"] == "ai_unavailable")
    assert error["consultationId"] == "partial-kept"
    await watcher.wait_reply_done(timeout=10)
    history = (await watcher.join("partial-kept", lastSeq=0))["messages"]
    assert [(m["role"], m["status"]) for m in history] == [
        ("user", "complete"),
        ("assistant", "incomplete"),
    ]


async def test_a_client_reconnecting_through_nginx_gets_the_continuation(
    cluster: Cluster, connect: Connect
) -> None:
    apps = cluster.start_apps(3, AI_MODELS="slow-50", AI_LOCK_TTL_SECONDS="2")
    proxy = cluster.start_nginx()
    client = await connect(proxy.url, token=make_token("nils"), reconnection=True)
    await client.join("via-proxy")
    sent = await client.send("via-proxy", QUESTION)
    await client.wait_for("aiChunk", count=3, timeout=20)
    counts = [await asyncio.to_thread(app.connections) for app in apps]
    streaming = apps[counts.index(1)]  # the reply runs where the sender is connected
    streaming.kill()
    reconnected = asyncio.Event()
    client.sio.on("connect", reconnected.set, namespace="/chat")
    async with asyncio.timeout(20):
        await reconnected.wait()
    resumed = await client.join("via-proxy", lastSeq=sent["seq"])
    if "streaming" in resumed:  # joined while the continuation streams: the text so far
        assert resumed["streaming"]["content"]
    [reply] = await client.wait_for("aiMessage", timeout=30)
    assert reply["status"] == "complete" and "many many words" in reply["content"]
    history = (await client.join("via-proxy", lastSeq=0))["messages"]
    one_reply_per_question(history)
    assert history[-1]["id"] == reply["id"]
