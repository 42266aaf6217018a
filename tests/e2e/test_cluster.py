"""Several instances behind nginx behave like one server (real Redis, nginx, SecantusDB)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import Cluster, Connect, make_token
from tests.helpers import ChatClient, assert_clean_stream, eventually, limits_hold_across_instances
from tests.servers import AppProcess, RedisServer, http_json


async def test_a_room_spans_instances_in_order_without_duplicates(
    cluster: Cluster, connect: Connect
) -> None:
    app_a, app_b = cluster.start_apps(2)
    token = make_token("alice")
    on_a = await connect(app_a.url, token=token, join="spanning")
    on_b = await connect(app_b.url, token=token, join="spanning")

    sent = await on_a.send("spanning", "hello from instance A")
    [echo] = await on_b.wait_for("userMessage")
    assert echo == sent
    for client in (on_a, on_b):
        [message] = await client.wait_for("aiMessage", timeout=20)
        await client.wait_reply_done()
        assert_clean_stream(client, message)
        assert [d["status"] for d in client.of("aiThinking")] == ["processing", "done"]
    assert on_a.of("aiMessage") == on_b.of("aiMessage")
    assert on_a.of("aiChunk") == on_b.of("aiChunk")
    assert on_a.of("userMessage") == []  # the sender is skipped on every instance


@pytest.mark.parametrize("transports", [None, ["websocket"]], ids=["polling-upgrade", "websocket"])
async def test_the_full_flow_through_nginx(
    cluster: Cluster, connect: Connect, transports: list[str] | None
) -> None:
    cluster.start_apps(2)
    proxy = cluster.start_nginx()
    client: ChatClient = await connect(proxy.url, token=make_token("bob"), transports=transports)
    assert (await client.join("via-nginx"))["messages"] == []
    await client.send("via-nginx", "through the proxy")
    [message] = await client.wait_for("aiMessage", timeout=20)
    assert_clean_stream(client, message)
    assert client.sio.transport() == "websocket"
    status, body = http_json(proxy.url + "/readyz")
    assert status == 200 and body["checks"]["fanout"] == "ok"


async def test_fifty_clients_over_the_instances_all_receive_their_rooms(
    cluster: Cluster, connect: Connect
) -> None:
    apps = cluster.start_apps(2, AI_MODELS="good")
    proxy = cluster.start_nginx()
    rooms = [f"room-{r}" for r in range(10)]
    members: dict[str, list[ChatClient]] = {room: [] for room in rooms}
    for i in range(50):
        room = rooms[i % 10]
        client: ChatClient = await connect(
            proxy.url, token=make_token(f"owner-{room}"), source_ip=f"127.0.0.{i + 10}"
        )
        await client.join(room)
        members[room].append(client)
    per_instance = [await asyncio.to_thread(app.connections) for app in apps]
    assert sum(per_instance) == 50
    assert min(per_instance) >= 5, f"nginx did not spread clients: {per_instance}"

    sent = await asyncio.gather(
        *(members[room][0].send(room, f"question in {room}") for room in rooms)
    )
    for room, message in zip(rooms, sent, strict=True):
        _sender, *others = members[room]
        for other in others:
            [echo] = await other.wait_for("userMessage", timeout=20)
            assert echo == message
        for member in members[room]:
            [reply] = await member.wait_for("aiMessage", timeout=20)
            assert room in reply["content"]
            assert_clean_stream(member, reply)
            assert {e["consultationId"] for _, e in member.events if isinstance(e, dict)} == {room}


async def test_two_devices_on_two_instances_one_reply_at_a_time_gap_free_seqs(
    cluster: Cluster, connect: Connect
) -> None:
    app_a, app_b = cluster.start_apps(2)
    token = make_token("carol")
    phone = await connect(app_a.url, token=token, join="race")
    laptop = await connect(app_b.url, token=token, join="race")
    watcher = await connect(app_b.url, token=make_token("op", role="operator"), join="race")

    for round_ in range(3):
        await asyncio.gather(
            phone.send("race", f"phone {round_}"), laptop.send("race", f"laptop {round_}")
        )
    await watcher.wait_for("aiMessage", timeout=30)
    await watcher.wait_quiet()
    statuses = [d["status"] for d in watcher.of("aiThinking")]
    assert statuses == ["processing", "done"] * (len(statuses) // 2), statuses
    # Chunks of different replies never interleave.
    order = [c["messageId"] for c in watcher.of("aiChunk")]
    runs = [m for i, m in enumerate(order) if i == 0 or order[i - 1] != m]
    assert len(runs) == len(set(runs)), "two replies streamed at the same time"
    for reply in watcher.of("aiMessage"):
        assert_clean_stream(watcher, reply)

    history = (await watcher.join("race", lastSeq=0))["messages"]
    assert [m["seq"] for m in history] == list(range(1, len(history) + 1))
    assert sum(m["role"] == "user" for m in history) == 6
    assert len({m["id"] for m in history}) == len(history)


async def test_a_client_joining_mid_stream_on_another_instance_gets_the_partial_then_the_rest(
    cluster: Cluster, connect: Connect
) -> None:
    app_a, app_b = cluster.start_apps(2, AI_MODELS="slow-60")
    token = make_token("dave")
    writer = await connect(app_a.url, token=token, join="midway")
    await writer.send("midway", "a question with a long answer of many words to stream")
    await writer.wait_for("aiChunk", count=3, timeout=20)

    late: ChatClient = await connect(app_b.url, token=token)
    ack = await late.join("midway")
    streaming = ack["streaming"]
    assert streaming["index"] >= 2
    assert streaming["content"]
    [final] = await late.wait_for("aiMessage", timeout=30)
    assert streaming["messageId"] == final["id"]
    live = [c for c in late.of("aiChunk") if c["index"] > streaming["index"]]
    assert [c["index"] for c in live] == list(
        range(streaming["index"] + 1, streaming["index"] + 1 + len(live))
    )
    assert streaming["content"] + "".join(c["content"] for c in live) == final["content"]
    [stored] = [m for m in (await late.join("midway"))["messages"] if m["role"] == "assistant"]
    assert stored == final
    assert "streaming" not in await late.join("midway")


async def test_redis_restart_local_service_continues_and_fanout_resumes(
    cluster: Cluster, connect: Connect
) -> None:
    redis = RedisServer()
    redis.start()
    try:
        app_a, app_b = cluster.start_apps(2, REDIS_URL=redis.url, AI_MODELS="good")
        token = make_token("frank")
        on_a = await connect(app_a.url, token=token, join="outage")
        on_b = await connect(app_b.url, token=token, join="outage")
        await on_a.send("outage", "before")
        await on_b.wait_for("aiMessage", timeout=20)

        redis.stop()
        for app in (app_a, app_b):
            status, body = await eventually(lambda app=app: _unready(app), timeout=15, interval=0.2)
            assert status == 503, body
            assert body["checks"]["coordination"] != "ok" or body["checks"]["fanout"] != "ok"
        # Local clients keep being served, replies included.
        during = await on_a.send("outage", "during the outage")
        await on_a.wait_for("aiMessage", lambda m: "during the outage" in m["content"], timeout=20)
        assert during["seq"] == 3

        redis.start()  # same port, empty
        async with asyncio.timeout(15):
            for app in (app_a, app_b):
                await asyncio.to_thread(app.wait_ready, 15)
        after = await on_a.send("outage", "after the restart")  # the very first event after
        [echo] = await on_b.wait_for("userMessage", lambda m: m["id"] == after["id"], timeout=10)
        assert echo == after
        await on_b.wait_for("aiMessage", lambda m: "after the restart" in m["content"], timeout=20)
        history = (await on_b.join("outage", lastSeq=0))["messages"]
        assert [m["seq"] for m in history] == list(range(1, len(history) + 1))
        assert "during the outage" in [m["content"] for m in history]
    finally:
        redis.stop()


async def test_stop_generation_on_one_instance_stops_the_reply_streaming_on_another(
    cluster: Cluster, connect: Connect
) -> None:
    app_a, app_b = cluster.start_apps(2, AI_MODELS="slow-80")
    token = make_token("gus")
    writer = await connect(app_a.url, token=token, join="stop-remote")
    stopper = await connect(app_b.url, token=make_token("op", role="operator"), join="stop-remote")
    await writer.send("stop-remote", "please write me a really long answer with many words")
    await stopper.wait_for("aiChunk", count=3, timeout=20)
    ack = await stopper.call("stopGeneration", {"consultationId": "stop-remote"})
    assert ack == {"ok": True, "stopping": True}
    for client in (writer, stopper):
        [message] = await client.wait_for("aiMessage", timeout=10)
        await client.wait_reply_done()
        assert message["status"] == "stopped"
        assert_clean_stream(client, message)
    [stored] = [
        m for m in (await stopper.join("stop-remote"))["messages"] if m["role"] == "assistant"
    ]
    assert stored["status"] == "stopped"
    assert len(stored["content"].split()) < len(
        ["Echo:", "please", "write", "me", "a", "really", "long", "answer", "with", "many", "words"]
    )


async def test_rate_limit_and_connection_limit_hold_across_instances(
    cluster: Cluster, connect: Connect
) -> None:
    app_a, app_b = cluster.start_apps(
        2,
        AI_MODELS="fail-500",
        RATE_LIMIT_MESSAGES="4",
        RATE_LIMIT_WINDOW_SECONDS="30",
        MAX_CONNECTIONS_PER_USER="2",
    )
    await limits_hold_across_instances(app_a.url, app_b.url, connect, make_token("hal"))


async def _unready(app: AppProcess) -> tuple[int, Any] | None:
    readiness = await asyncio.to_thread(app.readiness)
    return readiness if readiness[0] == 503 else None


async def test_status_gives_cluster_totals_from_every_live_instance(
    cluster: Cluster, connect: Connect
) -> None:
    app_a, app_b = cluster.start_apps(2)
    admin = {"Authorization": f"Bearer {make_token('root', role='admin')}"}
    await connect(app_a.url, token=make_token("one"), join="totals-1")
    on_b = [
        await connect(app_b.url, token=make_token("two"), join="totals-2"),
        await connect(app_b.url, token=make_token("three"), join="totals-3"),
    ]

    def totals(app: AppProcess) -> Any:
        status, body = http_json(app.url + "/ws/status", headers=admin)
        assert status == 200, body
        cluster_figures = body["cluster"]
        both = len(cluster_figures["instances"]) == 2
        return both and cluster_figures["active_connections"] == 3 and body

    seen_from_a = await eventually(lambda: totals(app_a), timeout=15)
    seen_from_b = await eventually(lambda: totals(app_b), timeout=15)
    assert seen_from_a["active_connections"] == 1 and seen_from_b["active_connections"] == 2
    assert seen_from_a["cluster"]["consultations_active"] == 3  # room memberships per instance
    assert seen_from_a["cluster"]["instances"] == seen_from_b["cluster"]["instances"]

    for client in on_b:  # gone before B stops: no client left to notice its shutdown
        await client.disconnect()
    app_b.stop()  # a stopping instance leaves the totals at once (a dead one within 15 s)
    status, body = http_json(app_a.url + "/ws/status", headers=admin)
    assert status == 200
    assert body["cluster"]["instances"] == [body["instance"]]
    assert body["cluster"]["active_connections"] == 1
