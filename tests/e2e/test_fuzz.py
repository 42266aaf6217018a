"""Property-based fuzzing of every client event, and raw malformed packets.

Whatever a client sends, it gets an acknowledgement (ok true or false), the server logs no
unhandled exception, and the same connection still completes a normal send afterwards.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import websockets
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from server.app import create_app
from tests.conftest import settings_for_tests
from tests.helpers import ChatClient, RawClient
from tests.servers import serve

T = TypeVar("T")
EVENTS = ["joinConsultation", "sendMessage", "leaveConsultation", "stopGeneration", "refreshToken"]


class ErrorLog(logging.Handler):
    """Collects every ERROR record: an unhandled exception anywhere in the server shows here."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    # Test clients log under these names; the assertion is about the server, and a client left
    # over from an earlier test in this process (one event loop per session) must not fail it.
    CLIENT_LOGGERS = ("engineio.client", "socketio.client")

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(self.CLIENT_LOGGERS):
            self.records.append(record)

    def text(self) -> str:
        return "\n".join(self.format(r) for r in self.records)


@dataclass
class LoopThread:
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class FuzzTarget:
    thread: LoopThread
    url: str
    client: ChatClient
    raw: RawClient
    errors: ErrorLog


@pytest.fixture(scope="module")
def target() -> Iterator[FuzzTarget]:
    thread = LoopThread()
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    settings = settings_for_tests(offline_word_delay_seconds=0, rate_limit_messages=1_000_000)
    server = serve(create_app(settings))

    async def start() -> tuple[str, ChatClient, RawClient]:
        served = await server.__aenter__()
        client = await ChatClient(served.url, transports=["websocket"]).connect()
        await client.join("fuzz")
        raw = await RawClient(served.url).connect()
        await raw.join("raw-fuzz")
        return served.url, client, raw

    url, client, raw = thread.run(start())
    yield FuzzTarget(thread, url, client, raw, errors)
    thread.run(client.disconnect())
    thread.run(raw.close())
    thread.run(server.__aexit__(None, None, None))
    thread.stop()
    logging.getLogger().removeHandler(errors)


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=16,
)
valid_ids = st.sampled_from(["fuzz", "fuzz-2", "test-123"]) | st.from_regex(
    r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,20}", fullmatch=True
)
field_values = st.one_of(
    valid_ids,
    json_values,
    st.sampled_from(["", " ", "a" * 129, "\n", "bad id"]),
    st.integers(min_value=-2, max_value=2**63),
    st.text(min_size=1, max_size=9000),
)
optional_fields = {
    name: field_values
    for name in ("content", "lastSeq", "clientMessageId", "token", "userId", "tenantId")
}
payloads = st.one_of(
    # Mostly well-formed, so the handlers' logic is reached, not only the parser.
    st.fixed_dictionaries({"consultationId": valid_ids}, optional=optional_fields),
    st.fixed_dictionaries({}, optional={"consultationId": field_values, **optional_fields}),
    json_values,
)
events = st.one_of(st.sampled_from(EVENTS), st.sampled_from(EVENTS), st.text(max_size=12))


def nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = {"consultationId": value, "list": [value]} if depth < 50 else [value]
    return value


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(event=events, payload=payloads)
@example(event="sendMessage", payload={"consultationId": "fuzz", "content": "x" * 900_000})
@example(event="joinConsultation", payload=nested(400))
@example(event="sendMessage", payload={"consultationId": "fuzz", "content": "\x00\ud7ff\U0010ffff"})
@example(event="joinConsultation", payload={"consultationId": "fuzz", "lastSeq": 2**70})
@example(event="connect", payload={"token": "forged"})
@example(event="disconnect", payload="io client disconnect")
@example(event="", payload=None)
def test_every_event_answers_and_logs_no_unhandled_error(
    target: FuzzTarget, event: str, payload: Any
) -> None:
    ack = target.thread.run(target.client.call(event, payload, timeout=10))
    assert isinstance(ack, dict), ack
    assert isinstance(ack.get("ok"), bool), ack
    if not ack["ok"]:
        assert isinstance(ack["error"]["code"], str) and ack["error"]["code"]
        assert isinstance(ack["error"]["message"], str)
    assert target.errors.records == [], target.errors.text()
    assert target.client.sio.connected


def test_after_fuzzing_the_same_connection_still_works(target: FuzzTarget) -> None:
    async def normal_flow() -> dict[str, Any]:
        await target.client.join("after-fuzz")
        sent = await target.client.send("after-fuzz", "a normal question")
        [reply] = await target.client.wait_for(
            "aiMessage", lambda m: m["consultationId"] == "after-fuzz"
        )
        assert "a normal question" in reply["content"]
        return sent

    assert target.thread.run(normal_flow())["seq"] == 1
    assert target.errors.records == [], target.errors.text()


