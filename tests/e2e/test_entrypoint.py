"""``python -m server`` as users start it: embedded defaults, a clear log, the token command."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import jwt
import pytest

from tests.conftest import JWT_SECRET
from tests.helpers import ChatClient, eventually
from tests.servers import ROOT, MongoServer, clean_env, free_port, http_json, wait_for_port


@pytest.fixture
def served() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "server"],
        cwd=ROOT,
        env=clean_env(PORT=str(port), OFFLINE_WORD_DELAY_SECONDS="0.005"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.terminate()
        process.wait(timeout=15)


async def test_a_bare_server_starts_with_embedded_defaults_and_says_so(
    served: tuple[str, subprocess.Popen[str]],
) -> None:
    url, process = served
    client = ChatClient(url)
    await client.connect()
    try:
        await client.join("test-123")
        await client.send("test-123", "hello offline")
        [message] = await client.wait_for("aiMessage")
        assert message["model"] == "offline"
        assert "hello offline" in message["content"]
    finally:
        await client.disconnect()
    # A bare GET (a person, a probe) is told what the endpoint is; clients of an older
    # protocol get a warning once; no ERROR, no traceback.
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/socket.io/") as response:
            assert response.status == 400
            hint = await response.text()
            assert "Socket.IO endpoint" in hint and "/ws/chat" in hint
        for path in ("/socket.io/?EIO=3&transport=polling", "/socket.io/?EIO=3&transport=polling"):
            async with http.get(url + path) as response:
                assert response.status == 400
    process.terminate()
    log, _ = process.communicate(timeout=15)
    expected_lines = ("IN-MEMORY", "SINGLE INSTANCE", "OFFLINE", "DEV AUTH", "listening on")
    for expected in (*expected_lines, "draining 0 connections", "drained in"):
        assert expected in log, log
    assert "pages: socket.io-client from " in log
    assert "Traceback" not in log, log
    assert " ERROR " not in log, log
    unsupported = [line for line in log.splitlines() if "unsupported version" in line]
    assert len(unsupported) == 1, log  # once, as a warning; repeats are not logged
    assert " WARNING engineio.server: The client is using an unsupported" in unsupported[0]
    assert "(repeats are not logged)" in unsupported[0]


def test_token_command_prints_a_token_the_server_accepts() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "server",
            "token",
            "--sub",
            "u1",
            "--tenant",
            "t1",
            "--role",
            "operator",
        ],
        cwd=ROOT,
        env=clean_env(JWT_SECRET=JWT_SECRET),
        capture_output=True,
        text=True,
        check=True,
    )
    claims = jwt.decode(result.stdout.strip(), JWT_SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["tenant"], claims["role"]) == ("u1", "t1", "operator")
    assert claims["exp"] > claims["iat"]


def test_token_command_without_a_secret_explains_itself() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server", "token", "--sub", "u1"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "JWT_SECRET" in result.stderr


def test_a_bad_setting_stops_the_server_with_a_clear_message() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server"],
        cwd=ROOT,
        env=clean_env(PORT="eighty"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "PORT must be an integer" in result.stderr


async def test_sigterm_lets_a_streaming_reply_finish_and_be_stored() -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        cwd=ROOT,
        env=clean_env(PORT=str(port), OFFLINE_WORD_DELAY_SECONDS="0.05"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await asyncio.to_thread(wait_for_port, port)
        client = ChatClient(f"http://127.0.0.1:{port}")
        await client.connect()
        await client.join("graceful")
        await client.send("graceful", "finish your sentence")
        await client.wait_for("aiChunk")
        process.terminate()
        [message] = await client.wait_for("aiMessage", timeout=15)
        assert message["status"] == "complete"
        assert await asyncio.wait_for(process.wait(), 20) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def start_logged(log_path: Path, **env: str) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "server"],
            cwd=ROOT,
            env=clean_env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def test_an_unreachable_mongodb_at_start_is_named_retried_and_waited_for(
    tmp_path: Path,
) -> None:
    port, mongo_port = free_port(), free_port()
    log_path = tmp_path / "server.log"
    process = start_logged(
        log_path,
        PORT=str(port),
        MONGODB_URL=f"mongodb://127.0.0.1:{mongo_port}/?directConnection=true",
        MONGODB_TIMEOUT_SECONDS="0.5",
    )
    mongo = MongoServer(port=mongo_port)
    try:
        await asyncio.to_thread(wait_for_port, port)
        line = f"storage: MongoDB at 127.0.0.1:{mongo_port}: connection refused; retrying in"
        await eventually(lambda: log_path.read_text().count(line) >= 2, timeout=20)
        status, body = await asyncio.to_thread(http_json, f"http://127.0.0.1:{port}/readyz")
        assert status == 503 and body["checks"]["storage"] != "ok"
        mongo.start()  # it comes up: the server becomes ready by itself
        await eventually(lambda: _ready(port), timeout=30)
        assert f"MongoDB at 127.0.0.1:{mongo_port} is reachable: ready" in log_path.read_text()
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 15)
        mongo.stop()
    log = log_path.read_text()
    assert "Traceback" not in log, log
    assert "Topology Description" not in log  # the cause, not the driver's dump
    assert process.returncode == 0


def test_with_a_startup_timeout_an_unreachable_mongodb_ends_in_one_line(tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    process = start_logged(
        log_path,
        PORT=str(free_port()),
        MONGODB_URL=f"mongodb://127.0.0.1:{free_port()}/?directConnection=true",
        MONGODB_TIMEOUT_SECONDS="0.3",
        STARTUP_TIMEOUT_SECONDS="2",
    )
    assert process.wait(timeout=30) == 1
    log = log_path.read_text()
    [fatal] = [line for line in log.splitlines() if " ERROR " in line]
    assert "still unreachable after" in fatal and "giving up" in fatal, log
    assert "connection refused" in fatal
    assert "Traceback" not in log, log


async def _ready(port: int) -> bool:
    status, _ = await asyncio.to_thread(http_json, f"http://127.0.0.1:{port}/readyz")
    return bool(status == 200)


def test_chat_help_names_the_commands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server", "chat", "--help"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    for command in ("/stop", "/human", "/rate", "/quit", "//"):
        assert command in result.stdout, result.stdout
