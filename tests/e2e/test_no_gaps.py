"""No silent gaps: a client that stays connected through a Redis outage ends up with every
stored message, in order, once — without reconnecting or rejoining."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from server.domain.models import Author, ConsultationKey, Message
from server.storage.mongo import MongoStore
from tests.conftest import Cluster, Connect, make_token
from tests.helpers import ChatClient, RawClient, eventually
from tests.servers import MongoServer, RedisServer


def stored_seqs(client: ChatClient) -> list[int]:
    return [
        data["seq"]
        for name, data in client.events
        if name in {"userMessage", "aiMessage"} and data["consultationId"] == "outage-gap"
    ]


async def test_a_connected_client_receives_what_was_stored_during_a_redis_outage(
    cluster: Cluster, connect: Connect
) -> None:
    redis = RedisServer().start()
    try:
        app_a, app_b = cluster.start_apps(2, REDIS_URL=redis.url, AI_MODELS="good")
        token = make_token("otto")
        device_1 = await connect(app_a.url, token=token, join="outage-gap")
        device_2 = await connect(app_b.url, token=token, join="outage-gap")
        before, _ = await device_1.ask("outage-gap", "before the outage")
        await device_2.wait_for("aiMessage")

        redis.stop()
        await eventually(lambda: _fanout_down(app_b), timeout=15)
        during: list[dict[str, Any]] = []
        for n in range(3):  # acked and stored on A while B cannot hear about them
            sent, _ = await device_1.ask("outage-gap", f"during the outage {n}")
            during.append(sent)

        redis.start()
        history = (await device_1.join("outage-gap", lastSeq=0))["messages"]
        all_seqs = [m["seq"] for m in history]
        # Device 2 catches up by itself: no reconnect, no rejoin.
        await eventually(lambda: stored_seqs(device_2) == all_seqs, timeout=15)
        assert device_2.sio.connected
        assert len(set(stored_seqs(device_2))) == len(stored_seqs(device_2))  # nothing twice
        received = {m["id"] for _, m in device_2.events if isinstance(m, dict) and "seq" in m}
        assert {m["id"] for m in during} <= received
        assert before["seq"] == 1

        # Afterwards, live delivery goes on normally.
        after, _ = await device_1.ask("outage-gap", "after the outage")
        [echo] = await device_2.wait_for("userMessage", lambda m: m["id"] == after["id"])
        assert echo == after
    finally:
        redis.stop()


async def _fanout_down(app: Any) -> bool:
    status, body = await asyncio.to_thread(app.readiness)
    return status == 503 and body["checks"]["fanout"] != "ok"


async def test_forty_simultaneous_joins_each_get_every_seq_exactly_once(
    cluster: Cluster, connect: Connect
) -> None:
    """30 Socket.IO and 10 /ws/chat members join one room on B at the same moment while A
    keeps sending: each gets every seq once (in its join ack or live), the live ones in order."""
    app_a, app_b = cluster.start_apps(
        2, AI_REPLIES="off", MAX_CONNECTIONS_PER_USER="100", RATE_LIMIT_MESSAGES="1000"
    )
    token = make_token("quinn")
    sender = await connect(app_a.url, token=token, join="crowd")
    total = 120
    sent = 0

    async def send_all() -> None:
        nonlocal sent
        for number in range(1, total + 1):
            await sender.send("crowd", f"message {number}")
            sent = number

    sending = asyncio.create_task(send_all())
    await eventually(lambda: sent >= 10, timeout=20)
    sio_members = [ChatClient(app_b.url, token=token) for _ in range(30)]
    raw_members = [RawClient(app_b.url, token=token) for _ in range(10)]
    await asyncio.gather(*(m.connect() for m in sio_members), *(m.connect() for m in raw_members))
    acks = await asyncio.gather(
        *(m.join("crowd", lastSeq=0) for m in sio_members),
        *(m.join("crowd", lastSeq=0) for m in raw_members),
    )
    await sending
    try:
        members: list[ChatClient | RawClient] = [*sio_members, *raw_members]
        for member, ack in zip(members, acks, strict=True):
            await member.wait_for("userMessage", lambda m: m["seq"] == total, timeout=30)
            history = [m["seq"] for m in ack["messages"]]
            live = [m["seq"] for m in member.of("userMessage")]
            assert live == sorted(live), "live messages out of order"
            both = history + live
            assert sorted(both) == list(range(1, total + 1)), (
                f"missing {sorted(set(range(1, total + 1)) - set(both))}, "
                f"twice {sorted({s for s in both if both.count(s) > 1})}"
            )
    finally:
        await asyncio.gather(*(m.disconnect() for m in sio_members))
        await asyncio.gather(*(m.close() for m in raw_members))


async def test_a_stored_message_never_published_reaches_a_quiet_room_within_seconds(
    cluster: Cluster, connect: Connect
) -> None:
    app_a, app_b = cluster.start_apps(2, AI_REPLIES="off")
    token = make_token("rita")
    on_a = await connect(app_a.url, token=token, join="quiet")
    on_b = await connect(app_b.url, token=token, join="quiet")
    await on_a.send("quiet", "hello")
    await on_b.wait_for("userMessage", lambda m: m["seq"] == 1)
    # A publisher that died right after storing: the message is in MongoDB and was never
    # announced to anyone. Then the room goes quiet.
    store = MongoStore(cluster.env["MONGODB_URL"], cluster.env["MONGODB_DB"], timeout_seconds=5)
    await store.start()
    try:
        key = ConsultationKey("t1", "quiet")
        lost = Message.new(key, Author.USER, "stored by a dead publisher", user_id="rita")
        appended = await store.append(lost)
        assert appended.message.seq == 2
    finally:
        await store.close()
    for client in (on_a, on_b):  # every instance notices by itself, within 5 s
        [late] = await client.wait_for("userMessage", lambda m: m["seq"] == 2, timeout=5)
        assert late["content"] == "stored by a dead publisher"


async def test_mongodb_down_during_a_resync_is_told_to_the_client_then_filled(
    cluster: Cluster, connect: Connect, tmp_path: Path
) -> None:
    redis = RedisServer().start()
    mongo = MongoServer(storage_path=str(tmp_path / "mongo")).start()  # survives its restart
    try:
        app_a, app_b = cluster.start_apps(
            2, REDIS_URL=redis.url, MONGODB_URL=mongo.url, AI_REPLIES="off"
        )
        token = make_token("sam")
        on_a = await connect(app_a.url, token=token, join="told")
        on_b = await connect(app_b.url, token=token, join="told")
        await on_a.send("told", "before")
        await on_b.wait_for("userMessage", lambda m: m["seq"] == 1)

        redis.stop()  # B cannot hear about what A stores now
        await eventually(lambda: _fanout_down(app_b), timeout=15)
        missed = await on_a.send("told", "while Redis is down")
        app_a.kill()  # stored, and never published: A's outbox dies with it
        # And when Redis is back, B cannot read what it missed either. (A clean stop: the
        # test MongoDB server keeps acknowledged writes through it, as mongod does.)
        mongo.terminate()
        redis.start()
        [gap] = await on_b.wait_for("error", lambda e: e["code"] == "history_gap", timeout=20)
        assert gap["consultationId"] == "told" and gap["retryable"] is True
        assert gap["afterSeq"] == 1
        assert not on_b.of("userMessage", lambda m: m["seq"] == 2)

        mongo.start()  # the instance kept trying: the gap is filled without a rejoin
        [filled] = await on_b.wait_for("userMessage", lambda m: m["seq"] == 2, timeout=30)
        assert filled["id"] == missed["id"]
        assert on_b.sio.connected
    finally:
        redis.stop()
        mongo.stop()
