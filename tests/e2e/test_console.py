"""The operator console and the chat page in headless Chromium, at 1280x720 and 390x844: they
fit the viewport, a reload keeps exactly one conversation on screen, the queue previews the
first question, canned replies insert, keyboard shortcuts move between conversations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from server.domain.models import CannedReply, TenantSettings
from tests.conftest import JWT_SECRET, Connect, StartServer, make_token
from tests.helpers import BUNDLE, run_browser_script


async def test_the_console_and_the_chat_page_fit_and_keep_one_conversation(
    start_server: StartServer, connect: Connect, tmp_path: Path
) -> None:
    server = await start_server(socketio_client_bundle=str(BUNDLE))
    replies = [
        CannedReply(shortcut="greet", text="Hello! I am here to help."),
        CannedReply(shortcut="bye", text="Thank you, goodbye!"),
    ]
    await server.components.store.put_tenant_settings(
        TenantSettings(tenant_id="default", canned_replies=replies)
    )
    for user, consultation in (("ann", "c-ann"), ("bob", "c-bob")):
        client = await connect(server.url, auth={"userId": user}, join=consultation)
        await client.send(consultation, f"{user} needs help with a booking")
        ack = await client.call("requestOperator", {"consultationId": consultation})
        assert ack["ok"], ack

    seen = await run_browser_script("console.mjs", server.url, str(tmp_path), "c-ann", "c-bob")

    assert seen["pageErrors"] == []
    assert seen["preview"] == "“ann needs help with a booking”"
    assert seen["cannedOptions"] == 1 and seen["inserted"] == "Hello! I am here to help."
    assert seen["afterAltDown"] == "c-bob"
    # A reload: both still held, exactly one on screen, the one selected before.
    assert seen["visibleLogs"] == ["c-bob"] and seen["selectedAfterReload"] == "c-bob"
    assert seen["visibleAfterEscape"] == 0
    # Nothing sticks out, at either size, typing included.
    assert seen["overflow"] == {
        "consoleDesktopTyping": [],
        "consoleFullHd": [],
        "consolePhone": [],
        "chat-desktop": [],
        "chat-mobile": [],
    }
    for name in ("console-desktop", "console-mobile", "chat-desktop", "chat-mobile"):
        assert (tmp_path / f"{name}.png").stat().st_size > 0


async def test_admins_set_the_greeting_and_canned_replies_that_staff_read(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(jwt_secret=JWT_SECRET)
    url = f"{server.url}/api/tenant-settings"
    admin = make_token("boss", tenant="t1", role="admin")
    body = {
        "greeting": "Welcome to Acme Tours!",
        "cannedReplies": [{"shortcut": "hi", "text": "Hello! How can I help?"}],
    }
    status, answer = await http("PUT", url, admin, body)
    assert (status, answer["settings"]) == (200, body)
    operator = await connect(server.url, token=make_token("op", tenant="t1", role="operator"))
    ack = await operator.call("getCannedReplies", {})
    assert ack == {"ok": True, "replies": body["cannedReplies"]}
    assert (await http("GET", url, make_token("op", tenant="t1", role="operator")))[0] == 200
    # An empty consultation opens with the greeting; one with messages does not.
    user = await connect(server.url, token=make_token("u1", tenant="t1"))
    joined = await user.join("fresh")
    assert joined["greeting"] == "Welcome to Acme Tours!"
    await user.send("fresh", "hi")
    assert "greeting" not in await user.join("fresh")
    # Users read nothing, operators change nothing, bad settings name their field.
    assert await user.fails("getCannedReplies", {}) == "forbidden"
    assert (await http("GET", url, make_token("u1", tenant="t1")))[0] == 403
    assert (await http("PUT", url, make_token("op", tenant="t1", role="operator"), body))[0] == 403
    for bad, field in [
        ({"cannedReplies": [{"shortcut": "Hi There", "text": "x"}]}, "cannedReplies.0.shortcut"),
        ({"cannedReplies": [{"shortcut": "a", "text": ""}]}, "cannedReplies.0.text"),
        ({"cannedReplies": [{"shortcut": "a", "text": "x"}] * 2}, "cannedReplies"),
        ({"greeting": "x" * 1001}, "greeting"),
    ]:
        status, answer = await http("PUT", url, admin, bad)
        assert (status, answer["error"]["field"]) == (400, field)
    # Another tenant's settings are its own.
    other = make_token("boss2", tenant="t2", role="admin")
    assert (await http("GET", url, other))[1]["settings"] == {"cannedReplies": []}


async def http(method: str, url: str, token: str, body: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, json=body, headers=headers) as response,
    ):
        return response.status, await response.json()


async def test_operators_see_the_customers_name_from_their_token(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(jwt_secret=JWT_SECRET)
    user = await connect(server.url, token=make_token("u-anna", tenant="t1", name="Anna K."))
    joined = await user.join("named")
    assert joined["consultation"]["ownerName"] == "Anna K."
    await user.send("named", "I lost my booking number")
    assert (await user.call("requestOperator", {"consultationId": "named"}))["ok"]
    operator = await connect(server.url, token=make_token("op", tenant="t1", role="operator"))
    [item] = (await operator.call("getOperatorQueue", {}))["items"]
    assert (item["userId"], item["userName"], item["preview"]) == (
        "u-anna",
        "Anna K.",
        "I lost my booking number",
    )
