"""Joining, sending and reading consultations, with their access rules."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..errors import Forbidden, InvalidPayload, NotFound, NotJoined
from .models import (
    Author,
    Consultation,
    ConsultationKey,
    Identity,
    Message,
    NewMessage,
    new_id,
    utcnow,
)
from .policies import Moderation, RateLimiter
from .ports import Coordination, Notifier, Partial, Store
from .replies import ReplyService

EnterRoom = Callable[[ConsultationKey], Awaitable[None]]


@dataclass(frozen=True)
class Limits:
    max_message_chars: int = 8000
    history_page_size: int = 50
    max_history_page_size: int = 500


@dataclass(frozen=True)
class Joined:
    consultation: Consultation
    messages: list[Message]
    streaming: Partial | None = None  # the reply being streamed right now, so far


def can_access(identity: Identity, consultation: Consultation) -> bool:
    """Tenancy is already enforced by the key; within a tenant, users see only their own."""
    return identity.is_staff or consultation.owner_id == identity.user_id


class ConsultationService:
    def __init__(
        self,
        store: Store,
        replies: ReplyService,
        notifier: Notifier,
        coordination: Coordination,
        *,
        limits: Limits,
        rate_limiter: RateLimiter,
        moderation: Moderation | None = None,
    ) -> None:
        self._store = store
        self._coordination = coordination
        self._rate_limiter = rate_limiter
        self._moderation = moderation or Moderation()
        self._replies = replies
        self._notifier = notifier
        self.limits = limits

    async def join(
        self, identity: Identity, consultation_id: str, last_seq: int | None, enter: EnterRoom
    ) -> Joined:
        key = ConsultationKey(identity.tenant_id, consultation_id)
        consultation = await self._store.get_or_create(key, identity.user_id)
        if not can_access(identity, consultation):
            raise Forbidden()
        # Enter the room before reading history: a message stored in between is then seen
        # live (clients de-duplicate by seq) instead of being missed.
        await enter(key)
        # Read the partial reply before the history: if the reply is stored in between, it is
        # in the history and the stale partial is dropped below; never the other way round.
        streaming = await self._coordination.read_partial(key.room)
        messages = await self._page(
            key,
            last_seq,
            recent=self.limits.history_page_size,
            after=self.limits.max_history_page_size,
        )
        if streaming is not None and any(m.id == streaming.message_id for m in messages):
            streaming = None
        return Joined(consultation, messages, streaming)

    async def history(
        self, identity: Identity, consultation_id: str, after_seq: int | None, limit: int | None
    ) -> list[Message]:
        key = ConsultationKey(identity.tenant_id, consultation_id)
        consultation = await self._store.get(key)
        if consultation is None:
            raise NotFound("No such consultation")
        if not can_access(identity, consultation):
            raise Forbidden()
        page = min(limit or self.limits.history_page_size, self.limits.max_history_page_size)
        return await self._page(key, after_seq, recent=page, after=page)

    async def _page(
        self, key: ConsultationKey, after_seq: int | None, *, recent: int, after: int
    ) -> list[Message]:
        """The last ``recent`` messages, or up to ``after`` of those following ``after_seq``."""
        if after_seq is None:
            return await self._store.recent(key, recent)
        return await self._store.after(key, after_seq, after)

    async def send(
        self,
        identity: Identity,
        consultation: Consultation,
        content: str,
        client_message_id: str | None,
        origin: str | None,
    ) -> Message:
        self._check_content(content)
        self._moderation.check(content)
        rate = await self._rate_limiter.hit(identity)
        appended = await self._store.append(
            NewMessage(
                id=new_id(),
                key=consultation.key,
                author=Author.USER,
                user_id=identity.user_id,
                content=content,
                created_at=utcnow(),
                client_message_id=client_message_id,
            )
        )
        if appended.created:
            # Stored first, broadcast second: a message that failed to store is never
            # broadcast. A retried clientMessageId returns the original, broadcast once and
            # answered once.
            await self._notifier.to_room(
                consultation.key, "userMessage", appended.message.to_wire(), skip=origin
            )
            self._replies.request(consultation.key)
        warning = self._rate_limiter.warning(rate)
        if warning is not None and origin is not None:
            await self._notifier.to_connection(origin, "rateWarning", warning)
        return appended.message

    async def stop(self, consultation: Consultation) -> bool:
        return await self._replies.stop(consultation.key)

    def _check_content(self, content: str) -> None:
        if not content.strip():
            raise InvalidPayload("content must not be empty", field="content")
        if len(content) > self.limits.max_message_chars:
            raise InvalidPayload(
                f"content is longer than {self.limits.max_message_chars} characters",
                field="content",
            )


@dataclass
class ChatSession:
    """One connection's view: who it is and which consultations it has joined."""

    identity: Identity
    service: ConsultationService
    origin: str
    joined: dict[str, Consultation] = field(default_factory=dict)

    async def join(self, consultation_id: str, last_seq: int | None, enter: EnterRoom) -> Joined:
        result = await self.service.join(self.identity, consultation_id, last_seq, enter)
        self.joined[consultation_id] = result.consultation
        return result

    def leave(self, consultation_id: str) -> ConsultationKey | None:
        consultation = self.joined.pop(consultation_id, None)
        return consultation.key if consultation else None

    async def send(
        self, consultation_id: str, content: str, client_message_id: str | None
    ) -> Message:
        return await self.service.send(
            self.identity, self._joined(consultation_id), content, client_message_id, self.origin
        )

    async def stop(self, consultation_id: str) -> bool:
        """Stop the reply streaming in a joined consultation; True when one was running."""
        return await self.service.stop(self._joined(consultation_id))

    def refresh(self, identity: Identity) -> None:
        """Adopt a fresh token's identity: it must be the same user of the same tenant."""
        if (identity.tenant_id, identity.user_id) != (
            self.identity.tenant_id,
            self.identity.user_id,
        ):
            raise Forbidden("A refreshed token must be for the same user")
        self.identity = identity

    def _joined(self, consultation_id: str) -> Consultation:
        consultation = self.joined.get(consultation_id)
        if consultation is None:
            raise NotJoined()
        return consultation
