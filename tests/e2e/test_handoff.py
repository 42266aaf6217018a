"""Live operator handoff on one instance: request, queue, accept (one winner), the assistant's
silence, release with the note in the model's context, close; access rules; presence and
typing. (Across instances: test_handoff_cluster.py.)"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import JWT_SECRET, Connect, RunningServer, StartServer, make_token
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import ChatClient, assert_clean_stream, eventually

LONG = "tell me in a long answer of many many words what I should do about my knee"


async def handoff_server(start_server: StartServer, **settings: Any) -> RunningServer:
    return await start_server(jwt_secret=JWT_SECRET, ai_models=("slow-50",), **settings)


def staff(name: str, *, tenant: str = "t1", role: str = "operator") -> str:
    return make_token(name, role=role, tenant=tenant, name=name.title())


def after(client: ChatClient, marker: tuple[str, Any]) -> list[tuple[str, Any]]:
    return client.events[client.events.index(marker) + 1 :]


async def test_a_request_reaches_operators_and_one_accept_wins_cutting_the_reply(
    start_server: StartServer, connect: Connect, fake_openai: FakeOpenAI
) -> None:
    server = await handoff_server(start_server)
    olga = await connect(server.url, token=staff("olga"))
    oscar = await connect(server.url, token=staff("oscar"))
    [empty] = await olga.wait_for("operatorQueue")  # a snapshot at connect
    assert empty == {"items": []}
    ann = await connect(server.url, token=make_token("ann"), join="knee")
    assert (await ann.join("knee"))["consultation"]["mode"] == "ai"

    # The owner asks for a human: the consultation waits, everyone concerned is told.
    ack = await ann.call("requestOperator", {"consultationId": "knee", "reason": "pain"})
    assert ack["ok"] and ack["queuePosition"] == 1
    assert ack["consultation"]["mode"] == "waiting"
    [pending] = await ann.wait_for("supportPending")
    assert pending == {"consultationId": "knee", "queuePosition": 1}
    for op in (olga, oscar):
        [request] = await op.wait_for("newSupportRequest")
        assert (request["consultationId"], request["userId"], request["reason"]) == (
            "knee",
            "ann",
            "pain",
        )
        [snapshot] = await op.wait_for("operatorQueue", lambda q: q["items"], count=1)
        assert [(i["consultationId"], i["position"]) for i in snapshot["items"]] == [("knee", 1)]
    [record] = await ann.wait_for("systemMessage")
    assert record["role"] == "system" and record["seq"] == 1
    assert (await olga.call("getOperatorQueue"))["items"][0]["consultationId"] == "knee"

    # While waiting the assistant still answers; two operators accept during its reply.
    await ann.send("knee", LONG)
    await ann.wait_for("aiChunk", count=3, timeout=20)
    acks = await asyncio.gather(
        olga.call("acceptConsultation", {"consultationId": "knee"}),
        oscar.call("acceptConsultation", {"consultationId": "knee"}),
    )
    winners = [a for a in acks if a["ok"]]
    losers = [a for a in acks if not a["ok"]]
    assert len(winners) == 1 and len(losers) == 1
    assert losers[0]["error"]["code"] == "already_assigned"
    won = winners[0]
    winner_name = "olga" if acks[0]["ok"] else "oscar"
    assert won["consultation"]["mode"] == "operator"
    assert won["consultation"]["operator"] == {"id": winner_name, "name": winner_name.title()}
    assert {"userId": "ann", "role": "user"} in won["online"]
    [joined] = await ann.wait_for("operatorJoined")
    assert joined["operator"]["id"] == winner_name
    # The reply streaming at the acceptance ended there: no chunk after operatorJoined, and
    # what the room saw is the stored reply, stopped.
    [cut] = await ann.wait_for("aiMessage")
    assert cut["status"] == "stopped"
    assert_clean_stream(ann, cut)
    assert [n for n, _ in after(ann, ("operatorJoined", joined)) if n == "aiChunk"] == []
    await ann.wait_for("aiThinking", lambda t: t["status"] == "done")


async def test_while_an_operator_holds_it_the_assistant_is_silent_until_released(
    start_server: StartServer, connect: Connect, fake_openai: FakeOpenAI
) -> None:
    server = await handoff_server(start_server)
    ann = await connect(server.url, token=make_token("ann"), join="knee")
    winner = await connect(server.url, token=staff("olga"))
    winner_name = "olga"
    await ann.call("requestOperator", {"consultationId": "knee"})
    assert (await winner.call("acceptConsultation", {"consultationId": "knee"}))["ok"]
    await ann.wait_for("operatorJoined")

    # Both are heard; the assistant is silent (a positive marker follows: the operator's
    # answer comes after the user's question, and no reply was started in between).
    thinking_before = len(ann.of("aiThinking"))
    mine = await ann.send("knee", "is it serious?")
    [heard] = await winner.wait_for("userMessage", lambda m: m["id"] == mine["id"])
    assert heard["role"] == "user"
    answer = await winner.send("knee", "let me check your history")
    assert answer["role"] == "operator" and answer["authorName"] == winner_name.title()
    [relayed] = await ann.wait_for("userMessage", lambda m: m["role"] == "operator")
    assert relayed == answer
    assert len(ann.of("aiThinking")) == thinking_before  # no reply to "is it serious?"
    assert (await ann.fails("acceptConsultation", {"consultationId": "knee"})) == "forbidden"
    assert (await ann.fails("releaseConsultation", {"consultationId": "knee"})) == "forbidden"

    # Released: the assistant answers again, told that a human handled part of it.
    released = await winner.call("releaseConsultation", {"consultationId": "knee"})
    assert released["ok"] and released["consultation"]["mode"] == "ai"
    await ann.wait_for("consultationUpdated", lambda u: u["mode"] == "ai")
    fake_openai.requests.clear()
    _, reply = await ann.ask("knee", "thanks, and what now?", timeout=30)
    assert reply["status"] == "complete"
    context = fake_openai.requests[-1]["messages"]
    assert any("human support operator" in m["content"] for m in context if m["role"] == "system")
    assert {
        "role": "assistant",
        "content": f"[Support operator {winner_name.title()}]: let me check your history",
    } in context
    assert context[-1] == {"role": "user", "content": "thanks, and what now?"}

    # Closed: sends are refused, the history (with its records) stays readable.
    closed = await ann.call("closeConsultation", {"consultationId": "knee"})
    assert closed["ok"] and closed["consultation"]["mode"] == "closed"
    refused = await ann.fails("sendMessage", {"consultationId": "knee", "content": "hello?"})
    assert refused == "consultation_closed"
    history = (await ann.join("knee", lastSeq=0))["messages"]
    assert [m["seq"] for m in history] == list(range(1, len(history) + 1))
    records = [m["content"] for m in history if m["role"] == "system"]
    assert len(records) == 4  # asked, joined, handed back, closed
    assert "closed" in records[-1]


async def test_operators_of_another_tenant_see_nothing_and_users_cannot_take_over(
    start_server: StartServer, connect: Connect
) -> None:
    server = await handoff_server(start_server)
    stranger = await connect(server.url, token=staff("sam", tenant="t2"))
    mine = await connect(server.url, token=staff("olga"))
    ben = await connect(server.url, token=make_token("ben"), join="private")
    await ben.call("requestOperator", {"consultationId": "private"})
    await mine.wait_for("newSupportRequest")
    assert (await stranger.call("getOperatorQueue"))["items"] == []
    assert await stranger.fails("acceptConsultation", {"consultationId": "private"}) == "not_found"
    assert stranger.of("newSupportRequest") == []
    other_user = await connect(server.url, token=make_token("eve"))
    assert await other_user.fails("acceptConsultation", {"consultationId": "private"}) == (
        "forbidden"
    )
    assert await other_user.fails("getOperatorQueue") == "forbidden"


async def test_queue_positions_capacity_and_the_wait_timeout(
    start_server: StartServer, connect: Connect
) -> None:
    server = await handoff_server(
        start_server, operator_max_active=1, operator_wait_timeout_seconds=3
    )
    olga = await connect(server.url, token=staff("olga"))
    owners = [await connect(server.url, token=make_token(f"u{n}"), join=f"q{n}") for n in range(3)]
    for n, owner in enumerate(owners):
        ack = await owner.call("requestOperator", {"consultationId": f"q{n}"})
        assert ack["queuePosition"] == n + 1
    await eventually(lambda: (olga.of("operatorQueue") or [{}])[-1].get("items", []).__len__() == 3)
    assert [i["consultationId"] for i in olga.of("operatorQueue")[-1]["items"]] == [
        "q0",
        "q1",
        "q2",
    ]

    assert (await olga.call("acceptConsultation", {"consultationId": "q0"}))["ok"]
    # The others move up; their owners are told.
    await owners[2].wait_for("supportPending", lambda p: p["queuePosition"] == 2)
    await owners[1].wait_for("supportPending", lambda p: p["queuePosition"] == 1)
    at_capacity = await olga.call("acceptConsultation", {"consultationId": "q1"})
    assert at_capacity["error"]["code"] == "operator_at_capacity"

    # Nobody takes q1 and q2: after the wait timeout they go back to the assistant.
    for n in (1, 2):
        await owners[n].wait_for("consultationUpdated", lambda u: u["mode"] == "ai", timeout=15)
        [notice] = await owners[n].wait_for(
            "systemMessage", lambda m: "No operator" in m["content"]
        )
        assert notice["role"] == "system"
    await eventually(lambda: olga.of("operatorQueue")[-1]["items"] == [], timeout=10)
    _, reply = await owners[1].ask("q1", "so the assistant again?", timeout=30)
    assert reply["status"] == "complete"


async def test_an_operator_who_vanishes_loses_the_consultation_to_the_front_of_the_queue(
    start_server: StartServer, connect: Connect
) -> None:
    server = await handoff_server(start_server, operator_grace_seconds=1)
    olga = await connect(server.url, token=staff("olga"))
    ann = await connect(server.url, token=make_token("ann"), join="held")
    bob = await connect(server.url, token=make_token("bob"), join="later")
    await ann.call("requestOperator", {"consultationId": "held"})
    assert (await olga.call("acceptConsultation", {"consultationId": "held"}))["ok"]
    await bob.call("requestOperator", {"consultationId": "later"})  # waits meanwhile
    watcher = await connect(server.url, token=staff("oscar"))
    await olga.disconnect()  # her only connection

    await ann.wait_for("consultationUpdated", lambda u: u["mode"] == "waiting", timeout=15)
    [notice] = await ann.wait_for("systemMessage", lambda m: "disconnected" in m["content"])
    assert "front of the queue" in notice["content"]
    [pending] = await ann.wait_for("supportPending", lambda p: p["consultationId"] == "held")
    assert pending["queuePosition"] == 1  # ahead of bob's, though bob waited first
    queue = await watcher.call("getOperatorQueue")
    assert [i["consultationId"] for i in queue["items"]] == ["held", "later"]
    await watcher.wait_for("newSupportRequest", lambda r: r["consultationId"] == "held")


async def test_presence_counts_tabs_and_typing_clears_itself(
    start_server: StartServer, connect: Connect
) -> None:
    server = await handoff_server(start_server)
    token = make_token("tia")
    tab_1 = await connect(server.url, token=token, join="tabs")  # the owner
    await tab_1.call("leaveConsultation", {"consultationId": "tabs"})
    watcher = await connect(server.url, token=staff("olga"), join="tabs")
    joined = await tab_1.join("tabs")
    assert {"userId": "olga", "role": "operator"} in joined["online"]
    [online] = await watcher.wait_for("userOnline")
    assert online == {"consultationId": "tabs", "userId": "tia", "role": "user"}
    tab_2 = await connect(server.url, token=token, join="tabs")

    await tab_1.call("typing", {"consultationId": "tabs", "isTyping": True})
    [typing] = await watcher.wait_for("typing")
    assert typing == {"consultationId": "tabs", "userId": "tia", "role": "user", "isTyping": True}
    assert tab_1.of("typing") == []  # not to the typist
    # No refresh: the server clears it by itself after about 5 s.
    [cleared] = await watcher.wait_for("typing", lambda t: not t["isTyping"], timeout=8)
    assert cleared["userId"] == "tia"

    await tab_1.disconnect()
    await tab_2.call("typing", {"consultationId": "tabs", "isTyping": False})  # a marker
    await watcher.wait_for("typing", lambda t: not t["isTyping"], count=2)
    assert watcher.of("userOffline") == []  # one tab is still there
    await tab_2.disconnect()
    [offline] = await watcher.wait_for("userOffline")
    assert offline == {"consultationId": "tabs", "userId": "tia", "role": "user"}
    assert len(watcher.of("userOnline")) == 1


async def test_rest_lists_the_queue_and_consultations_for_staff_only(
    start_server: StartServer, connect: Connect
) -> None:
    import aiohttp

    server = await handoff_server(start_server)
    ann = await connect(server.url, token=make_token("ann"), join="rest-q")
    await ann.call("requestOperator", {"consultationId": "rest-q"})
    await connect(server.url, token=make_token("ann"), join="rest-ai")

    async def get(path: str, token: str) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            aiohttp.ClientSession() as http,
            http.get(server.url + path, headers=headers) as r,
        ):
            return r.status, await r.json()

    status, body = await get("/api/operator/queue", staff("olga"))
    assert status == 200 and [i["consultationId"] for i in body["items"]] == ["rest-q"]
    status, body = await get("/api/consultations?mode=waiting", staff("root", role="admin"))
    assert [c["consultationId"] for c in body["consultations"]] == ["rest-q"]
    status, body = await get("/api/consultations", staff("olga"))
    assert {c["consultationId"] for c in body["consultations"]} == {"rest-q", "rest-ai"}
    assert (await get("/api/consultations?mode=nope", staff("olga")))[0] == 400
    assert (await get("/api/operator/queue", make_token("ann")))[0] == 403
    assert (await get("/api/operator/queue", staff("sam", tenant="t2")))[1]["items"] == []
