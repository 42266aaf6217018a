"""What operators and frontend developers read: /metrics, /ws/status, /ws/handlers,
/asyncapi.json, /api/stats, the Admin UI, structured logs."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
import socketio
from prometheus_client.parser import text_string_to_metric_families

from server.domain.events import CATALOGUE
from server.domain.session import ChatSession
from server.observability.logs import JsonFormatter
from tests.conftest import JWT_SECRET, Connect, StartServer, make_token
from tests.helpers import ChatClient, eventually

JS = Path(__file__).resolve().parent.parent / "js"
METRICS_TOKEN = "metrics-" + "m" * 32
ASYNCAPI_SCHEMA = JS / "node_modules" / "@asyncapi" / "specs" / "schemas" / "3.0.0.json"


async def get(url: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        text = await response.text()
        body = json.loads(text) if response.content_type == "application/json" else text
        return response.status, body


async def metric_samples(
    url: str, token: str | None = None
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, parsed by prometheus-client's own parser."""
    status, text = await get(url + "/metrics", token)
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_and_status_move_with_official_client_traffic(
    start_server: StartServer,
) -> None:
    node = shutil.which("node")
    if node is None or not (JS / "node_modules" / "socket.io-client").is_dir():
        pytest.fail("node and tests/js/node_modules are needed: run scripts/test")
    server = await start_server(ai_models=("slow-40",))  # replies stream for about a second
    before = await metric_samples(server.url)
    assert value(before, "chat_connections") == 0
    process = await asyncio.create_subprocess_exec(
        node,
        str(JS / "traffic.mjs"),
        server.url,
        "3",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stdin is not None
    try:
        line = json.loads(await asyncio.wait_for(process.stdout.readline(), 30))
        assert line == {"step": "streaming"}
        # Every reply streams right now: the figures say so.
        status = (await get(server.url + "/ws/status"))[1]
        assert status["active_connections"] == 3
        assert status["ai_replies_in_flight"] == 3
        assert status["consultations_active"] == 3
        assert status["total_messages"] == 3
        assert status["cluster"] is None  # a single instance
        during = await metric_samples(server.url)
        assert value(during, "chat_connections") == 3
        assert value(during, "chat_ai_replies_in_flight") == 3

        line = json.loads(await asyncio.wait_for(process.stdout.readline(), 30))
        assert line == {"step": "answered"}
        after = await metric_samples(server.url)
        assert value(after, "chat_events_total", event="joinConsultation", outcome="ok") == 3
        assert value(after, "chat_events_total", event="sendMessage", outcome="ok") == 3
        assert value(after, "chat_messages_stored_total", role="user") == 3
        assert value(after, "chat_messages_stored_total", role="assistant") == 3
        assert value(after, "chat_ai_first_token_seconds_count", model="slow-40") == 3
        replies = value(after, "chat_ai_reply_seconds_count", model="slow-40", status="complete")
        assert replies == 3
        assert value(after, "chat_connections_opened_total") == 3
    finally:
        process.stdin.close()
        await asyncio.wait_for(process.wait(), 15)

    async def settled() -> bool:
        status = (await get(server.url + "/ws/status"))[1]
        return status["active_connections"] == 0 and status["ai_replies_in_flight"] == 0

    await eventually(settled)
    final = await metric_samples(server.url)
    assert value(final, "chat_connections") == 0


async def test_refusals_failures_and_fallbacks_are_counted(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(ai_models=("fail-503", "good"), rate_limit_messages=2)
    client = await connect(server.url, join="counted")
    await client.ask("counted", "first")
    await client.ask("counted", "second")
    assert await client.fails("sendMessage", {"consultationId": "counted", "content": "x"}) == (
        "rate_limited"
    )
    assert await client.fails("noSuchEvent", {}) == "unknown_event"
    samples = await metric_samples(server.url)
    assert value(samples, "chat_rejected_total", reason="rate_limited") == 1
    assert value(samples, "chat_events_total", event="sendMessage", outcome="rate_limited") == 1
    assert value(samples, "chat_events_total", event="unknown", outcome="unknown_event") == 1
    assert value(samples, "chat_ai_errors_total", code="ai_unavailable", model="fail-503") == 2
    assert value(samples, "chat_ai_fallbacks_total", model="fail-503") == 2


async def test_handlers_and_asyncapi_list_exactly_the_events_the_namespace_answers(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server()
    status, handlers = await get(server.url + "/ws/handlers")
    assert status == 200
    names = [event["name"] for event in handlers["clientEvents"]]
    assert names == [event.name for event in CATALOGUE.client]
    # Each is answered by a handler of the session (dispatch looks them up by name) ...
    for event in CATALOGUE.client:
        assert callable(getattr(ChatSession, event.handler))
    # ... and over a real connection every listed event is known, anything else is not.
    client = await connect(server.url)
    for name in names:
        ack = await client.call(name, {})
        assert ack["ok"] or ack["error"]["code"] != "unknown_event", (name, ack)
    assert await client.fails("notAnEvent", {}) == "unknown_event"
    send = next(e for e in handlers["clientEvents"] if e["name"] == "sendMessage")
    assert send["payload"]["required"] == ["consultationId", "content"]
    assert set(send["causes"]) >= {"userMessage", "aiChunk", "aiMessage"}
    assert [e["name"] for e in handlers["serverEvents"]] == [e.name for e in CATALOGUE.server]

    status, document = await get(server.url + "/asyncapi.json")
    assert status == 200
    schema = json.loads(ASYNCAPI_SCHEMA.read_text())
    jsonschema.validate(document, schema)  # raises with the path of the first violation
    operations = document["operations"]
    assert {o.removeprefix("receive_") for o in operations if o.startswith("receive_")} == set(
        names
    )
    assert {o.removeprefix("send_") for o in operations if o.startswith("send_")} == {
        e.name for e in CATALOGUE.server
    }
    assert document["channels"]["chat"]["address"] == "/chat"
    join = operations["receive_joinConsultation"]
    assert join["reply"]["messages"][0]["$ref"] == "#/channels/chat/messages/joinConsultationAck"
    # Every $ref resolves inside the document.
    text = json.dumps(document)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/')[1:]}:
        node: Any = document
        for step in ref.split("/"):
            node = node[step]


async def two_tenants(url: str, connect: Connect) -> tuple[datetime, datetime]:
    """acme: ana asks and rates (twice), ben is handed to Olga and rates; globex: cy asks.
    Returns the period it all happened in."""
    began = datetime.now(UTC) - timedelta(seconds=1)

    ana = await connect(url, token=make_token("ana", tenant="acme"), join="acme-1")
    await ana.ask("acme-1", "Is this covered?")
    assert (await ana.call("rateConsultation", {"consultationId": "acme-1", "score": 2}))["ok"]
    rated = await ana.call("rateConsultation", {"consultationId": "acme-1", "score": 5})
    assert rated["consultation"]["rating"]["score"] == 5  # changed: the last one counts

    ben = await connect(url, token=make_token("ben", tenant="acme"), join="acme-2")
    await ben.ask("acme-2", "I need a person")
    assert (await ben.call("requestOperator", {"consultationId": "acme-2"}))["ok"]
    olga = await connect(url, token=make_token("olga", tenant="acme", role="operator"))
    assert (await olga.call("acceptConsultation", {"consultationId": "acme-2"}))["ok"]
    await olga.send("acme-2", "Hello, I am Olga")
    await ben.wait_for("userMessage", lambda m: m["role"] == "operator")
    assert (await ben.call("rateConsultation", {"consultationId": "acme-2", "score": 3}))["ok"]
    # Only the owner rates; scores are 1-5.
    assert await olga.fails("rateConsultation", {"consultationId": "acme-2", "score": 5}) == (
        "forbidden"
    )
    bad = await ben.call("rateConsultation", {"consultationId": "acme-2", "score": 6})
    assert bad["error"]["code"] == "invalid_payload" and bad["error"]["field"] == "score"

    cy = await connect(url, token=make_token("cy", tenant="globex"), join="globex-1")
    await cy.ask("globex-1", "Elsewhere")
    ended = datetime.now(UTC) + timedelta(seconds=1)
    return began, ended


async def test_stats_over_two_tenants_and_a_period(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(jwt_secret=JWT_SECRET, metrics_token=METRICS_TOKEN)
    began, ended = await two_tenants(server.url, connect)

    acme_admin = make_token("root", tenant="acme", role="admin")
    status, acme = await get(server.url + "/api/stats", acme_admin)
    assert status == 200, acme
    assert acme["consultations"] == 2
    # ana: question + reply; ben: question + reply + the operator's message (system notes
    # are not counted).
    assert acme["messages"] == 5
    assert acme["handoffs"] == 1
    assert acme["resolvedWithoutOperatorRatio"] == 0.5
    assert acme["avgRating"] == 4.0 and acme["ratings"] == 2
    assert acme["avgAiResponseMs"] > 0

    globex_operator = make_token("gina", tenant="globex", role="operator")
    status, globex = await get(server.url + "/api/stats", globex_operator)
    assert (globex["consultations"], globex["messages"], globex["handoffs"]) == (1, 2, 0)
    assert globex["resolvedWithoutOperatorRatio"] == 1.0 and globex["avgRating"] is None

    def at(moment: datetime) -> str:
        return moment.isoformat().replace("+00:00", "Z")

    window = f"?from={at(began)}&to={at(ended)}"
    assert (await get(server.url + "/api/stats" + window, acme_admin))[1]["messages"] == 5
    before = f"?to={at(began)}"
    status, empty = await get(server.url + "/api/stats" + before, acme_admin)
    assert (empty["consultations"], empty["messages"], empty["avgRating"]) == (0, 0, None)
    status, later = await get(server.url + f"/api/stats?from={at(ended)}", acme_admin)
    assert (later["consultations"], later["messages"]) == (0, 0)

    status, refused = await get(server.url + "/api/stats", make_token("ana", tenant="acme"))
    assert status == 403 and refused["error"]["code"] == "forbidden"
    status, invalid = await get(server.url + "/api/stats?from=yesterday", acme_admin)
    assert status == 400 and invalid["error"]["field"] == "from"

    samples = await metric_samples(server.url, METRICS_TOKEN)
    assert value(samples, "chat_ratings_total", score="5") == 1
    assert value(samples, "chat_handoffs_total", step="requested") == 1
    assert value(samples, "chat_handoffs_total", step="accepted") == 1
    assert value(samples, "chat_operator_queue_wait_seconds_count") == 1
    assert value(samples, "chat_messages_stored_total", role="operator") == 1


async def test_the_admin_ui_namespace_takes_the_configured_credentials_only(
    start_server: StartServer,
) -> None:
    server = await start_server(admin_ui_username="admin", admin_ui_password="s3cret-admin-pw")

    async def admin(password: str) -> bool:
        client = socketio.AsyncClient(reconnection=False)
        try:
            await client.connect(
                server.url,
                namespaces=["/admin"],
                auth={"username": "admin", "password": password},
                transports=["websocket"],
                wait_timeout=5,
            )
        except socketio.exceptions.ConnectionError:
            await client.disconnect()  # nothing may linger into later tests (one event loop)
            return False
        try:
            return "/admin" in client.namespaces
        finally:
            await client.disconnect()

    assert await admin("s3cret-admin-pw") is True
    assert await admin("wrong") is False
    # /chat is unaffected.
    user = ChatClient(server.url)
    await user.connect()
    await user.join("next-to-admin")
    await user.disconnect()

    plain = await start_server()  # without credentials there is no /admin namespace
    client = socketio.AsyncClient(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(plain.url, namespaces=["/admin"], wait_timeout=5)
    await client.disconnect()


async def test_event_log_lines_carry_their_fields_and_no_content(
    start_server: StartServer, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = await start_server()
    client = await connect(server.url, auth={"userId": "logged-user"}, join="logged")
    await client.ask("logged", "a secret symptom")
    await client.disconnect()

    def fields(message_start: str) -> list[dict[str, Any]]:
        return [
            r.fields  # type: ignore[attr-defined]
            for r in caplog.records
            if r.getMessage().startswith(message_start) and hasattr(r, "fields")
        ]

    [sent] = fields("event sendMessage")
    assert sent["outcome"] == "ok" and sent["consultationId"] == "logged"
    assert sent["userId"] == "logged-user" and sent["tenant"] == "default"
    assert "content" not in sent
    [reply] = fields("reply ")
    assert reply["status"] == "complete" and reply["model"] == "good"
    assert reply["firstTokenMs"] is not None and reply["chunks"] >= 1
    assert fields("connected")[0]["transport"] == "socketio"
    await eventually(lambda: fields("disconnected"))
    leaked = [r for r in caplog.records if "a secret symptom" in r.getMessage()]
    assert not leaked, [(r.name, r.getMessage()) for r in leaked]
    # The JSON format: one object per line, fields at the top level.
    record = next(r for r in caplog.records if r.getMessage().startswith("event sendMessage"))
    line = json.loads(JsonFormatter().format(record))
    assert line["event"] == "sendMessage" and line["level"] == "INFO"
