"""AI replies: one at a time per consultation, streamed to the room, stored once at the end.

A stored user message *requests* a reply. The request marks the consultation pending and tries
to take its reply lock; whoever holds the lock keeps answering while requests are pending, so
messages sent during a reply are answered by the next one, with them in context. The lock, the
pending flag, the partial-reply buffer and stop requests are coordination ports (Redis in a
cluster), so all of this holds across instances.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field

from ..errors import AppError, AssistantUnavailable, ReplyInterrupted
from .events import AiChunk, AiMessage, AiThinking, ErrorEvent, ServerEvent
from .models import Author, ConsultationKey, Message, MessageStatus, new_id
from .ports import (
    Assistant,
    Lock,
    MessageStore,
    Partial,
    ReplyBuffer,
    ReplyLocks,
    ReplyQueue,
    ReplyRequest,
    Rooms,
    StopSignals,
    Turn,
)

log = logging.getLogger(__name__)

STOP_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class ReplySettings:
    system_prompt: str
    context_messages: int = 10
    lock_ttl_seconds: float = 15.0
    enabled: bool = True  # off: rooms are pure relays (human-only rooms, load tests)
    chunk_flush_seconds: float = 0.04  # at most one aiChunk per window; 0: one per delta


@dataclass
class _Draft:
    """A reply while it streams."""

    key: ConsultationKey
    message_id: str
    parts: list[str] = field(default_factory=list)  # every delta received
    model: str | None = None
    next_index: int = 0
    sent_parts: int = 0  # how many of the parts went out in chunks
    streaming: bool = True  # the flusher stops once this is False
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # flush now, or stop
    delta_at: float = 0.0  # loop time of the newest delta
    flushed_at: float = float("-inf")  # loop time of the last chunk

    @property
    def holding(self) -> bool:
        return self.sent_parts < len(self.parts)

    @property
    def content(self) -> str:
        return "".join(self.parts)

    def unsent(self) -> str:
        """The text received since the last chunk, now counted as sent."""
        text = "".join(self.parts[self.sent_parts :])
        self.sent_parts = len(self.parts)
        return text

    def chunk(self, content: str, complete: bool) -> AiChunk:
        index, self.next_index = self.next_index, self.next_index + 1
        return AiChunk(
            consultation_id=self.key.consultation_id,
            message_id=self.message_id,
            index=index,
            content=content,
            is_complete=complete,
        )


@dataclass(frozen=True)
class ReplyCoordination:
    """The coordination ports a reply needs."""

    locks: ReplyLocks
    queue: ReplyQueue
    buffer: ReplyBuffer
    stops: StopSignals


class ReplyService:
    def __init__(
        self,
        store: MessageStore,
        assistant: Assistant,
        rooms: Rooms,
        coordination: ReplyCoordination,
        settings: ReplySettings,
    ) -> None:
        self._store = store
        self._assistant = assistant
        self._rooms = rooms
        self._locks = coordination.locks
        self._queue = coordination.queue
        self._buffer = coordination.buffer
        self._stops = coordination.stops
        self._settings = settings
        self._tasks: set[asyncio.Task[None]] = set()
        self.streaming_now: set[str] = set()  # rooms whose reply streams on this instance

    @property
    def _buffer_ttl(self) -> float:
        return self._settings.lock_ttl_seconds * 2

    def request(self, key: ConsultationKey) -> None:
        """Ask for a reply in the background; never blocks the caller's socket."""
        if not self._settings.enabled:
            return
        task = asyncio.create_task(self._serve(key), name=f"reply:{key.room}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self, key: ConsultationKey) -> bool:
        """Ask whichever instance streams this consultation's reply to stop it, and drop the
        replies still queued. True when a reply was streaming."""
        name = key.room
        streaming = await self._buffer.read(name) is not None
        await self._queue.take_pending(name)
        if streaming:
            await self._stops.request_stop(name, self._settings.lock_ttl_seconds)
        return streaming

    async def streaming(self, key: ConsultationKey) -> Partial | None:
        """The reply streaming in this consultation right now (on any instance), so far."""
        return await self._buffer.read(key.room)

    async def wait_idle(self, grace_seconds: float) -> None:
        """Let running replies finish (used at shutdown), then cancel what is left."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace_seconds)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    async def _serve(self, key: ConsultationKey) -> None:
        name = key.room
        ttl = self._settings.lock_ttl_seconds
        try:
            await self._queue.mark_pending(name)
            while True:
                lock = await self._locks.try_lock(name, ttl)
                if lock is None:
                    # Another reply is running; its holder answers our flag when it finishes.
                    # If the holder crashed, its lock expires with our flag still set: keep
                    # watching until someone took the flag or the lock is ours.
                    if not await self._queue.is_pending(name):
                        return
                    await asyncio.sleep(random.uniform(0.5, 1.0) * min(0.5, ttl / 4))
                    continue
                try:
                    while await self._queue.take_pending(name):
                        await self._reply_once(key, lock)
                finally:
                    await lock.release()
                # A request may have marked pending between our last take and the release,
                # and failed to lock because we still held it: look once more.
                if not await self._queue.is_pending(name):
                    return
        except AppError as exc:
            log.warning("reply for %s not generated: %s", name, exc.message)
            await self._safe_emit(key, _error(key, exc))
        except Exception:
            log.exception("reply for %s failed", name)

    async def _reply_once(self, key: ConsultationKey, lock: Lock) -> None:
        cid = key.consultation_id
        await self._rooms.to_room(key.room, AiThinking(consultation_id=cid, status="processing"))
        self.streaming_now.add(key.room)
        try:
            await self._stream_and_store(key, lock)
        finally:
            self.streaming_now.discard(key.room)
            await self._safe_emit(key, AiThinking(consultation_id=cid, status="done"))

    async def _stream_and_store(self, key: ConsultationKey, lock: Lock) -> None:
        name = key.room
        await self._stops.take_stop(name)  # a stop sent before this reply is not for it
        history = await self._store.recent(key, self._settings.context_messages)
        request = ReplyRequest(
            system_prompt=self._settings.system_prompt,
            turns=[Turn(m.role, m.content) for m in history],
        )
        draft = _Draft(key=key, message_id=new_id())
        await self._buffer.start(name, draft.message_id, self._buffer_ttl)
        consumer = asyncio.create_task(self._consume(request, draft, lock))
        stopped = await self._wait_unless_stopped(name, consumer)
        failure = None if stopped else consumer.result()
        await self._finish(draft, stopped, failure)

    async def _consume(self, request: ReplyRequest, draft: _Draft, lock: Lock) -> AppError | None:
        """Stream the reply into the room; return the failure that ended it, if any."""
        name = draft.key.room
        # Every chunk leaves from this one task, which is never cancelled mid-flush: a flush
        # interrupted between taking its text and emitting it would lose that text.
        flusher = asyncio.create_task(self._flush_until_done(draft))
        renewed_at = time.monotonic()
        window = self._settings.chunk_flush_seconds
        loop = asyncio.get_running_loop()
        try:
            async for delta in self._assistant.stream(request):
                if not delta.text:
                    continue
                draft.model = delta.model
                draft.parts.append(delta.text)
                # A delta goes out at once, with whatever is held, when the last chunk left at
                # least a window ago (the first one always): a fast model does not cost an
                # event (and a Redis round trip) per token, yet a chunk never waits for a
                # timer after its newest delta arrived. Held text leaves when the model
                # pauses for a window (see _flush_until_done) or the stream ends.
                draft.delta_at = now = loop.time()
                if now - draft.flushed_at >= window:
                    draft.wake.set()
                if window <= 0:
                    # One chunk per delta, even for deltas decoded from one network read
                    # (the stream does not yield to the loop between them).
                    await asyncio.sleep(0)
                if time.monotonic() - renewed_at > self._settings.lock_ttl_seconds / 3:
                    renewed_at = time.monotonic()
                    if not await lock.renew():
                        log.warning("reply lock for %s was lost while streaming", name)
        except AssistantUnavailable as exc:
            return exc
        except Exception:  # a provider bug must not lose what streamed
            log.exception("assistant failed for %s", name)
            return ReplyInterrupted() if draft.parts else AssistantUnavailable()
        finally:
            # Let a flush in progress finish; the rest goes out in the final chunk.
            draft.streaming = False
            draft.wake.set()
            await asyncio.shield(flusher)
        return None

    async def _flush_until_done(self, draft: _Draft) -> None:
        """Send chunks when the consumer wakes us, and held text once the model has been
        silent for a window."""
        window = self._settings.chunk_flush_seconds
        loop = asyncio.get_running_loop()
        deadline: float | None = None  # when to look at held text again
        while draft.streaming:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await draft.wake.wait()
            woken = draft.wake.is_set()
            draft.wake.clear()
            if not draft.streaming:
                return
            now = loop.time()
            if woken or (draft.holding and now >= draft.delta_at + window):
                draft.flushed_at = now
                try:
                    await self._flush(draft)
                except Exception:  # the final chunk still carries this text
                    log.exception("could not send a chunk of %s", draft.key.room)
                    return
                # Deltas within the window are held: look again when it is over.
                deadline = draft.flushed_at + window if window > 0 else None
            elif draft.holding:
                deadline = draft.delta_at + window  # the model's silence that releases it
            else:
                deadline = None  # the next delta wakes us (the window is over)

    async def _flush(self, draft: _Draft) -> None:
        """Send what arrived since the last chunk: as one chunk, or with no coalescing window
        one chunk per delta. Text counts as sent only once emitted: if this fails, the final
        chunk carries it."""
        start, end = draft.sent_parts, len(draft.parts)
        if self._settings.chunk_flush_seconds > 0:
            batches = [(end, "".join(draft.parts[start:end]))]
        else:
            batches = [(i + 1, draft.parts[i]) for i in range(start, end)]
        for upto, text in batches:  # upto: the parts this batch covers
            if text:
                # Buffer first, emit second: a client joining in between finds the chunk in
                # the buffer (and drops the live copy by its index) instead of missing it.
                await self._buffer.append(draft.key.room, draft.message_id, text, self._buffer_ttl)
                await self._rooms.to_room(draft.key.room, draft.chunk(text, False))
            draft.sent_parts = upto

    async def _wait_unless_stopped(
        self, name: str, consumer: asyncio.Task[AppError | None]
    ) -> bool:
        """Wait for the stream to end; True when a stop request (from any instance) ended it."""
        try:
            while True:
                done, _ = await asyncio.wait({consumer}, timeout=STOP_POLL_SECONDS)
                if done:
                    return False
                if await self._stops.take_stop(name):
                    await _cancel(consumer)
                    return True
        except asyncio.CancelledError:  # shutting down: end the stream too
            await _cancel(consumer)
            raise

    async def _finish(self, draft: _Draft, stopped: bool, failure: AppError | None) -> None:
        key, name, content = draft.key, draft.key.room, draft.content
        if not content:
            await self._buffer.clear(name, draft.message_id)
            if failure is None and not stopped:
                failure = AssistantUnavailable("The assistant returned an empty reply")
        else:
            # The last chunk carries whatever was not flushed yet (a stop may have cut a
            # flush short): all chunks concatenated always equal the stored reply.
            await self._rooms.to_room(name, draft.chunk(draft.unsent(), True))
            try:
                stored = await self._store_reply(draft, _status(stopped, failure))
            finally:
                await self._buffer.clear(name, draft.message_id)
            await self._rooms.to_room(name, AiMessage(message=stored))
        if failure is not None:
            await self._rooms.to_room(name, _error(key, failure))

    async def _store_reply(self, draft: _Draft, status: MessageStatus) -> Message:
        appended = await self._store.append(
            Message.new(
                draft.key,
                Author.ASSISTANT,
                draft.content,
                id=draft.message_id,
                status=status,
                model=draft.model,
            )
        )
        return appended.message

    async def _safe_emit(self, key: ConsultationKey, event: ServerEvent) -> None:
        try:
            await self._rooms.to_room(key.room, event)
        except Exception:
            log.exception("could not emit %s to %s", event.name, key.room)


def _error(key: ConsultationKey, error: AppError) -> ErrorEvent:
    return ErrorEvent.model_validate({"consultationId": key.consultation_id, **error.to_wire()})


def _status(stopped: bool, failure: AppError | None) -> MessageStatus:
    if stopped:
        return MessageStatus.STOPPED
    return MessageStatus.COMPLETE if failure is None else MessageStatus.INCOMPLETE


async def _cancel(task: asyncio.Task[AppError | None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
