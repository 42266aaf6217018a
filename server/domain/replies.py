"""AI replies: one at a time per consultation, streamed to the room, stored once at the end.

A stored user message *requests* a reply. The request marks the consultation pending and tries
to take its reply lock; whoever holds the lock keeps answering while requests are pending, so
messages sent during a reply are answered by the next one, with them in context. The lock and
the pending flag live in the Coordination port, so this holds across instances.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

from ..errors import AppError, AssistantUnavailable, ReplyInterrupted
from .models import (
    Author,
    ConsultationKey,
    Message,
    MessageStatus,
    NewMessage,
    new_id,
    utcnow,
)
from .ports import Assistant, Coordination, Lock, MessageStore, Notifier, ReplyRequest, Turn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplySettings:
    system_prompt: str
    context_messages: int = 10
    lock_ttl_seconds: float = 15.0


class ReplyService:
    def __init__(
        self,
        store: MessageStore,
        assistant: Assistant,
        notifier: Notifier,
        coordination: Coordination,
        settings: ReplySettings,
    ) -> None:
        self._store = store
        self._assistant = assistant
        self._notifier = notifier
        self._coordination = coordination
        self._settings = settings
        self._tasks: set[asyncio.Task[None]] = set()

    def request(self, key: ConsultationKey) -> None:
        """Ask for a reply in the background; never blocks the caller's socket."""
        task = asyncio.create_task(self._serve(key), name=f"reply:{key.room}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
            await self._coordination.mark_pending(name)
            while True:
                lock = await self._coordination.try_lock(name, ttl)
                if lock is None:
                    # Another reply is running; its holder answers our flag when it finishes.
                    # If the holder crashed, its lock expires with our flag still set: keep
                    # watching until someone took the flag or the lock is ours.
                    if not await self._coordination.is_pending(name):
                        return
                    await asyncio.sleep(random.uniform(0.5, 1.0) * min(0.5, ttl / 4))
                    continue
                try:
                    while await self._coordination.take_pending(name):
                        await self._reply_once(key, lock)
                finally:
                    await lock.release()
                # A request may have marked pending between our last take and the release,
                # and failed to lock because we still held it: look once more.
                if not await self._coordination.is_pending(name):
                    return
        except AppError as exc:
            log.warning("reply for %s not generated: %s", name, exc.message)
            await self._safe_emit(
                key, "error", {"consultationId": key.consultation_id, **exc.to_wire()}
            )
        except Exception:
            log.exception("reply for %s failed", name)

    async def _reply_once(self, key: ConsultationKey, lock: Lock) -> None:
        cid = key.consultation_id
        await self._notifier.to_room(
            key, "aiThinking", {"consultationId": cid, "status": "processing"}
        )
        try:
            await self._stream_and_store(key, lock)
        finally:
            await self._safe_emit(key, "aiThinking", {"consultationId": cid, "status": "done"})

    async def _stream_and_store(self, key: ConsultationKey, lock: Lock) -> None:
        cid = key.consultation_id
        history = await self._store.recent(key, self._settings.context_messages)
        request = ReplyRequest(
            system_prompt=self._settings.system_prompt,
            turns=[Turn(m.author, m.content) for m in history],
        )
        message_id = new_id()
        name, buffer_ttl = key.room, self._settings.lock_ttl_seconds * 2
        await self._coordination.start_partial(name, message_id, buffer_ttl)
        parts: list[str] = []
        model: str | None = None
        index = 0
        failure: AppError | None = None
        renewed_at = time.monotonic()
        try:
            async for delta in self._assistant.stream(request):
                if not delta.text:
                    continue
                model = delta.model
                parts.append(delta.text)
                # Buffer first, emit second: a client joining in between finds the chunk in
                # the buffer (and drops the live copy by its index) instead of missing it.
                await self._coordination.append_partial(name, message_id, delta.text, buffer_ttl)
                await self._notifier.to_room(
                    key, "aiChunk", _chunk(cid, message_id, index, delta.text, False)
                )
                index += 1
                if time.monotonic() - renewed_at > self._settings.lock_ttl_seconds / 3:
                    renewed_at = time.monotonic()
                    if not await lock.renew():
                        log.warning("reply lock for %s was lost while streaming", key.room)
        except AssistantUnavailable as exc:
            failure = exc
        except Exception:  # a provider bug must not lose what streamed
            log.exception("assistant failed for %s", key.room)
            failure = ReplyInterrupted() if parts else AssistantUnavailable()
        content = "".join(parts)
        if content:
            await self._notifier.to_room(key, "aiChunk", _chunk(cid, message_id, index, "", True))
            status = MessageStatus.COMPLETE if failure is None else MessageStatus.INCOMPLETE
            try:
                stored = await self._store_reply(key, message_id, content, model, status)
            finally:
                await self._coordination.clear_partial(name, message_id)
            await self._notifier.to_room(key, "aiMessage", stored.to_wire())
        else:
            await self._coordination.clear_partial(name, message_id)
            if failure is None:
                failure = AssistantUnavailable("The assistant returned an empty reply")
        if failure is not None:
            await self._notifier.to_room(key, "error", {"consultationId": cid, **failure.to_wire()})

    async def _store_reply(
        self,
        key: ConsultationKey,
        message_id: str,
        content: str,
        model: str | None,
        status: MessageStatus,
    ) -> Message:
        return await self._store.append(
            NewMessage(
                id=message_id,
                key=key,
                author=Author.ASSISTANT,
                user_id=None,
                content=content,
                created_at=utcnow(),
                status=status,
                model=model,
            )
        )

    async def _safe_emit(self, key: ConsultationKey, event: str, data: dict[str, object]) -> None:
        try:
            await self._notifier.to_room(key, event, data)
        except Exception:
            log.exception("could not emit %s to %s", event, key.room)


def _chunk(
    cid: str, message_id: str, index: int, content: str, complete: bool
) -> dict[str, object]:
    return {
        "consultationId": cid,
        "messageId": message_id,
        "index": index,
        "content": content,
        "isComplete": complete,
    }
