"""``python -m server chat`` (``scripts/chat``): a terminal client of namespace ``/chat``.

Type a line to send it; replies print as they stream. Commands are in :data:`COMMANDS`; a
line that starts with ``//`` is sent with one slash. It reconnects by itself and rejoins with
``lastSeq``: nothing said while it was away is missed, nothing is printed twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any, TextIO

import socketio

NAMESPACE = "/chat"
COMMANDS = {
    "/stop": "stop the reply being written",
    "/human [reason]": "ask for a human operator",
    "/rate N [comment]": "rate the consultation, 1 to 5",
    "/quit": "leave (Ctrl-D and Ctrl-C too)",
}
CLOSE_SECONDS = 2.0  # Ctrl-C, /quit: how long leaving may wait for the server
USAGE = "commands: " + ", ".join(COMMANDS) + " (start a message with // to send a slash)"


@dataclass
class View:
    """What has been printed: stored messages by seq, streamed replies by id and index."""

    out: TextIO
    me: str | None = None
    last_seq: int = 0
    streaming: dict[str, int] = field(default_factory=dict)  # messageId -> last index shown
    finished: set[str] = field(default_factory=set)
    mid_line: bool = False  # a streamed reply's line is open

    def line(self, text: str) -> None:
        """A line of its own (after the streamed text, when a reply is still streaming)."""
        self.out.write(("\n" if self.mid_line else "") + text + "\n")
        self.out.flush()
        self.mid_line = False

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()
        self.mid_line = True

    def who(self, message: dict[str, Any]) -> str:
        role = message.get("role")
        if role == "assistant":
            return "assistant"
        if role == "operator":
            return f"{message.get('authorName') or message.get('userId')} (support)"
        user = message.get("userId")
        return "you" if user is not None and user == self.me else str(user)

    def message(self, message: dict[str, Any]) -> None:
        seq = int(message.get("seq", 0))
        if seq <= self.last_seq:
            return  # shown already (a rejoin returns what we may have seen)
        self.last_seq = seq
        if message["id"] in self.streaming:  # streamed: close its line
            self.streaming.pop(message["id"])
            self.finished.add(message["id"])
            status = message.get("status")
            self.out.write("\n" if status == "complete" else f"  [{status}]\n")
            self.out.flush()
            self.mid_line = False
            return
        if message.get("role") == "system":
            self.line(f"-- {message['content']}")
        else:
            self.line(f"{self.who(message)}: {message['content']}")

    def chunk(self, chunk: dict[str, Any]) -> None:
        message_id = chunk["messageId"]
        if message_id in self.finished:
            return
        shown = self.streaming.get(message_id)
        if shown is None:
            if self.mid_line:
                self.line("")
            self.write("assistant: ")
            shown = -1
        if chunk["index"] > shown:
            self.streaming[message_id] = chunk["index"]
            self.write(chunk["content"])

    def partial(self, partial: dict[str, Any]) -> None:
        """A join's ``streaming``: the reply so far."""
        if partial["messageId"] not in self.streaming:
            self.write("assistant: " + partial["content"])
            self.streaming[partial["messageId"]] = partial["index"]


