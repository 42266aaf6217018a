"""Every event, fed malformed payloads, answers ok: false and the connection lives on."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Connect, StartServer

BAD_PAYLOADS: list[tuple[str, Any]] = [
    ("joinConsultation", None),
    ("joinConsultation", "test-123"),
    ("joinConsultation", 42),
    ("joinConsultation", [{"consultationId": "x"}]),
    ("joinConsultation", {}),
    ("joinConsultation", {"consultationId": 123}),
    ("joinConsultation", {"consultationId": ""}),
    ("joinConsultation", {"consultationId": "x" * 10_000}),
    ("joinConsultation", {"consultationId": "bad id with spaces"}),
    ("joinConsultation", {"consultationId": {"$gt": ""}}),
    ("joinConsultation", {"consultationId": "ok", "lastSeq": "3"}),
    ("joinConsultation", {"consultationId": "ok", "lastSeq": -1}),
    ("joinConsultation", {"consultationId": "ok", "lastSeq": True}),
    ("joinConsultation", {"consultationId": "ok", "lastSeq": 1.5}),
    ("sendMessage", None),
    ("sendMessage", "hello"),
    ("sendMessage", {"consultationId": "ok"}),
    ("sendMessage", {"content": "no consultation"}),
    ("sendMessage", {"consultationId": "ok", "content": 5}),
    ("sendMessage", {"consultationId": "ok", "content": ["a"]}),
    ("sendMessage", {"consultationId": "ok", "content": ""}),
    ("sendMessage", {"consultationId": "ok", "content": " \n\t "}),
    ("sendMessage", {"consultationId": "ok", "content": "x" * 8001}),
    ("sendMessage", {"consultationId": "ok", "content": "hi", "clientMessageId": 7}),
    ("sendMessage", {"consultationId": "ok", "content": "hi", "clientMessageId": "c" * 500}),
    ("leaveConsultation", None),
    ("leaveConsultation", {"consultationId": None}),
    ("leaveConsultation", {"nested": {"deep": [1, 2, {"x": None}]}}),
]


@pytest.mark.parametrize(("event", "payload"), BAD_PAYLOADS)
async def test_malformed_payloads_get_an_error_ack_and_the_socket_keeps_working(
    start_server: StartServer, connect: Connect, event: str, payload: Any
) -> None:
    server = await start_server(ai_models=("fail-500",))
    client = await connect(server.url, join="ok")
    ack = await client.call(event, payload)
    assert ack["ok"] is False, ack
    assert ack["error"]["code"] in {"invalid_payload", "not_joined"}
    assert isinstance(ack["error"]["message"], str) and ack["error"]["message"]
    [error] = await client.wait_for("error", lambda e: e["code"] == ack["error"]["code"])
    assert error["message"] == ack["error"]["message"]
    # Still connected, still usable, nothing was stored by the bad event.
    message = await client.send("ok", "still here")
    assert message["seq"] == 1


async def test_unknown_events_and_extra_arguments_are_answered(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(ai_models=("fail-500",))
    client = await connect(server.url)
    assert (await client.call("noSuchEvent", {}))["error"]["code"] == "unknown_event"
    extra = await client.sio.call(
        "joinConsultation", ({"consultationId": "a"}, {"b": 1}), namespace="/chat", timeout=5
    )
    assert extra["error"]["code"] == "invalid_payload"
    # A client emitting reserved names must not re-run the handshake or fake a disconnect.
    assert (await client.call("connect", {"token": "x"}))["error"]["code"] == "unknown_event"
    assert (await client.call("disconnect", "client"))["error"]["code"] == "unknown_event"
    await client.join("a")
    assert (await client.send("a", "fine"))["seq"] == 1


async def test_the_content_limit_is_configurable(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(max_message_chars=10, ai_models=("fail-500",))
    client = await connect(server.url, join="short")
    assert (await client.send("short", "x" * 10))["seq"] == 1
    too_long = await client.call("sendMessage", {"consultationId": "short", "content": "x" * 11})
    assert too_long["error"]["code"] == "invalid_payload"
