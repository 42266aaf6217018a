"""Handoff across instances (real processes, redis-server, SecantusDB): the user and the
operators on different instances; and one winner when Redis is down, decided by the store."""

from __future__ import annotations

import asyncio

from tests.conftest import Cluster, Connect, make_token
from tests.helpers import eventually
from tests.servers import AppProcess, RedisServer


def staff(name: str) -> str:
    return make_token(name, role="operator", name=name.title())


async def test_user_and_operators_on_different_instances(
    cluster: Cluster, connect: Connect
) -> None:
    app_a, app_b, app_c = cluster.start_apps(3, AI_MODELS="good")
    ann = await connect(app_a.url, token=make_token("ann"), join="spread-handoff")
    olga = await connect(app_b.url, token=staff("olga"))
    oscar = await connect(app_c.url, token=staff("oscar"))
    ack = await ann.call("requestOperator", {"consultationId": "spread-handoff"})
    assert ack["queuePosition"] == 1
    for op in (olga, oscar):
        await op.wait_for("newSupportRequest", timeout=10)
        await op.wait_for("operatorQueue", lambda q: len(q["items"]) == 1, timeout=10)

    acks = await asyncio.gather(
        olga.call("acceptConsultation", {"consultationId": "spread-handoff"}),
        oscar.call("acceptConsultation", {"consultationId": "spread-handoff"}),
    )
    assert sorted(a["ok"] for a in acks) == [False, True]
    assert [a["error"]["code"] for a in acks if not a["ok"]] == ["already_assigned"]
    winner = olga if acks[0]["ok"] else oscar
    [joined] = await ann.wait_for("operatorJoined", timeout=10)
    said = await winner.send("spread-handoff", "hello from another instance")
    [heard] = await ann.wait_for("userMessage", lambda m: m["id"] == said["id"], timeout=10)
    assert heard["role"] == "operator" and joined["operator"]["id"] == heard["userId"]
    asked = await ann.send("spread-handoff", "hi, operator")
    await winner.wait_for("userMessage", lambda m: m["id"] == asked["id"], timeout=10)
    for op in (olga, oscar):  # the queue is empty again everywhere
        await op.wait_for("operatorQueue", lambda q: q["items"] == [], timeout=10)

    assert (await winner.call("releaseConsultation", {"consultationId": "spread-handoff"}))["ok"]
    _, reply = await ann.ask("spread-handoff", "back to the assistant?", timeout=30)
    assert reply["status"] == "complete"
    assert ann.of("aiMessage")[-1] == reply  # only this reply: none while the operator held it


async def test_two_operators_on_two_instances_with_redis_down_one_winner(
    cluster: Cluster, connect: Connect
) -> None:
    redis = RedisServer().start()
    try:
        app_a, app_b = cluster.start_apps(2, REDIS_URL=redis.url, AI_MODELS="good")
        ann = await connect(app_a.url, token=make_token("ann"), join="no-redis")
        await ann.call("requestOperator", {"consultationId": "no-redis"})
        olga = await connect(app_a.url, token=staff("olga"))
        oscar = await connect(app_b.url, token=staff("oscar"))

        redis.stop()
        await eventually(lambda: _unready(app_a) and _unready(app_b), timeout=15)
        for _ in range(3):  # three rounds of simultaneous accepts: exactly one success
            acks = await asyncio.gather(
                olga.call("acceptConsultation", {"consultationId": "no-redis"}),
                oscar.call("acceptConsultation", {"consultationId": "no-redis"}),
            )
            assert sum(1 for a in acks if a["ok"]) <= 1
        owners = {("olga" if n == 0 else "oscar") for n, a in enumerate(acks) if a["ok"]}
        history = (await ann.join("no-redis", lastSeq=0))["messages"]
        joins = [m for m in history if m["role"] == "system" and "joined" in m["content"]]
        assert len(joins) == 1  # one winner, decided by the database
        consultation = (await ann.join("no-redis"))["consultation"]
        assert consultation["mode"] == "operator"
        assert owners <= {consultation["operator"]["id"]}
    finally:
        redis.stop()


def _unready(app: AppProcess) -> bool:
    status, _ = app.readiness()
    return bool(status == 503)
