"""The demo page and the README console snippet in a real browser (headless Chromium)."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import StartServer
from tests.servers import serve

JS = Path(__file__).resolve().parent.parent / "js"
CLIENT_DIST = JS / "node_modules" / "socket.io-client" / "dist"


@pytest.fixture
async def client_script_url() -> AsyncIterator[str]:
    """Serve the socket.io-client bundle installed from npm: the page's CDN is unreachable
    here, which is what SOCKETIO_CLIENT_URL is for."""
    app = web.Application()
    app.router.add_static("/", CLIENT_DIST)
    async with serve(app) as served:
        yield f"{served.url}/socket.io.min.js"


async def test_the_console_snippet_and_the_chat_page_work_in_chromium(
    start_server: StartServer, client_script_url: str, tmp_path: Path
) -> None:
    node = shutil.which("node")
    if node is None or not (JS / "node_modules" / "playwright-core").is_dir():
        pytest.fail("node and tests/js/node_modules are needed: run scripts/test")
    if shutil.which("chromium") is None:
        pytest.fail("chromium is needed: scripts/test installs it")
    server = await start_server(socketio_client_url=client_script_url)
    screenshot = tmp_path / "page.png"
    process = await asyncio.create_subprocess_exec(
        node,
        str(JS / "browser.mjs"),
        server.url,
        str(screenshot),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode == 0, stderr.decode()[-3000:]
    seen = json.loads(stdout.decode().strip().splitlines()[-1])
    [logged] = seen["consoleLines"]
    assert logged.startswith("AI: Echo: I have a headache, what should I do?")
    assert "Joined page-room." in seen["logText"]
    assert "You: Is this page working?" in seen["logText"]
    assert "Assistant: Echo: Is this page working?" in seen["logText"]
    assert screenshot.stat().st_size > 0
