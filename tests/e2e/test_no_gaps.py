"""No silent gaps: a client that stays connected through a Redis outage ends up with every
stored message, in order, once — without reconnecting or rejoining."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import Cluster, Connect, make_token
from tests.helpers import ChatClient, eventually
from tests.servers import RedisServer


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