RAW_FRAMES: list[str | bytes] = [
    "",
    "4",
    "42",
    "42/chat",
    "42/chat,",
    "42/chat,[",
    "42/chat,[]",
    "42/chat,{}",
    "42/chat,123",
    '42/chat,["sendMessage"',
    "42/chat,[null]",
    "42/chat,[1,2]",
    '421/chat,["joinConsultation",{}]',
    '4999999999999999999999/chat,["joinConsultation",{}]',
    "43/chat,1[]",
    "43/chat,",
    "44/chat,{}",
    "45/chat,",
    '451-/chat,["x",{"_placeholder":true,"num":0}]',
    "46/chat,",
    "41/chat,",
    "47",
    "49",
    "x",
    "4x",
    "3",
    "5",
    "6",
    "1",
    "2probe",
    b"\x00\xff\xfe binary",
    "4" + "9" * 1000,
    '42/nope,["x"]',
    "40/other,",
    '42/chat,["sendMessage",' + "[" * 2000 + "]" * 2000 + "]",
    "42/chat," + json.dumps(["sendMessage", {"consultationId": "raw", "content": "x"}]),
]


# "1" asks the server to close; "41/chat," leaves the namespace the next event is sent to;
# "451-…" announces a binary attachment, so the next frame is taken as that attachment: in
# each case the server rightly answers nothing.
SILENT_BY_PROTOCOL = {"1", "41/chat,", '451-/chat,["x",{"_placeholder":true,"num":0}]'}


async def _probe(ws_url: str, frame: str | bytes) -> str:
    """Send ``frame`` on a connected socket, then a valid event with an ack id: the event is
    answered (the frame was tolerated), or the server closes the peer (a protocol violation),
    or, for the frames above, nothing happens. Never an unanswered valid peer."""
    async with websockets.connect(ws_url) as ws:
        assert str(await ws.recv()).startswith("0{")
        await ws.send("40/chat,")
        assert str(await ws.recv()).startswith("40/chat,")
        await ws.send(frame)
        await ws.send('42/chat,7["leaveConsultation",{"consultationId":"raw"}]')
        try:
            async with asyncio.timeout(2):
                while True:
                    message = str(await ws.recv())
                    if message.startswith("43/chat,7"):
                        return "answered"
                    if message == "1":  # Engine.IO close
                        return "closed"
        except websockets.ConnectionClosed:
            return "closed"
        except TimeoutError:
            return "silent"


async def test_raw_malformed_packets_do_not_crash_the_server(
    start_server: Any, connect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    server = await start_server()
    ws_url = server.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    for frame in RAW_FRAMES:  # each on a fresh, live connection
        outcome = await _probe(ws_url, frame)
        if frame in SILENT_BY_PROTOCOL:
            assert outcome in {"silent", "closed"}, (frame, outcome)
        else:
            assert outcome in {"answered", "closed"}, (frame, outcome)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], "\n".join(r.getMessage() for r in errors)
    assert server.components.bridge.protocol_errors > 0  # broken peers were closed, not served
    survivor = await connect(server.url)
    await survivor.join("after-raw")
    assert (await survivor.send("after-raw", "fine"))["seq"] == 1
    [reply] = await survivor.wait_for("aiMessage")
    assert reply["seq"] == 2


raw_frames = st.one_of(
    # Frames shaped like the protocol, with any event and payload, mostly well-formed.
    st.fixed_dictionaries(
        {"event": events},
        optional={"data": payloads, "id": st.integers() | st.text(max_size=8) | st.none()},
    ).map(json.dumps),
    st.fixed_dictionaries({"type": events}, optional=optional_fields).map(json.dumps),
    json_values.map(json.dumps),  # any JSON at all
    st.text(max_size=200),  # not JSON
    st.binary(max_size=200),  # not text
)


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frame=raw_frames)
@example(frame='{"event": "auth", "data": {"token": "forged"}}')
@example(frame='{"event": "sendMessage", "data": {"consultationId": "raw-fuzz", "content": 1e308}}')
@example(frame=json.dumps({"event": "joinConsultation", "data": nested(400)}))
@example(frame='{"event": "ping", "id": 1e400}')
@example(frame="")
def test_every_raw_frame_leaves_a_live_socket_and_logs_no_unhandled_error(
    target: FuzzTarget, frame: str | bytes
) -> None:
    async def probe() -> dict[str, Any]:
        await target.raw.send_text(frame)
        return await target.raw.call("ping")  # answered: the socket is alive and in order

    assert target.thread.run(probe())["ok"] is True
    assert target.raw.closed is None
    assert target.errors.records == [], target.errors.text()


def test_after_raw_fuzzing_the_same_socket_still_chats(target: FuzzTarget) -> None:
    async def normal_flow() -> dict[str, Any]:
        sent = await target.raw.send("raw-fuzz", "a normal question over raw")
        await target.raw.wait_for("aiMessage", lambda m: "normal question over raw" in m["content"])
        return sent

    assert target.thread.run(normal_flow())["content"] == "a normal question over raw"
    assert target.errors.records == [], target.errors.text()