class TerminalChat:
    def __init__(
        self,
        url: str,
        consultation_id: str,
        auth: dict[str, str],
        out: TextIO,
        *,
        echoed: bool = False,
    ) -> None:
        # echoed: the terminal already shows each typed line, so a sent one is not printed
        # again (piped input is not echoed: it is printed as "you: …").
        self.echoed = echoed
        self._call_errors: list[dict[str, Any]] | None = None  # error events during a call
        self.url = url.rstrip("/")
        self.consultation_id = consultation_id
        self.auth = auth
        self.view = View(out, me=auth.get("userId"))
        self.sio = socketio.AsyncClient(
            # Ours (see _reconnect): python-socketio does not reconnect after the server
            # closed the transport, which is what a restarting instance does.
            reconnection=False,
            handle_sigint=False,  # Ctrl-C is ours: a clean exit, see _main
        )
        self._joined = asyncio.Event()
        self.closing = False
        self._reconnecting: asyncio.Task[None] | None = None
        self._handlers()

    def _handlers(self) -> None:
        on = self.sio.on
        mine = self._mine
        on("connect", self._on_connect, namespace=NAMESPACE)
        on("disconnect", self._on_disconnect, namespace=NAMESPACE)
        on("connect_error", self._on_connect_error, namespace=NAMESPACE)
        for event in ("userMessage", "aiMessage", "systemMessage"):
            on(event, mine(self.view.message), namespace=NAMESPACE)
        on("aiChunk", mine(self.view.chunk), namespace=NAMESPACE)
        on("aiThinking", mine(self._thinking), namespace=NAMESPACE)
        on("typing", mine(self._typing), namespace=NAMESPACE)
        on("consultationUpdated", mine(self._mode), namespace=NAMESPACE)
        on("error", self._error, namespace=NAMESPACE)

    def _mine(self, handler: Any) -> Any:
        async def handle(data: dict[str, Any]) -> None:
            if data.get("consultationId") == self.consultation_id:
                handler(data)

        return handle

    async def _on_connect(self) -> None:
        asyncio.get_running_loop().create_task(self._join())

    async def _join(self) -> None:
        last = self.view.last_seq
        data: dict[str, Any] = {"consultationId": self.consultation_id}
        if last:
            data["lastSeq"] = last
        ack = await self.sio.call("joinConsultation", data, namespace=NAMESPACE, timeout=15)
        if not ack.get("ok"):
            self.view.line(f"!! could not join: {ack['error']['message']}")
            await self.sio.disconnect()
            return
        if not last:
            self.view.line(f"-- joined {self.consultation_id} ({ack['consultation']['mode']})")
        for message in ack["messages"]:
            self.view.message(message)
        if ack.get("streaming"):
            self.view.partial(ack["streaming"])
        self._joined.set()

    async def _on_disconnect(self, reason: Any = None) -> None:
        self._joined.clear()
        if not self.closing:
            self.view.line("-- disconnected; reconnecting…")
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.5
        while not self.closing:
            await asyncio.sleep(delay)
            try:
                await self._connect()
                return
            except socketio.exceptions.ConnectionError:
                delay = min(delay * 2, 5.0)

    async def _connect(self) -> None:
        await self.sio.connect(
            self.url, namespaces=[NAMESPACE], auth=self.auth, transports=["websocket"]
        )

    async def _on_connect_error(self, data: Any = None) -> None:
        message = data.get("message") if isinstance(data, dict) else data
        self.view.line(f"!! cannot connect: {message}")

    def _thinking(self, event: dict[str, Any]) -> None:
        if event["status"] == "processing" and not self.view.streaming:
            self.view.line("-- the assistant is thinking…")

    def _typing(self, event: dict[str, Any]) -> None:
        if event.get("isTyping") and event.get("userId") != self.view.me:
            self.view.line(f"-- {event['userId']} is typing…")

    def _mode(self, event: dict[str, Any]) -> None:
        operator = event.get("operator") or {}
        detail = f" ({operator.get('name')})" if operator else ""
        self.view.line(f"-- mode: {event['mode']}{detail}")

    async def _error(self, error: dict[str, Any]) -> None:
        if self._call_errors is not None:
            self._call_errors.append(error)  # the ack says it too: printed once, after it
            return
        self.view.line(f"!! {error.get('code')}: {error.get('message')}")

    async def call(self, event: str, data: dict[str, Any]) -> dict[str, Any]:
        """Send an event and wait for its ack; a failure is printed once (the server also
        sends it as an ``error`` event, which arrives before the ack)."""
        self._call_errors = []
        try:
            ack: dict[str, Any] = await self.sio.call(event, data, namespace=NAMESPACE, timeout=15)
        finally:
            seen, self._call_errors = self._call_errors, None
        failed = ack.get("error") if not ack.get("ok") else None
        for error in seen:
            if failed is None or error.get("code") != failed.get("code"):
                await self._error(error)
        if failed is not None:
            self.view.line(f"!! {failed['message']}")
        return ack

    async def command(self, line: str) -> bool:
        """Run one typed line; False to quit."""
        text = line.rstrip("\n")
        if not text.strip():
            return True
        cid = {"consultationId": self.consultation_id}
        word, _, rest = text.partition(" ")
        if text.startswith("//"):
            text, word = text[1:], ""  # a message that starts with a slash
        elif word.startswith("/") and word not in {c.split()[0] for c in COMMANDS}:
            self.view.line(f"!! unknown command {word}; {USAGE}")
            return True
        if word == "/quit":
            return False
        if word == "/stop":
            ack = await self.call("stopGeneration", cid)
        elif word == "/human":
            ack = await self.call("requestOperator", {**cid, "reason": rest or None})
        elif word == "/rate":
            score, _, comment = rest.partition(" ")
            data = {**cid, "score": int(score) if score.isdigit() else score}
            ack = await self.call("rateConsultation", {**data, "comment": comment or None})
        else:
            message = {**cid, "content": text, "clientMessageId": uuid.uuid4().hex}
            ack = await self.call("sendMessage", message)
            if ack.get("ok"):
                self.view.me = ack["message"].get("userId")
                if self.echoed:  # on screen already, as typed
                    self.view.last_seq = max(self.view.last_seq, int(ack["message"]["seq"]))
                else:
                    self.view.message(ack["message"])
        if ack.get("ok") and word == "/rate":
            self.view.line(f"-- rated {ack['consultation']['rating']['score']}")
        return True

    async def run(self, lines: asyncio.StreamReader) -> None:
        await self._connect()
        await asyncio.wait_for(self._joined.wait(), 15)
        while True:
            raw = await lines.readline()
            if not raw:
                return  # end of input
            if not self._joined.is_set():
                await self._joined.wait()
            if not await self.command(raw.decode(errors="replace")):
                return


async def _stdin() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _main(url: str, consultation_id: str, auth: dict[str, str]) -> None:
    chat = TerminalChat(url, consultation_id, auth, sys.stdout, echoed=sys.stdin.isatty())
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    # Ctrl-C ends the session like /quit: the socket is closed cleanly, no traceback.
    loop.add_signal_handler(signal.SIGINT, interrupted.set)
    session = asyncio.ensure_future(chat.run(await _stdin()))
    stop = asyncio.ensure_future(interrupted.wait())
    try:
        await asyncio.wait({session, stop}, return_when=asyncio.FIRST_COMPLETED)
        if session.done():
            session.result()  # a connection error surfaces here
    finally:
        for task in (session, stop):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(session, CLOSE_SECONDS)
        chat.closing = True
        if chat.view.mid_line:
            chat.view.line("")
        # Leaving never waits on the server: a close it does not answer is given up on.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(chat.sio.disconnect(), CLOSE_SECONDS)


def chat(url: str, consultation_id: str, token: str | None, user: str | None) -> int:
    auth = {"token": token} if token else ({"userId": user} if user else {})
    try:
        asyncio.run(_main(url, consultation_id, auth))
    except KeyboardInterrupt:
        pass
    except (socketio.exceptions.ConnectionError, TimeoutError) as exc:
        print(f"!! {exc or 'no answer from the server'}", file=sys.stderr)
        return 1
    print("-- bye")
    return 0
