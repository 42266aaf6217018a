"""ReplyService on the in-memory store and coordination: the aiChunk coalescing policy, and
a takeover edge case no end-to-end kill can time reliably.

The assistant here is a scripted stand-in for the LLM (the only part tests may replace) and the
rooms record what the room would receive, with the loop time of each emit. The end-to-end
behaviour through Socket.IO is covered in tests/e2e; this pins down *when* chunks leave.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from server.ai.retrieval import Bm25Ranker
from server.coordination import in_memory
from server.domain.events import ServerEvent
from server.domain.knowledge import KnowledgeService
from server.domain.models import Article, Author, ConsultationKey, Message, Source, utcnow
from server.domain.ports import Delta, ReplyDraft, ReplyRequest
from server.domain.replies import ReplyCoordination, ReplyService, ReplySettings
from server.errors import StorageUnavailable
from server.storage.memory import MemoryStore

WINDOW = 0.3  # seconds; generous so a loaded CI machine cannot blur "held" and "at once"


@dataclass
class ScriptedAssistant:
    """Yields (pause before, text) steps and records the loop time each delta left."""

    script: list[tuple[float, str]]
    yielded_at: dict[str, float] = field(default_factory=dict)

    async def stream(self, request: ReplyRequest) -> AsyncIterator[Delta]:
        loop = asyncio.get_running_loop()
        for pause, text in self.script:
            await asyncio.sleep(pause)
            self.yielded_at[text] = loop.time()
            yield Delta(text=text, model="scripted")

    async def close(self) -> None:
        return None


@dataclass
class RecordingRooms:
    """The Rooms port, recording what the room would receive and when."""

    events: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def join(self, connection_id: str, room: str) -> None:
        return None

    async def leave(self, connection_id: str, room: str) -> None:
        return None

    async def to_room(self, room: str, event: ServerEvent, *, skip: str | None = None) -> None:
        self.events.append((asyncio.get_running_loop().time(), event.name, event.to_wire()))
        if event.name == "aiMessage":
            self.done.set()

    async def to_connection(self, connection_id: str, event: ServerEvent) -> None:
        return None

    def chunks(self) -> list[tuple[float, dict[str, Any]]]:
        return [(at, data) for at, event, data in self.events if event == "aiChunk"]


def service_on(
    store: MemoryStore,
    assistant: ScriptedAssistant,
    rooms: RecordingRooms,
    coordination: Any,
    **settings: Any,
) -> ReplyService:
    parts = ReplyCoordination(
        coordination.locks,
        coordination.queue,
        coordination.buffer,
        coordination.stops,
        coordination.inflight,
    )
    return ReplyService(
        store, assistant, rooms, parts, ReplySettings(system_prompt="test", **settings)
    )


async def run_reply(script: list[tuple[float, str]], window: float) -> tuple[Any, Any]:
    assistant = ScriptedAssistant(script)
    notifier = RecordingRooms()
    coordination = in_memory()
    store = MemoryStore()
    service = service_on(store, assistant, notifier, coordination, chunk_flush_seconds=window)
    service.request(ConsultationKey("tenant", "coalescing"))
    await asyncio.wait_for(notifier.done.wait(), timeout=20)
    return assistant, notifier


def last_token(chunk: dict[str, Any]) -> str:
    return chunk["content"].split()[-1]


async def test_a_chunk_leaves_when_its_newest_delta_arrives() -> None:
    # Deltas every 70 ms with a 300 ms window: the first goes alone, then each chunk is sent
    # by the first delta arriving after the window, carrying what was held before it. (A
    # flush on a timer would find its newest delta up to 70 ms old.)
    script = [(0.0 if i == 0 else 0.07, f"t{i} ") for i in range(25)]
    assistant, notifier = await run_reply(script, WINDOW)
    chunks = notifier.chunks()
    assert chunks[0][1]["content"] == "t0 "
    streamed = [(at, c) for at, c in chunks if not c["isComplete"]]
    assert 3 <= len(streamed) <= 10, [c["content"] for _, c in streamed]
    for at, chunk in streamed:
        newest = assistant.yielded_at[last_token(chunk) + " "]
        assert at - newest < 0.03, (chunk["content"], at - newest)
    for (earlier, _), (later, _) in itertools.pairwise(streamed):
        assert later - earlier >= WINDOW * 0.9  # at most one chunk per window
    text = "".join(c["content"] for _, c in chunks)
    assert text == "".join(t for _, t in script)


async def test_held_text_leaves_after_a_window_of_silence() -> None:
    # Two quick deltas after the first are held by the window; the model then pauses for
    # three windows: the held text must not wait for the end of the stream.
    script = [(0.0, "a "), (0.01, "b "), (0.01, "c "), (WINDOW * 3, "d ")]
    assistant, notifier = await run_reply(script, WINDOW)
    chunks = notifier.chunks()
    assert [c["content"] for _, c in chunks[:2]] == ["a ", "b c "]
    released = chunks[1][0] - assistant.yielded_at["c "]
    assert WINDOW * 0.9 <= released < WINDOW * 2, released
    assert chunks[1][0] < assistant.yielded_at["d "]


async def test_without_a_window_every_delta_is_its_own_chunk() -> None:
    script = [(0.0, "a "), (0.0, "b "), (0.01, "c "), (0.01, "d ")]
    _, notifier = await run_reply(script, 0)
    contents = [c["content"] for _, c in notifier.chunks()]
    # The final chunk (isComplete) carries whatever the stream's end overtook.
    assert contents[:3] == ["a ", "b ", "c "]
    assert "".join(contents) == "a b c d "


async def test_a_reply_stored_by_an_instance_that_died_before_publishing_it_reaches_the_room() -> (
    None
):
    # What an instance leaves when it dies between storing its reply and publishing it: the
    # question and the reply stored, the buffer still naming the reply, an expired lock and
    # an overdue entry in the registry. Another instance's reaper publishes the stored reply.
    key = ConsultationKey("tenant", "died-before-publishing")
    store, coordination, rooms = MemoryStore(), in_memory(), RecordingRooms()
    question = await store.append(Message.new(key, Author.USER, "hello"))
    reply = await store.append(
        Message.new(key, Author.ASSISTANT, "hi there", answers_seq=question.message.seq)
    )
    started = ReplyDraft(reply.message.id, owner="dead", request_seq=question.message.seq)
    await coordination.buffer.start(key.room, started, 60)
    await coordination.buffer.append(key.room, reply.message.id, "dead", "hi there", 60)
    await coordination.inflight.touch(key.room, 0)
    assistant = ScriptedAssistant([(0.0, "never asked ")])
    service = service_on(store, assistant, rooms, coordination, lock_ttl_seconds=0.6)
    service.start()
    try:
        await asyncio.wait_for(rooms.done.wait(), timeout=10)
    finally:
        await service.stop_reaper()
    [published] = [data for _, event, data in rooms.events if event == "aiMessage"]
    assert (published["id"], published["seq"]) == (reply.message.id, reply.message.seq)
    assert [event for _, event, _ in rooms.events] == ["aiMessage", "aiThinking"]
    assert await coordination.buffer.read(key.room) is None


async def test_a_reply_taken_over_is_grounded_and_named_as_its_start_was() -> None:
    # A dead instance streamed "The tour leaves" of an answer grounded in an article. The
    # instance that takes it over asks the model with the same passages, and the stored reply
    # names them.
    key = ConsultationKey("tenant", "grounded-takeover")
    store, coordination, rooms = MemoryStore(), in_memory(), RecordingRooms()
    await store.put_article(
        Article(
            id="bled",
            tenant_id="tenant",
            title="Lake Bled tour",
            content="The Lake Bled tour leaves every Monday at 9:00.",
            updated_at=utcnow(),
        )
    )
    question = await store.append(Message.new(key, Author.USER, "When does the Bled tour leave?"))
    started = ReplyDraft("orphan", owner="dead", request_seq=question.message.seq)
    await coordination.buffer.start(key.room, started, 60)
    await coordination.buffer.append(key.room, "orphan", "dead", "The tour leaves ", 60)
    await coordination.inflight.touch(key.room, 0)
    requests: list[ReplyRequest] = []

    class Recording(ScriptedAssistant):
        async def stream(self, request: ReplyRequest) -> AsyncIterator[Delta]:
            requests.append(request)
            async for delta in super().stream(request):
                yield delta

    parts = ReplyCoordination(
        coordination.locks,
        coordination.queue,
        coordination.buffer,
        coordination.stops,
        coordination.inflight,
    )
    service = ReplyService(
        store,
        Recording([(0.0, "on Mondays [1].")]),
        rooms,
        parts,
        ReplySettings(system_prompt="test", lock_ttl_seconds=0.6),
        knowledge=KnowledgeService(store, Bm25Ranker()),
    )
    service.start()
    try:
        await asyncio.wait_for(rooms.done.wait(), timeout=10)
    finally:
        await service.stop_reaper()
    [request] = requests
    assert request.continue_from == "The tour leaves "
    assert any("<knowledge>" in turn.content for turn in request.turns)
    [stored] = [m for m in await store.recent(key, 10) if m.role is Author.ASSISTANT]
    assert stored.content == "The tour leaves on Mondays [1]."
    assert stored.sources == [Source(id="bled", title="Lake Bled tour", cited=True)]


class StoreAway(MemoryStore):
    """The in-memory store, unreachable for ``failures`` reads of messages after a seq, from
    its read number ``first_failing`` on (as MongoDB restarting under a reaper that found an
    orphaned reply); ``on_failure`` runs at each (what else went away at that moment)."""

    def __init__(
        self,
        failures: int,
        first_failing: int = 1,
        on_failure: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__()
        self.failures = failures
        self.reads = 0
        self._first_failing = first_failing
        self._on_failure = on_failure

    async def after(self, key: ConsultationKey, after_seq: int, limit: int) -> list[Message]:
        self.reads += 1
        if self.reads >= self._first_failing and self.failures:
            self.failures -= 1
            if self._on_failure is not None:
                await self._on_failure()
            raise StorageUnavailable()
        return await super().after(key, after_seq, limit)


async def continue_orphan(
    store: MemoryStore, coordination: Any, key: ConsultationKey, shown: str
) -> tuple[Message, RecordingRooms]:
    """A dead instance streamed ``shown`` of its reply to a question; a reaper continues it
    with "and the rest.". Returns the stored reply and what the room received."""
    rooms = RecordingRooms()
    question = await MemoryStore.append(store, Message.new(key, Author.USER, "hello"))
    started = ReplyDraft("orphan", owner="dead", request_seq=question.message.seq)
    await coordination.buffer.start(key.room, started, 60)
    await coordination.buffer.append(key.room, "orphan", "dead", shown, 60)
    await coordination.inflight.touch(key.room, 0)
    assistant = ScriptedAssistant([(0.0, "and the rest.")])
    service = service_on(store, assistant, rooms, coordination, lock_ttl_seconds=0.6)
    service.start()
    try:
        await asyncio.wait_for(rooms.done.wait(), timeout=10)
    finally:
        await service.stop_reaper()
    [stored] = [m for m in await MemoryStore.recent(store, key, 10) if m.role is Author.ASSISTANT]
    return stored, rooms


async def test_an_orphaned_reply_is_retried_when_the_store_was_away_at_the_first_try() -> None:
    # The reaper finds a dead instance's reply but cannot read the store: the in-flight entry
    # stays, so the next round continues the reply instead of letting its text expire.
    key = ConsultationKey("tenant", "orphan-store-away")
    store = StoreAway(failures=1)
    stored, rooms = await continue_orphan(store, in_memory(), key, "Echo so far ")
    assert store.failures == 0
    assert (stored.id, stored.content) == ("orphan", "Echo so far and the rest.")
    # The reaper's failed try was not reported to the room as an error.
    assert "error" not in [event for _, event, _ in rooms.events]


async def test_a_claimed_orphan_waits_for_the_store_instead_of_leaving_its_text_to_the_buffer() -> (
    None
):
    # The taker holds the only sure copy of what the room saw once it claimed the buffer:
    # a store away for a moment is waited for, and the reply is continued and stored. Here
    # MongoDB goes away right after the claim (the reaper's first read came before it), and
    # Redis restarts empty meanwhile: the claimed buffer is gone.
    key = ConsultationKey("tenant", "orphan-store-away-after-claim")
    coordination = in_memory()

    async def redis_restarts_empty() -> None:
        await coordination.buffer.clear(key.room, "orphan")

    store = StoreAway(failures=2, first_failing=2, on_failure=redis_restarts_empty)
    stored, rooms = await continue_orphan(store, coordination, key, "Shown so far ")
    assert store.failures == 0
    assert (stored.id, stored.content) == ("orphan", "Shown so far and the rest.")
    assert "error" not in [event for _, event, _ in rooms.events]
