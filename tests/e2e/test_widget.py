"""The website widget in headless Chromium: a host page on another origin, under a strict CSP,
embeds it with one tag; a visitor chats, reloads, moves to another page of the site, asks for
a human, whom the operator console serves; a site the key does not name cannot frame it."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.conftest import JWT_SECRET, StartServer, make_token
from tests.helpers import BUNDLE, run_browser_script
from tests.servers import serve


def host_site(title: str, chat_server: dict[str, str]) -> web.Application:
    """A customer's website: two pages with the one-tag embed, under a strict CSP that allows
    only the chat server's script and frame (no inline script or style anywhere). The chat
    server's address is known once it runs (``chat_server["url"]``)."""

    def page(name: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            server = chat_server["url"]
            csp = (
                f"default-src 'self'; script-src 'self' {server}; frame-src {server}; "
                "style-src 'self'; img-src 'self'; object-src 'none'; base-uri 'none'"
            )
            body = (
                "<!doctype html><html><head>"
                '<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{title}: {name}</title></head><body>"
                f"<h1>{title}</h1><p>The {name} page.</p>"
                f'<script src="{server}/widget.js" data-widget-key="site" async></script>'
                "</body></html>"
            )
            return web.Response(
                text=body, content_type="text/html", headers={"Content-Security-Policy": csp}
            )

        return handler

    app = web.Application()
    app.router.add_get("/", page("tours"))
    app.router.add_get("/booking", page("booking"))
    return app


async def test_the_widget_on_another_site_chats_resumes_and_reaches_an_operator(
    start_server: StartServer, tmp_path: Path
) -> None:
    chat_server: dict[str, str] = {}
    async with (
        serve(host_site("Tours", chat_server)) as tours_site,
        serve(host_site("Elsewhere", chat_server)) as elsewhere_site,
    ):
        await _widget_scenario(
            start_server, tmp_path, chat_server, tours_site.url, elsewhere_site.url
        )


async def _widget_scenario(
    start_server: StartServer,
    tmp_path: Path,
    chat_server: dict[str, str],
    tours: str,
    elsewhere: str,
) -> None:
    server = await start_server(
        jwt_secret=JWT_SECRET,
        widget_keys=f"site:t1:{tours}",
        ai_models=("slow-20",),
        socketio_client_bundle=str(BUNDLE),
    )
    chat_server["url"] = server.url
    # The tenant's knowledge base: the first question's reply names this article.
    async with aiohttp.ClientSession() as http:
        article = {
            "id": "monday-tours",
            "title": "Tours on Monday",
            "url": "https://tours.example/monday",
            "content": "The Lake Bled tour leaves every Monday at 9:00.",
        }
        headers = {"Authorization": "Bearer " + make_token("boss", tenant="t1", role="admin")}
        async with http.post(f"{server.url}/api/knowledge", json=article, headers=headers) as r:
            assert r.status == 201, await r.text()
    config = {
        "host": f"{tours}/",
        "other": f"{tours}/booking",
        "foreign": f"{elsewhere}/",
        "server": server.url,
        "operatorToken": make_token("op-dana", tenant="t1", role="operator", name="Dana"),
        "userToken": make_token("user-42", tenant="t1", expires_in=timedelta(hours=1)),
    }
    seen = await run_browser_script("widget.mjs", json.dumps(config), str(tmp_path), timeout=180)

    assert seen["pageErrors"] == []
    assert seen["cspViolations"] == []  # the host page's strict CSP and the frame's own
    # Closed: a labelled launcher, and no frame (nor visitor token) until it is opened.
    assert seen["launcherLabel"] == "Open chat"
    assert seen["framesBeforeOpen"] == 0
    assert seen["expanded"] == "true" and seen["focused"] is True
    assert seen["greeting"].startswith("Hello!")
    # The streamed reply, as Markdown.
    assert seen["thinking"] == "The assistant is writing…"
    assert seen["replyBold"] == "Monday"
    # ... with its source, a link (the reply cites none: every article it was given).
    assert (seen["sourceLink"], seen["sourceTitle"]) == (
        "https://tours.example/monday",
        "Tours on Monday",
    )
    # A reload, and another page of the site, resume the same conversation.
    assert seen["framesAfterReload"] == 1
    assert seen["afterReload"] == seen["beforeReload"] == seen["otherPage"]
    assert [b["cls"] for b in seen["afterReload"]] == ["msg mine", "msg assistant"]
    # The operator: the request (Cancel asked nothing: one request, with its reason).
    assert seen["queuedCount"] == 1 and "I want to book for four people" in seen["queueItem"]
    # ... shown as a visitor, with the page it is on (the page context the widget sends).
    assert seen["queueVisitor"] == 1
    assert (seen["queuePage"], seen["queuePageTitle"]) == (f"{tours}/booking", "Tours: booking")
    assert seen["title"] == "Dana"
    assert seen["visitorNote"] == 1  # and the console read "The customer asked for a human."
    # Closed panel: the operator's message is counted on the launcher, read when opened.
    assert seen["closedByButton"] is True
    assert seen["badge"] == "1" and "1 unread" in seen["unreadLabel"]
    assert "Hello, I am Dana" in seen["operatorBubble"] and seen["badgeAfterOpen"] is False
    assert seen["rated"] is True
    # The console's insights: what people asked (the reply cited no article: none listed).
    assert "which tours leave on **monday** ×1" in seen["insights"]
    assert "replies had no source" in seen["insights"]
    # Signed in: the conversation is the user's, with its history, in the same widget.
    assert seen["identified"]["userId"] == "user-42" and len(seen["identified"]["moved"]) == 1
    assert seen["mineAfterIdentify"] == 2  # the visitor's questions, now shown as the user's
    assert seen["focusAfterEscape"] == "launcher"
    # A phone: the chat takes the whole screen.
    assert seen["mobileFrame"] == {"x": 0, "y": 0, "width": 390, "height": 780}
    assert seen["mobileLauncherHidden"] is True
    assert (seen["russianLabel"], seen["russianSend"]) == ("Открыть чат", "Отправить")
    # A site the key does not name: the browser refuses to frame the chat.
    assert seen["frameBlocked"], "the foreign site could frame the widget"

    # What the visitor saw is the history, now the user's; the rating is stored.
    consultations = server.components.store
    found = await consultations.find("t1")
    # Only the conversation: the phone, the Russian browser and the foreign site opened the
    # chat and wrote nothing, which creates nothing.
    [consultation] = found
    assert (consultation.owner_id, consultation.owner_role.value) == ("user-42", "user")
    assert consultation.rating is not None and consultation.rating.score == 4
    assert consultation.rating.comment == "Quick and kind"
    assert consultation.context is not None and consultation.context.page is not None
    assert consultation.context.page.url == f"{tours}/booking"
    assert consultation.context.attributes == {"tour": "Lake Bled", "seatsLeft": 4}
