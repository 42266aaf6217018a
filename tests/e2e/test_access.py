"""Identity and access: JWT at connect, tenancy, ownership, staff, REST."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import aiohttp
import jwt
import pytest
import socketio

from tests.conftest import JWT_SECRET, Connect, RunningServer, StartServer, make_token
from tests.helpers import ChatClient


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    return await start_server(jwt_secret=JWT_SECRET, ai_models=("slow-5",))


async def refused(server: RunningServer, **kwargs: Any) -> Any:
    client = ChatClient(server.url, **kwargs)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect()
    assert client.connect_error is not None
    return client.connect_error


def alg_none_token() -> str:
    header = jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT"}').decode()
    body = jwt.utils.base64url_encode(
        b'{"sub":"admin","tenant":"t1","role":"admin","exp":9999999999}'
    ).decode()
    return f"{header}.{body}."


@pytest.mark.parametrize(
    "token",
    [
        None,
        "not-a-jwt",
        make_token(expires_in=timedelta(seconds=-30)),
        make_token(secret="another-secret-of-sufficient-length-123"),
        alg_none_token(),
        jwt.encode({"sub": "u1", "tenant": "t1"}, JWT_SECRET, algorithm="HS256"),  # no exp
        make_token(sub=""),
        make_token(role="superuser"),
        make_token(algorithm="HS512"),  # not an accepted algorithm
    ],
    ids=[
        "missing",
        "garbage",
        "expired",
        "bad-signature",
        "alg-none",
        "no-exp",
        "empty-sub",
        "bad-role",
        "other-alg",
    ],
)
async def test_bad_tokens_are_refused_at_connect_with_a_code(
    server: RunningServer, token: str | None
) -> None:
    error = await refused(server, token=token)
    assert error["data"]["code"] == "unauthorized"
    assert error["message"] == "unauthorized"


async def test_the_token_is_read_from_auth_header_or_query(
    server: RunningServer, connect: Connect
) -> None:
    token = make_token("u-header")
    by_auth: ChatClient = await connect(server.url, token=make_token("u-auth"))
    by_header: ChatClient = await connect(server.url, headers={"Authorization": f"Bearer {token}"})
    by_query: ChatClient = await connect(f"{server.url}?token={make_token('u-query')}")
    for client, user in [(by_auth, "u-auth"), (by_header, "u-header"), (by_query, "u-query")]:
        joined = await client.join(f"c-{user}")
        assert joined["consultation"]["ownerId"] == user


async def test_two_devices_and_an_operator_share_the_room_others_do_not(
    server: RunningServer, connect: Connect
) -> None:
    phone: ChatClient = await connect(server.url, token=make_token("alice"))
    laptop: ChatClient = await connect(server.url, token=make_token("alice"))
    operator: ChatClient = await connect(server.url, token=make_token("op", role="operator"))
    stranger: ChatClient = await connect(server.url, token=make_token("bob"))
    other_room: ChatClient = await connect(server.url, token=make_token("carol"))
    for client in (phone, laptop, operator):
        await client.join("case-1")
    await other_room.join("case-2")

    denied = await stranger.call("joinConsultation", {"consultationId": "case-1"})
    assert denied["ok"] is False
    assert denied["error"]["code"] == "forbidden"
    assert [e["code"] for e in stranger.of("error")] == ["forbidden"]
    assert stranger.sio.connected  # refused, not disconnected

    sent = await phone.send("case-1", "my knee hurts")
    for client in (laptop, operator):
        [echo] = await client.wait_for("userMessage")
        assert echo == sent
        await client.wait_reply_done()
        [reply] = client.of("aiMessage")
        assert reply["seq"] == 2
    denied_send = await stranger.call("sendMessage", {"consultationId": "case-1", "content": "x"})
    assert denied_send["error"]["code"] == "not_joined"
    assert stranger.of("userMessage") == [] and stranger.of("aiMessage") == []
    assert other_room.events == []


async def test_the_same_consultation_id_in_another_tenant_is_another_consultation(
    server: RunningServer, connect: Connect
) -> None:
    tenant_a: ChatClient = await connect(server.url, token=make_token("alice", tenant="acme"))
    tenant_b: ChatClient = await connect(server.url, token=make_token("alice", tenant="globex"))
    admin_b: ChatClient = await connect(
        server.url, token=make_token("root", tenant="globex", role="admin")
    )
    await tenant_a.join("shared-id")
    await tenant_a.send("shared-id", "secret of acme")
    await tenant_a.wait_reply_done()

    joined_b = await tenant_b.join("shared-id")
    assert joined_b["messages"] == []
    assert (await admin_b.join("shared-id"))["messages"] == []
    await tenant_b.send("shared-id", "globex question")
    await tenant_b.wait_reply_done()
    assert all("acme" not in str(data) for _, data in tenant_b.events + admin_b.events)
    assert all("globex" not in str(data) for _, data in tenant_a.events)

    async with aiohttp.ClientSession() as http:
        url = f"{server.url}/api/consultations/shared-id/messages"
        headers_a = {"Authorization": f"Bearer {make_token('alice', tenant='acme')}"}
        headers_b = {"Authorization": f"Bearer {make_token('root', tenant='globex', role='admin')}"}
        async with http.get(url, headers=headers_a) as response:
            body = await response.json()
            assert body["messages"][0]["content"] == "secret of acme"
        async with http.get(url, headers=headers_b) as response:
            contents = [m["content"] for m in (await response.json())["messages"]]
            assert contents[0] == "globex question"
            assert "secret of acme" not in str(contents)


async def test_rest_history_applies_the_same_rules(server: RunningServer, connect: Connect) -> None:
    owner: ChatClient = await connect(server.url, token=make_token("alice"))
    await owner.join("case-rest")
    for text in ("one", "two"):
        await owner.send("case-rest", text)
        await owner.wait_reply_done(count=len(owner.of("aiMessage")) + 1)

    url = f"{server.url}/api/consultations/case-rest/messages"

    async def get(token: str | None, query: str = "") -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as http, http.get(url + query, headers=headers) as r:
            return r.status, await r.json()

    status, body = await get(make_token("alice"))
    assert status == 200
    assert [m["seq"] for m in body["messages"]] == [1, 2, 3, 4]
    status, body = await get(make_token("alice"), "?afterSeq=2&limit=1")
    assert [m["seq"] for m in body["messages"]] == [3]
    assert (await get(make_token("op", role="operator")))[0] == 200
    assert (await get(make_token("bob")))[0] == 403
    assert (await get(make_token("alice", tenant="other")))[0] == 404
    status, body = await get(None)
    assert status == 401
    assert body["error"]["code"] == "unauthorized"
    assert (await get(make_token(expires_in=timedelta(seconds=-5))))[0] == 401
    status, body = await get(make_token("alice"), "?afterSeq=abc")
    assert status == 400
    assert body["error"]["code"] == "invalid_payload"


async def test_dev_auth_admits_guests_and_refuses_unverifiable_tokens(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server()  # no JWT secret
    guest: ChatClient = await connect(server.url)
    joined = await guest.join("dev")
    assert joined["consultation"]["ownerId"].startswith("guest-")
    assert joined["consultation"]["tenantId"] == "default"
    error = await refused(server, token=make_token())
    assert error["data"]["code"] == "unauthorized"


async def test_dev_auth_guests_share_consultations_and_choose_who_they_are(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server()  # no JWT secret: dev auth
    ana = await connect(server.url, auth={"userId": "ana", "name": "Ana"}, join="shared-dev")
    ben = await connect(server.url, auth={"userId": "ben"}, join="shared-dev")  # not the owner
    sent = await ben.send("shared-dev", "hi Ana")
    assert sent["userId"] == "ben"
    [seen] = await ana.wait_for("userMessage")
    assert seen == sent
    staff = await connect(server.url, auth={"userId": "olga", "role": "operator"})
    assert (await staff.call("getOperatorQueue"))["ok"] is True  # a dev operator
    bad = await connect(server.url, auth={"userId": "no spaces allowed", "role": "root"})
    joined = await bad.join("shared-dev")  # an unusable choice: a guest, still welcome
    assert joined["ok"]


async def test_dev_auth_guests_take_the_user_id_older_frontends_send(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server()
    legacy = await connect(server.url, join="legacy")
    sent = await legacy.send("legacy", "hello", userId="user-1", tenantId="tenant-1")
    assert sent["userId"] == "user-1"
    again = await legacy.send("legacy", "still me", userId="someone-else")
    assert again["userId"] == "user-1"  # adopted once: a guest no more
