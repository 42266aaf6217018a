"""Replies through the hard cases: Redis gone for longer than the reply lock's TTL in the middle
of a reply, and an instance paused (SIGSTOP) past a takeover. Real processes, a redis-server of
the test's own (it is stopped), SecantusDB and the fake LLM."""

from __future__ import annotations

import asyncio
import signal
import time

import redis.asyncio as aioredis

from tests.conftest import Cluster, Connect, make_token
from tests.helpers import assert_clean_stream, chunks_by_message, eventually
from tests.servers import AppProcess, RedisServer

# Long enough that the reply streams for a while at a few hundred ms a token.
QUESTION = (
    "please answer with a long reply of many many words so that it streams for a while, "
    "long enough for the backend under it to go away and come back again before the end"
)
TTL = 2.0  # the reply lock's


async def wait_for_log(app: AppProcess, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while text not in app.log():
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{app.log()[-3000:]}"
        await asyncio.sleep(0.05)


async def test_a_reply_outlives_a_redis_outage_longer_than_its_lock_ttl(
    cluster: Cluster, connect: Connect
) -> None:
    own_redis = RedisServer().start()  # this test stops it: not the session's
    try:
        streaming, other = cluster.start_apps(
            2, REDIS_URL=own_redis.url, AI_MODELS="slow-250", AI_LOCK_TTL_SECONDS=str(TTL)
        )
        token = make_token("olga")
        asker = await connect(streaming.url, token=token, join="outage")
        watcher = await connect(other.url, token=token, join="outage")
        await asker.send("outage", QUESTION)
        [first] = await watcher.wait_for("aiChunk", timeout=20)  # fan-out works before

        own_redis.stop()
        stopped_at = time.monotonic()
        # The reply goes on for the local members while Redis is away, past the lock's TTL.
        seen = len(asker.of("aiChunk"))
        await asker.wait_for("aiChunk", count=seen + 3, timeout=10)
        await asyncio.sleep(max(0.0, 2 * TTL - (time.monotonic() - stopped_at)))
        assert not asker.of("aiMessage"), "the reply ended before Redis came back"
        own_redis.start()  # empty, as a restarted Redis without persistence is

        # It ends on every instance, and is stored once with all the text that was shown.
        for client in (asker, watcher):
            [reply] = await client.wait_for("aiMessage", timeout=30)
            await client.wait_reply_done(timeout=15)
            assert reply["id"] == first["messageId"] and reply["status"] == "complete"
        [reply] = asker.of("aiMessage")
        assert watcher.of("aiMessage") == [reply]
        assert_clean_stream(asker, reply)  # what the asker saw is exactly what is stored
        assert "many many words" in reply["content"]
        history = (await watcher.join("outage", lastSeq=0))["messages"]
        assert [m["role"] for m in history] == ["user", "assistant"]
        assert history[1]["content"] == reply["content"]
        assert "streams on while coordination is unavailable" in streaming.log()
        assert "taken over by another instance" not in streaming.log()
        # And the instances still coordinate afterwards: the next question is answered.
        _, answer = await watcher.ask("outage", "and afterwards?", timeout=30)
        assert answer["status"] == "complete"
    finally:
        own_redis.stop()


async def test_a_paused_instance_never_writes_after_its_reply_was_taken_over(
    cluster: Cluster, connect: Connect
) -> None:
    paused, taker = cluster.start_apps(2, AI_MODELS="slow-200", AI_LOCK_TTL_SECONDS=str(TTL))
    token = make_token("pia")
    watcher = await connect(taker.url, token=token, join="paused")
    asker = await connect(paused.url, token=token, join="paused")
    await asker.send("paused", QUESTION)
    await watcher.wait_for("aiChunk", count=3, timeout=20)
    assert paused.process is not None
    paused.process.send_signal(signal.SIGSTOP)  # past the TTL: the reply is taken over
    try:
        [reply] = await watcher.wait_for("aiMessage", timeout=30)
        await watcher.wait_reply_done(timeout=15)
        assert reply["status"] == "complete"
    finally:
        paused.process.send_signal(signal.SIGCONT)

    # The paused instance wakes up mid-reply and finds it is no longer its own.
    await wait_for_log(paused, "taken over by another instance")
    prefix = cluster.env["REDIS_PREFIX"]
    client = aioredis.Redis.from_url(cluster.env["REDIS_URL"])
    try:
        # It put no buffer back (the taker had cleared it when it stored the reply).
        assert [key async for key in client.scan_iter(f"{prefix}:reply:*")] == []
    finally:
        await client.aclose()
    assert "restored the buffer" not in paused.log()

    # A later marker: a new question is answered; by then anything the paused instance
    # might still have sent for the old reply would have arrived.
    _, answer = await watcher.ask("paused", "a later question", timeout=30)
    assert answer["status"] == "complete"
    events = [name for name, data in watcher.events if data and _about(data, reply["id"])]
    assert events[-1] == "aiMessage", "a chunk of the taken-over reply came after its end"
    assert_clean_stream(watcher, reply)
    history = (await watcher.join("paused", lastSeq=0))["messages"]
    assert [m["id"] for m in history].count(reply["id"]) == 1
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]


def _about(data: object, message_id: str) -> bool:
    """Whether an event is a chunk or the final message of ``message_id``."""
    if not isinstance(data, dict):
        return False
    return data.get("messageId") == message_id or data.get("id") == message_id


async def test_a_reply_whose_lock_went_to_the_next_question_keeps_what_was_shown(
    cluster: Cluster, connect: Connect
) -> None:
    """Redis restarts empty mid-reply, and before the streaming instance renews its lock
    (a long TTL: it renews every 10 s) a question on the other instance takes the free lock.
    The first reply cannot be continued by anyone: what the room saw of it is stored."""
    own_redis = RedisServer().start()
    try:
        streaming, other = cluster.start_apps(
            2, REDIS_URL=own_redis.url, AI_MODELS="slow-200", AI_LOCK_TTL_SECONDS="30"
        )
        token = make_token("ruth")
        asker = await connect(streaming.url, token=token, join="relock")
        second = await connect(other.url, token=token, join="relock")
        await asker.send("relock", QUESTION)
        [first] = await second.wait_for("aiChunk", timeout=20)
        own_redis.stop()
        own_redis.start()  # empty: no lock, no buffer, no fence
        await eventually(lambda: _fanout_up(other), timeout=15)
        await second.send("relock", "a second question, on the other instance")

        for client in (asker, second):
            await client.wait_for("aiMessage", lambda m: m["id"] == first["messageId"], timeout=30)
        [kept] = asker.of("aiMessage", lambda m: m["id"] == first["messageId"])
        assert kept["status"] == "incomplete"
        shown = "".join(c["content"] for c in chunks_by_message(asker)[kept["id"]])
        assert kept["content"] == shown  # exactly what the room saw of it
        _, answer = await second.ask("relock", "and a third", timeout=40)
        assert answer["status"] == "complete"
        history = (await second.join("relock", lastSeq=0))["messages"]
        assert [m["id"] for m in history].count(kept["id"]) == 1
        assert "lost its lock without a takeover" in streaming.log()
    finally:
        own_redis.stop()


async def _fanout_up(app: AppProcess) -> bool:
    status, _ = await asyncio.to_thread(app.readiness)
    return bool(status == 200)
