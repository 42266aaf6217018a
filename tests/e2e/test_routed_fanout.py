"""Routed fan-out across real instances on one redis-server: an instance receives a room's
broadcasts only while it has a member there, and a join is never overtaken by a broadcast."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import Cluster, Connect, make_token
from tests.servers import AppProcess, http_json

ADMIN = {"Authorization": f"Bearer {make_token('root', role='admin')}"}


async def fanout(app: AppProcess) -> dict[str, Any]:
    status, body = await asyncio.to_thread(http_json, app.url + "/ws/status", 3, ADMIN)
    assert status == 200, body
    return dict(body["fanout"])


async def test_an_instance_reads_a_room_only_while_it_has_a_member_there(
    cluster: Cluster, connect: Connect
) -> None:
    app_a, app_b, app_c = cluster.start_apps(3, AI_REPLIES="off", RATE_LIMIT_MESSAGES="1000")
    token = make_token("ann")
    on_a = await connect(app_a.url, token=token, join="routed")
    on_b = await connect(app_b.url, token=token, join="routed")
    elsewhere = await connect(app_c.url, token=token, join="quiet-room")
    marker = await connect(app_a.url, token=token, join="quiet-room")
    # A first marker: whatever the joins published (presence) has come and gone by then.
    await marker.send("quiet-room", "a first marker")
    await elsewhere.wait_for("userMessage")
    before = await fanout(app_c)
    assert before["mode"] == "redis"

    for i in range(30):
        await on_a.send("routed", f"m{i}")
    await on_b.wait_for("userMessage", count=30)
    await marker.send("quiet-room", "the marker, published after the 30")
    await elsewhere.wait_for("userMessage", count=2)
    after = await fanout(app_c)
    # C received the marker of its own room and nothing of the 30 messages of "routed".
    assert after["messages_received"] - before["messages_received"] == 1
    assert after["bytes_received"] - before["bytes_received"] < 600

    late = await connect(app_c.url, token=token, join="routed")  # C subscribes now
    for i in range(5):
        await on_a.send("routed", f"later {i}")
    await late.wait_for("userMessage", count=5)
    assert (await fanout(app_c))["messages_received"] - after["messages_received"] >= 5
    await late.call("leaveConsultation", {"consultationId": "routed"})
    await marker.send("quiet-room", "a marker after leaving")  # the leave's echoes are in
    await elsewhere.wait_for("userMessage", count=3)
    left = await fanout(app_c)
    for i in range(5):
        await on_a.send("routed", f"after leaving {i}")
    await on_b.wait_for("userMessage", lambda m: m["content"] == "after leaving 4")
    await marker.send("quiet-room", "second marker")
    await elsewhere.wait_for("userMessage", count=4)
    assert (await fanout(app_c))["messages_received"] - left["messages_received"] == 1


async def test_a_broadcast_right_after_a_join_on_another_instance_is_never_missed(
    cluster: Cluster, connect: Connect
) -> None:
    app_a, app_b = cluster.start_apps(2, AI_REPLIES="off", RATE_LIMIT_MESSAGES="1000")
    token = make_token("bea")
    sender = await connect(app_a.url, token=token)
    receiver = await connect(app_b.url, token=token)
    for i in range(60):
        room = f"join-race-{i}"
        await sender.join(room)
        await receiver.join(room)  # b's first member: b subscribes before this ack
        sent = await sender.send(room, f"right after the join {i}")
        [echo] = await receiver.wait_for("userMessage", lambda m, r=room: m["consultationId"] == r)
        assert echo == sent
        await receiver.call("leaveConsultation", {"consultationId": room})  # b unsubscribes
    assert len(receiver.of("userMessage")) == 60
