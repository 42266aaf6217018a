"""``scripts/chat`` (``python -m server chat``) under a pseudo-terminal, as a person runs it."""

from __future__ import annotations

import asyncio
import os
import pty
import signal
import subprocess
import sys

from server.app import COMPONENTS
from tests.conftest import Connect, StartServer
from tests.helpers import eventually
from tests.servers import ROOT, clean_env


def lines(screen: str) -> list[str]:
    return [line.strip() for line in screen.replace("\r", "\n").split("\n") if line.strip()]


class Terminal:
    """A child process on a pty: what it printed, and keys typed into it."""

    def __init__(self, *args: str) -> None:
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server", "chat", *args],
            cwd=ROOT,
            env=clean_env(),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            close_fds=True,
        )
        os.close(slave)
        os.set_blocking(self.master, False)
        self.screen = ""

    def read(self) -> str:
        try:
            while chunk := os.read(self.master, 65536):
                self.screen += chunk.decode(errors="replace")
        except (BlockingIOError, OSError):
            pass
        return self.screen

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    async def shows(self, text: str, timeout: float = 15) -> str:
        try:
            return await eventually(lambda: text in self.read() and self.screen, timeout=timeout)
        except TimeoutError:
            raise AssertionError(f"{text!r} not shown; the screen:\n{self.screen}") from None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(5)
        os.close(self.master)


async def test_the_terminal_client_streams_a_reply_and_exits_on_ctrl_c(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(ai_models=("slow-30",))
    other = await connect(server.url, auth={"userId": "nurse"}, join="pty-room")
    await other.send("pty-room", "Said before you came")
    await other.wait_reply_done()
    terminal = Terminal("--url", server.url, "--consultation", "pty-room", "--user", "patient")
    try:
        await terminal.shows("-- joined pty-room")
        await terminal.shows("nurse: Said before you came")  # the history
        terminal.type("How long should I rest?\n")
        # The reply prints while it streams: its start is on screen before it is stored.
        await terminal.shows("assistant: Echo: How")
        # The typed line is on screen once: as the terminal echoed it, not again as "you: …".
        typed = [line for line in lines(terminal.read()) if "How long should I rest?" in line]
        assert typed[0] == "How long should I rest?", typed
        assert not any(line.startswith("you: How long") for line in typed), typed
        await other.wait_for("aiMessage", lambda m: "How long" in m["content"], timeout=20)
        reply = (await other.wait_for("aiMessage", lambda m: "How long" in m["content"]))[0]
        await terminal.shows(reply["content"])
        # Someone else writes: it appears once.
        await other.send("pty-room", "Two days")
        await terminal.shows("nurse: Two days")
        # The connection drops: it reconnects by itself and rejoins with lastSeq.
        await server.app[COMPONENTS].bridge.close_all()
        await terminal.shows("-- disconnected; reconnecting…")
        nurse = await connect(server.url, auth={"userId": "nurse"}, join="pty-room")
        await nurse.send("pty-room", "Sent while you were away")
        await terminal.shows("nurse: Sent while you were away")
        terminal.type("/rate 9\n")  # refused: said once
        await terminal.shows("!! ")
        terminal.type("/rate 5 thanks\n")
        await terminal.shows("-- rated 5")
        errors = [line for line in lines(terminal.read()) if line.startswith("!! ")]
        assert len(errors) == 1 and "score" in errors[0], errors
        terminal.type("/bogus\n")  # not a command: refused, not sent
        await terminal.shows("!! unknown command /bogus; commands: /stop, /human [reason]")
        terminal.type("//etc/hosts is a file\n")  # a message that starts with a slash
        [sent] = await nurse.wait_for("userMessage", lambda m: m["userId"] == "patient")
        assert sent["content"] == "/etc/hosts is a file"
        assert not nurse.of("userMessage", lambda m: "bogus" in m["content"])
        terminal.process.send_signal(signal.SIGINT)  # Ctrl-C
        await asyncio.to_thread(terminal.process.wait, 10)
        assert terminal.process.returncode == 0, terminal.read()
        screen = terminal.read()
        assert screen.count("nurse: Two days") == 1
        assert screen.count("nurse: Sent while you were away") == 1
        assert "-- bye" in screen
        assert "Traceback" not in screen
    finally:
        terminal.close()
