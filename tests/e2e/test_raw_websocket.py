"""``/ws/chat``: plain WebSocket clients (the ``websockets`` library) in the same rooms as
Socket.IO clients, with the same events, acks and errors."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import timedelta

import pytest
import websockets

from tests.conftest import JWT_SECRET, Cluster, Connect, StartServer, make_token
from tests.helpers import RawClient, assert_clean_stream, eventually
from tests.servers import ROOT


async def raw(url: str, **kwargs: object) -> RawClient:
    return await RawClient(url, **kwargs).connect()  # type: ignore[arg-type]


async def test_raw_and_socketio_clients_share_a_consultation_and_its_streamed_reply(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(jwt_secret=JWT_SECRET)
    token = make_token("ruth")
    plain = await raw(server.url, token=token)
    [hello] = plain.of("connected")
    assert hello["clientId"].endswith("@" + server.components.hub.instance_id)
    assert hello["heartbeatInterval"] == 25 and hello["serverTime"].endswith("Z")
    assert (hello["userId"], hello["tenantId"], hello["role"]) == ("ruth", "t1", "user")
    sio = await connect(server.url, token=token, join="mixed")
    joined = await plain.join("mixed")
    assert joined["consultation"]["consultationId"] == "mixed"

    from_raw = await plain.send("mixed", "typed in a plain websocket")
    [seen] = await sio.wait_for("userMessage")
    assert seen == from_raw
    [reply_sio] = await sio.wait_for("aiMessage")
    [reply_raw] = await plain.wait_for("aiMessage")
    assert reply_raw == reply_sio
    raw_chunks = plain.of("aiChunk")
    assert raw_chunks == sio.of("aiChunk")
    assert "".join(c["content"] for c in raw_chunks) == reply_raw["content"]
    await plain.wait_for("aiThinking", lambda d: d["status"] == "done")

    from_sio = await sio.send("mixed", "typed in socket.io")
    [echo] = await plain.wait_for("userMessage")
    assert echo == from_sio
    assert server.components.connections.count == 2  # /healthz counts raw clients too
    await plain.close()


async def test_raw_clients_on_two_instances_and_socketio_share_rooms(
    cluster: Cluster, connect: Connect
) -> None:
    _, app_b = cluster.start_apps(2, AI_MODELS="good")
    proxy = cluster.start_nginx()
    token = make_token("sven")
    plain_a = await raw(proxy.url, token=token)  # through nginx, as deployed
    plain_b = await raw(app_b.url, token=token)
    sio_b = await connect(app_b.url, token=token, join="spread")
    await plain_a.join("spread")
    await plain_b.join("spread")
    sent = await plain_a.send("spread", "across instances")
    for receiver in (plain_b, sio_b):
        [echo] = await receiver.wait_for("userMessage")
        assert echo == sent
    [reply] = await sio_b.wait_for("aiMessage", timeout=20)
    assert_clean_stream(sio_b, reply)
    for plain in (plain_a, plain_b):
        [same] = await plain.wait_for("aiMessage", timeout=20)
        assert same == reply
        assert plain.of("aiChunk") == sio_b.of("aiChunk")
        await plain.close()


BAD_FRAMES: list[tuple[str, str]] = [
    ("not json at all", "invalid_payload"),
    ("[1, 2, 3]", "invalid_payload"),
    ('{"data": {}}', "invalid_payload"),
    ('{"event": 5}', "invalid_payload"),
    ('{"event": "noSuchEvent", "data": {}}', "unknown_event"),
    ('{"event": "joinConsultation", "data": "x"}', "invalid_payload"),
    ('{"event": "joinConsultation", "data": {"consultationId": "bad id"}}', "invalid_payload"),
    (
        '{"event": "sendMessage", "data": {"consultationId": "raw-bad", "content": 5}}',
        "invalid_payload",
    ),
    (
        '{"event": "sendMessage", "data": {"consultationId": "nowhere", "content": "x"}}',
        "not_joined",
    ),
    (
        '{"event": "joinConsultation", "data": {"consultationId": "ok"}, "id": true}',
        "invalid_payload",
    ),
]


async def test_malformed_frames_get_an_error_and_the_socket_stays_open(
    start_server: StartServer,
) -> None:
    server = await start_server(ai_replies=False)
    client = await raw(server.url)
    await client.join("raw-bad")
    for n, (text, code) in enumerate(BAD_FRAMES):
        await client.send_text(text)
        await client.wait_for("error", count=n + 1)
        assert client.of("error")[n]["code"] == code, text
    # With an id, the same failures also answer an ack.
    ack = await client.call("sendMessage", {"consultationId": "raw-bad", "content": "  "})
    assert ack["ok"] is False and ack["error"]["code"] == "invalid_payload"
    assert (await client.call("noSuchEvent"))["error"]["code"] == "unknown_event"
    await client.send_text('{"id": "no-event", "data": {}}')  # no event, but an id: acked
    [ack] = await client.wait_for("ack", lambda a: a["id"] == "no-event", raw=True)
    assert ack["data"]["ok"] is False and ack["data"]["error"]["code"] == "invalid_payload"
    await client.send_text(b"\x00\x01 binary")
    await client.wait_for("error", lambda e: "binary" in e["message"])
    assert (await client.send("raw-bad", "still works"))["seq"] == 1
    assert client.closed is None
    await client.close()


async def test_old_style_frames_and_the_heartbeat(start_server: StartServer) -> None:
    server = await start_server()
    client = await raw(server.url)
    before = int(time.time() * 1000)
    await client.send_text('{"type": "ping"}')  # type for event, no data
    [pong] = await client.wait_for("pong")
    assert pong["timestamp"] >= before
    await client.send_text('{"type": "joinConsultation", "consultationId": "flat", "id": 9}')
    [ack] = await client.wait_for("ack", lambda a: a["id"] == 9, raw=True)
    assert ack["data"]["ok"] is True and ack["data"]["consultation"]["consultationId"] == "flat"
    await client.close()


async def test_a_frame_over_one_megabyte_closes_with_1009(start_server: StartServer) -> None:
    server = await start_server()
    client = await raw(server.url)
    await client.send_text(json.dumps({"event": "ping", "data": "x" * 1_100_000}))
    code, _ = await client.wait_closed()
    assert code == 1009
    survivor = await raw(server.url)  # the server is fine
    await survivor.join("after-big")
    await survivor.close()


@pytest.mark.parametrize(
    "token",
    [make_token(expires_in=timedelta(seconds=-5)), "garbage", make_token(secret="y" * 64)],
    ids=["expired", "garbage", "bad-signature"],
)
async def test_a_refused_token_closes_after_the_upgrade_with_4401_and_a_reason(
    start_server: StartServer, token: str
) -> None:
    server = await start_server(jwt_secret=JWT_SECRET)
    client = await RawClient(server.url, token=token).connect(wait_connected=False)
    code, reason = await client.wait_closed()
    assert code == 4401 and reason
    [error] = client.of("error")
    assert error["code"] == "unauthorized"


async def test_jwt_mode_authenticates_with_a_first_auth_frame(start_server: StartServer) -> None:
    server = await start_server(jwt_secret=JWT_SECRET, ws_auth_timeout_seconds=1)
    client = await raw(server.url)  # no token in the URL: connected, not yet authenticated
    assert "userId" not in client.of("connected")[0]
    ack = await client.call("auth", {"token": make_token("tess")})
    assert ack == {"ok": True, "userId": "tess", "tenantId": "t1", "role": "user"}
    assert (await client.join("after-auth"))["consultation"]["ownerId"] == "tess"
    await client.close()

    wrong_first = await raw(server.url)
    await wrong_first.emit("joinConsultation", {"consultationId": "x"})
    assert (await wrong_first.wait_closed())[0] == 4401
    silent = await raw(server.url)
    code, reason = await silent.wait_closed()  # no auth frame within the timeout
    assert code == 4401 and "auth" in reason


async def test_an_expired_token_closes_the_socket_unless_refreshed(
    start_server: StartServer,
) -> None:
    server = await start_server(jwt_secret=JWT_SECRET)
    short = make_token("uma", expires_in=timedelta(seconds=2))
    expiring, refreshed = await raw(server.url, token=short), await raw(server.url, token=short)
    ack = await refreshed.call("refreshToken", {"token": make_token("uma")})
    assert ack["ok"] is True
    [error] = await expiring.wait_for("error", lambda e: e["code"] == "token_expired", timeout=6)
    assert "expired" in error["message"]
    assert (await expiring.wait_closed())[0] == 4401
    assert refreshed.closed is None  # the same expiry, refreshed: still open
    await refreshed.join("still-open")
    await refreshed.close()


async def test_a_silent_client_is_closed_after_the_idle_timeout(start_server: StartServer) -> None:
    server = await start_server(ws_idle_timeout_seconds=1)
    talker, silent = await raw(server.url), await raw(server.url)
    for _ in range(4):  # a client that keeps talking stays
        await talker.call("ping")
        await asyncio.sleep(0.4)
    code, reason = await silent.wait_closed(timeout=5)
    assert code == 4408 and "idle" in reason
    assert talker.closed is None
    await talker.close()


async def test_stream_false_gets_the_final_reply_without_chunks(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(jwt_secret=JWT_SECRET)
    whole = await raw(server.url, token=make_token("wes"))
    await whole.join("no-stream")
    watcher = await connect(server.url, token=make_token("wes"), join="no-stream")
    await whole.send("no-stream", "answer in one piece", stream=False)
    [reply] = await whole.wait_for("aiMessage")
    await whole.wait_for("aiThinking", lambda d: d["status"] == "done")
    assert whole.of("aiChunk") == []
    await watcher.wait_for("aiMessage")
    assert watcher.of("aiChunk")  # the others still stream
    assert "answer in one piece" in reply["content"]
    await whole.close()


async def test_the_per_user_limit_counts_raw_and_socketio_connections_together(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(jwt_secret=JWT_SECRET, max_connections_per_user=2)
    token = make_token("vera")
    await connect(server.url, token=token)
    plain = await raw(server.url, token=token)
    third = await RawClient(server.url, token=token).connect(wait_connected=False)
    code, reason = await third.wait_closed()
    assert code == 4429 and "2 connections" in reason
    await plain.close()
    fourth = await eventually(lambda: _admitted(server.url, token), timeout=10)
    await fourth.close()


async def _admitted(url: str, token: str) -> RawClient | None:
    client = await RawClient(url, token=token).connect(wait_connected=False)
    await eventually(lambda: client.frames or client.closed, timeout=5)
    if client.of("connected"):
        return client
    return None


async def test_a_bare_upgrade_without_the_websocket_headers_is_refused(
    start_server: StartServer,
) -> None:
    import aiohttp

    server = await start_server()
    async with aiohttp.ClientSession() as http, http.get(server.url + "/ws/chat") as response:
        assert response.status == 400
    with pytest.raises(websockets.InvalidURI):
        await websockets.connect("not a url")


def readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- raw-websocket-example -->", 1)[1]
    return block.split("```python\n", 1)[1].split("```", 1)[0]


async def test_the_readme_python_websockets_example_runs_end_to_end(
    start_server: StartServer,
) -> None:
    server = await start_server()
    script = readme_example().replace("ws://localhost:8080", server.url.replace("http", "ws"))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()
    lines = stdout.decode().splitlines()
    assert "'event': 'connected'" in lines[0]
    assert "ack 1 True" in lines and "ack 2 True" in lines
    assert "Echo: Hello from a plain WebSocket" in stdout.decode()  # streamed chunk by chunk
    assert lines[-1] == "stored as seq 2"
