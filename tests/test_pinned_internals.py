"""python-socketio and python-engineio internals this server hooks, pinned.

``transport/socketio/server.py`` replaces the Engine.IO socket's writer (``LeanSocket.poll``),
swaps the socket table and the aiohttp WebSocket driver, and hardens packet decoding;
``members.py`` writes frames straight to idle WebSockets, relying on how the writer and the
queue behave. Those are private internals: the versions are pinned in pyproject.toml, and this
test fails with a clear message when an upgrade changes one of them, so that the override is
reviewed before the pin moves.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import re
from collections.abc import Callable
from typing import Any

import pytest
import socketio
from engineio.async_drivers import aiohttp as engineio_aiohttp
from engineio.async_server import AsyncServer as EngineIOServer
from engineio.async_socket import AsyncSocket

from tests.servers import ROOT

# What of ours depends on each internal, and the hash of its source in the pinned versions.
HOOKED: dict[str, tuple[Callable[..., Any], str, str]] = {
    "AsyncSocket.poll": (
        AsyncSocket.poll,
        "826f58a9f3606db2",
        "LeanSocket.poll replaces it (same contract: QueueEmpty ends the writer)",
    ),
    "AsyncSocket.close": (AsyncSocket.close, "faa2e93902543244", "LeanSocket.close wraps it"),
    "AsyncSocket.send": (
        AsyncSocket.send,
        "0437276ccba7ab09",
        "members.py puts packets on socket.queue directly, as send does",
    ),
    "AsyncSocket._websocket_handler": (
        AsyncSocket._websocket_handler,
        "27f120df4d717a24",
        "LeanSocket._websocket_handler copies it (read loop without a task per packet); members.py "
        "writes frames while the writer it starts is idle (LeanSocket.writable_now)",
    ),
    "engineio AsyncServer._handle_connect": (
        EngineIOServer._handle_connect,
        "5bd7edc1d1ae115a",
        "LeanSockets turns the AsyncSocket stored in self.sockets into a LeanSocket",
    ),
    "aiohttp driver WebSocket.__call__": (
        engineio_aiohttp.WebSocket.__call__,
        "71f9a94476d737c3",
        "TunedWebSocket.__call__ copies it (compression setting, the raw transport)",
    ),
    "aiohttp driver WebSocket.wait": (
        engineio_aiohttp.WebSocket.wait,
        "992c370917677d39",
        "TunedWebSocket.wait refuses frames that are not Engine.IO packets",
    ),
    "socketio AsyncServer._handle_eio_message": (
        socketio.AsyncServer._handle_eio_message,
        "bef50fc0e1635921",
        "ChatServer._handle_eio_message closes peers that send undecodable packets",
    ),
    "socketio AsyncServer._handle_event_internal": (
        socketio.AsyncServer._handle_event_internal,
        "472e8b723a12d507",
        "acks are queued on the socket before a handler's broadcasts are written (ordering)",
    ),
}


def pinned(package: str) -> str:
    pyproject = (ROOT / "pyproject.toml").read_text()
    match = re.search(rf'"{re.escape(package)}==([^"]+)"', pyproject)
    assert match, f"{package} must be pinned exactly (==) in pyproject.toml"
    return match.group(1)


@pytest.mark.parametrize("package", ["python-socketio", "python-engineio"])
def test_the_installed_version_is_the_pinned_one(package: str) -> None:
    installed = importlib.metadata.version(package)
    assert installed == pinned(package), (
        f"{package} {installed} is installed but {pinned(package)} is pinned: the overrides in "
        "server/transport/socketio/ were written against the pinned version"
    )


@pytest.mark.parametrize("name", sorted(HOOKED))
def test_a_hooked_internal_is_unchanged(name: str) -> None:
    function, expected, dependant = HOOKED[name]
    digest = hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]
    assert digest == expected, (
        f"{name} changed in this python-socketio/python-engineio ({digest} != {expected}). "
        f"Review what depends on it before moving the pin: {dependant}. Then record the new hash."
    )


def test_the_socket_table_and_driver_hooks_are_where_we_hook_them() -> None:
    server = socketio.AsyncServer(async_mode="aiohttp")
    assert isinstance(server.eio.sockets, dict)
    assert "websocket" in server.eio._async
    assert server.eio._async["websocket"] is engineio_aiohttp.WebSocket
    source = inspect.getsource(EngineIOServer._handle_connect)
    assert "self.sockets[sid] = s" in source
