"""The pages and the README console snippet in a real browser (headless Chromium), with the
official socket.io-client bundle served by our server (the CDN is made unreachable)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import aiohttp

from server.domain.models import ConsultationKey, TenantSettings
from tests.conftest import StartServer
from tests.helpers import BUNDLE, run_browser_script

CDN = "https://cdn.socket.io/4.8.1/socket.io.min.js"


async def history(base: str, consultation_id: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        url = f"{base}/api/consultations/{consultation_id}/messages?limit=200"
        async with http.get(url) as response:
            assert response.status == 200
            body = await response.json()
    messages: list[dict[str, Any]] = body["messages"]
    return messages


async def test_the_pages_chat_stream_stop_reload_and_hand_off_in_chromium(
    start_server: StartServer, tmp_path: Path
) -> None:
    # Slow tokens, so that the reply is seen streaming and Stop lands mid-reply.
    server = await start_server(ai_models=("slow-40",), socketio_client_bundle=str(BUNDLE))
    # The tenant's greeting (its admins set it over REST; here straight into the store).
    await server.components.store.put_tenant_settings(
        TenantSettings(tenant_id="default", greeting="Welcome to the clinic's chat!")
    )
    fallback = await start_server(socketio_client_url=CDN, socketio_client_bundle=str(BUNDLE))
    seen = await run_browser_script("browser.mjs", server.url, fallback.url, str(tmp_path))

    assert seen["pageErrors"] == []
    assert seen["greeting"] == "Welcome to the clinic's chat!"
    assert "nativeDialogs" not in seen  # in-page dialogs only: no prompt() or confirm()
    # Every page ran under its Content-Security-Policy and broke none of it.
    assert set(seen["csp"]) == {"/", "/operator"} and all(seen["csp"].values()), seen["csp"]
    assert seen["cspViolations"] == []
    # The README snippet, verbatim, in the page's console.
    [logged] = seen["snippetLines"]
    assert logged.startswith("AI: Echo: I have a headache, what should I do?")
    # Markdown rendered; the <script> in the reply shown as text, never run.
    assert seen["bold"] == "this"
    assert "<script>window.pwned = 1</script>" in seen["replyText"]
    assert seen["pwned"] is None and seen["scriptsInLog"] == 0
    # Reload: the same conversation comes back (same identity and consultation, kept by the
    # page), every bubble in place, in seq order.
    assert seen["afterReload"] == seen["beforeReload"]
    seqs = [bubble["seq"] for bubble in seen["afterReload"]]
    assert seqs == sorted(seqs) and len(seqs) == 4
    # Handoff: the console showed the request, took it over with the history, saw the user
    # typing; the user's page got the operator's message.
    # Cancel asked nothing: one request, with the reason typed the second time.
    assert "I want a person" in seen["queueItem"] and "#1" in seen["queueItem"]
    assert "typed, then cancelled" not in seen["queueItem"]
    assert seen["operatorHistory"] >= 4
    assert seen["userId"] in seen["operatorIndicator"]
    assert "Dana (support)" in seen["operatorBubble"]

    # What the page showed is what was stored.
    stored = await history(server.url, seen["consultationId"])
    by_id = {message["id"]: message for message in stored}
    for bubble in seen["finalLog"]:
        message = by_id[bubble["id"]]
        if message["role"] != "system":
            # Every role's text is rendered as Markdown: compare what remains on screen.
            shown = re.sub(r"[*`_]", "", message["content"])
            assert bubble["text"] == shown or message["role"] == "assistant"
    stopped = [m for m in stored if m["role"] == "assistant" and m["status"] == "stopped"]
    assert len(stopped) == 1
    operator = [m for m in stored if m["role"] == "operator"]
    assert [(m["userId"], m.get("authorName"), m["content"]) for m in operator] == [
        ("op-dana", "Dana", "Hello, I am Dana from support.")
    ]
    assert stored[-1]["role"] == "system"  # "… handed the consultation back to the assistant"

    # Handed back, the page asked for a rating: stored with the consultation.
    key = ConsultationKey("default", seen["consultationId"])
    consultation = await server.components.store.get(key)
    assert consultation is not None and consultation.rating is not None
    assert (consultation.rating.score, consultation.rating.comment) == (4, "Dana was great")

    # With the CDN named first and unreachable, the page fell back to the local bundle.
    assert seen["fallbackStatus"] == "Connected"
    assert CDN in seen["cdnRequests"]
    assert (tmp_path / "chat.png").stat().st_size > 0
    if keep := os.environ.get("KEEP_SCREENSHOTS"):
        shutil.copytree(tmp_path, keep, dirs_exist_ok=True)
