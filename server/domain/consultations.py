"""Joining, sending and reading consultations, with their access rules."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..errors import ConsultationClosed, Forbidden, InvalidPayload, NotFound
from .events import ServerEvent, UserMessage, message_event
from .models import (
    Author,
    Consultation,
    ConsultationKey,
    Identity,
    Message,
    Mode,
    PageContext,
    Rating,
    Role,
    utcnow,
)
from .policies import Moderation, RateLimiter
from .ports import MessageMetrics, NoMetrics, Partial, Rooms, Stats, Store
from .replies import ReplyService


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


def can_access(identity: Identity, consultation: Consultation, *, open_access: bool) -> bool:
    """Tenancy is already enforced by the key; within a tenant, users see only their own
    (unless access is open: dev auth, where nothing is verified anyway). A visitor's token is
    verified even in dev auth: it sees its own consultations only, always."""
    if consultation.owner_id == identity.user_id or identity.is_staff:
        return True
    return open_access and identity.role is not Role.VISITOR


class ConsultationService:
    def __init__(
        self,
        store: Store,
        replies: ReplyService,
        rooms: Rooms,
        *,
        limits: Limits,
        rate_limiter: RateLimiter,
        moderation: Moderation | None = None,
        open_access: bool = False,
        metrics: MessageMetrics | None = None,
    ) -> None:
        self._metrics = metrics or NoMetrics()
        self._open_access = open_access
        self._store = store
        self._rate_limiter = rate_limiter
        self._moderation = moderation or Moderation()
        self._replies = replies
        self._rooms = rooms
        self.limits = limits
        self.stored_total = 0  # user messages this instance stored since it started

    async def join(
        self,
        identity: Identity,
        connection_id: str,
        consultation_id: str,
        last_seq: int | None,
        *,
        context: PageContext | None = None,
    ) -> Joined:
        key = ConsultationKey(identity.tenant_id, consultation_id)
        consultation = await self._store.get_or_create(key, identity.user_id, identity.role)
        if not can_access(identity, consultation, open_access=self._open_access):
            raise Forbidden()
        consultation = await self._remember(identity, consultation, context)
        # Enter the room before reading history: a message stored in between is then seen
        # live (clients de-duplicate by seq) instead of being missed.
        entered = await self._rooms.join(connection_id, key.room, ordered=True)
        try:
            # Read the partial reply before the history: if the reply is stored in between,
            # it is in the history and the stale partial is dropped below; never the other
            # way round.
            streaming = await self._replies.streaming(key)
            # Where the store is, for the room hub: never past what this join returns (or
            # the client has), never taken from the client's lastSeq alone. Read before the
            # page: whatever is stored after it is in the page.
            before = await self._head(key) if last_seq is not None else 0
            messages = await self._page(
                key,
                last_seq,
                recent=self.limits.history_page_size,
                after=self.limits.max_history_page_size,
            )
            newest = messages[-1].seq if messages else 0
            truncated = len(messages) >= self.limits.max_history_page_size
            head = newest if last_seq is None or truncated else max(newest, min(before, last_seq))
        except BaseException:
            if entered:  # the client was told its join failed: not a member
                await self._rooms.leave(connection_id, key.room)
            raise
        self._rooms.sync(key.room, head, connection_id)
        if streaming is not None and any(m.id == streaming.message_id for m in messages):
            streaming = None
        return Joined(consultation, messages, streaming)

    async def _remember(
        self, identity: Identity, consultation: Consultation, context: PageContext | None
    ) -> Consultation:
        """Keep the owner's name and latest page context on the consultation (written only
        when they changed: not a write per message). Staff do not speak for the customer."""
        changes: dict[str, object] = {}
        if context is not None and context != consultation.context and not identity.is_staff:
            changes["context"] = context
        owner = identity.user_id == consultation.owner_id
        if owner and identity.name and identity.name != consultation.owner_name:
            changes["owner_name"] = identity.name
        if not changes:
            return consultation
        updated = await self._store.update(consultation.key, changes)
        return updated or consultation

    async def _head(self, key: ConsultationKey) -> int:
        newest = await self._store.recent(key, 1)
        return newest[-1].seq if newest else 0

    async def leave(self, connection_id: str, key: ConsultationKey) -> None:
        await self._rooms.leave(connection_id, key.room)

    async def history(
        self, identity: Identity, consultation_id: str, after_seq: int | None, limit: int | None
    ) -> list[Message]:
        key = ConsultationKey(identity.tenant_id, consultation_id)
        consultation = await self._store.get(key)
        if consultation is None:
            raise NotFound("No such consultation")
        if not can_access(identity, consultation, open_access=self._open_access):
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
        *,
        context: PageContext | None = None,
    ) -> Message:
        self._check_content(content)
        self._moderation.check(content)
        current = await self._store.get(consultation.key) or consultation
        if not can_access(identity, current, open_access=self._open_access):
            raise Forbidden()  # it changed hands since the join (a visitor who signed in)
        current = await self._remember(identity, current, context)
        if current.mode is Mode.CLOSED:
            raise ConsultationClosed()
        rate = await self._rate_limiter.hit(identity)
        # Operators and admins write as the support side of the dialogue.
        staff = identity.is_staff and identity.user_id != current.owner_id
        message = Message.new(
            consultation.key,
            Author.OPERATOR if staff else Author.USER,
            content,
            user_id=identity.user_id,
            author_name=identity.display_name if staff else None,
            client_message_id=client_message_id,
        )
        if origin is not None:
            # Once stored, a gap fill may read it before its broadcast below: not to the sender.
            self._rooms.sending(origin, message.id)
        appended = await self._store.append(message)
        if appended.created:
            self.stored_total += 1
            self._metrics.message_stored(appended.message.role.value)
            # Stored first, broadcast second: a message that failed to store is never
            # broadcast. A retried clientMessageId returns the original, broadcast once and
            # answered once.
            await self._rooms.to_room(
                consultation.key.room, UserMessage(message=appended.message), skip=origin
            )
            if not staff and current.mode in (Mode.AI, Mode.WAITING):
                self._replies.request(consultation.key)
        warning = self._rate_limiter.warning(rate)
        if warning is not None and origin is not None:
            await self._rooms.to_connection(origin, warning)
        return appended.message

    async def stop(self, consultation: Consultation) -> bool:
        return await self._replies.stop(consultation.key)

    async def rate(
        self, identity: Identity, consultation: Consultation, score: int, comment: str | None
    ) -> Consultation:
        """The owner's score (1-5): changeable, the last one counts."""
        if consultation.owner_id != identity.user_id and not self._open_access:
            raise Forbidden("Only the consultation's owner may rate it")
        rating = Rating(score=score, comment=comment, rated_at=utcnow())
        updated = await self._store.update(consultation.key, {"rating": rating})
        if updated is None:
            raise NotFound("No such consultation")
        self._metrics.rated(score)
        return updated

    async def stats(
        self, identity: Identity, since: datetime | None, until: datetime | None
    ) -> Stats:
        """The caller's tenant's figures; for operators and admins."""
        if not identity.is_staff:
            raise Forbidden("The stats are for operators and admins")
        if since is not None and until is not None and since >= until:
            raise InvalidPayload("from must be before to", field="from")
        return await self._store.stats(identity.tenant_id, since, until)

    def _check_content(self, content: str) -> None:
        if not content.strip():
            raise InvalidPayload("content must not be empty", field="content")
        if len(content) > self.limits.max_message_chars:
            raise InvalidPayload(
                f"content is longer than {self.limits.max_message_chars} characters",
                field="content",
            )


class StoredHistory:
    """A consultation room's stored messages, as the events that broadcast them: what the
    room hub reads when some never arrived (its ``History`` port)."""

    def __init__(self, store: Store, page_size: int = Limits.max_history_page_size) -> None:
        self._store = store
        self._page_size = page_size

    async def missed(self, room: str, after_seq: int) -> list[ServerEvent]:
        key = ConsultationKey.from_room(room)
        if key is None:
            return []
        messages = await self._store.after(key, after_seq, self._page_size)
        return [message_event(m) for m in messages]

    async def head(self, room: str) -> int:
        key = ConsultationKey.from_room(room)
        if key is None:
            return 0
        newest = await self._store.recent(key, 1)
        return newest[-1].seq if newest else 0
