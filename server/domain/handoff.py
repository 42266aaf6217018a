"""Live operator handoff: ``ai`` → ``waiting`` → ``operator`` → ``ai`` again, or ``closed``.

Every change is a conditional update of the consultation in the store, so it holds with any
number of instances and while Redis is down: of two operators accepting at once, the database
lets exactly one win. Each change is recorded in the message log as a ``system`` message (with
its seq, so history and ``lastSeq`` recovery show it) and broadcast as ``consultationUpdated``.

The queue is the store's waiting consultations of a tenant (requeued ones first, then the
longest waiting). Operators and admins are in their tenant's operators room and get a snapshot
whenever it changes; owners are told their place in it.

A sweeper on every instance returns consultations nobody answered within
``OPERATOR_WAIT_TIMEOUT_SECONDS`` to the assistant, and those whose operator has had no
connection for ``OPERATOR_GRACE_SECONDS`` to the front of the queue; its actions are
conditional updates too, so with several instances each happens once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

from ..errors import (
    AlreadyAssigned,
    AppError,
    ConsultationClosed,
    Forbidden,
    InvalidState,
    NotFound,
    OperatorAtCapacity,
)
from .consultations import ConsultationService, Joined
from .events import (
    ConsultationUpdated,
    NewSupportRequest,
    Operator,
    OperatorJoined,
    OperatorQueue,
    QueueItem,
    SupportPending,
    SystemMessage,
)
from .models import (
    Author,
    Consultation,
    ConsultationKey,
    Identity,
    Message,
    Mode,
    OperatorRef,
    Role,
    iso,
    operators_room,
    utcnow,
)
from .policies import user_name
from .ports import (
    ChatStore,
    ConnectionRegistry,
    HandoffMetrics,
    NoMetrics,
    OneOf,
    ReplyLocks,
    Rooms,
)
from .replies import ReplyService

log = logging.getLogger(__name__)

PREVIEW_CHARS = 140


@dataclass(frozen=True)
class HandoffSettings:
    max_active: int = 5  # consultations one operator holds at once
    wait_timeout_seconds: float = 300.0  # waiting longer: back to the assistant
    grace_seconds: float = 60.0  # an operator without a connection this long: requeued
    open_access: bool = False  # dev auth: any guest may ask for, or close, any consultation


PREVIEW_CHARS = 140
PREVIEW_SCAN = 10  # the first messages read for a preview (a note may precede the question)
PREVIEWS_KEPT = 10_000


class HandoffService:
    def __init__(
        self,
        store: ChatStore,
        consultations: ConsultationService,
        replies: ReplyService,
        rooms: Rooms,
        coordination: tuple[ConnectionRegistry, ReplyLocks],
        *,
        settings: HandoffSettings,
        metrics: HandoffMetrics | None = None,
    ) -> None:
        self._metrics = metrics or NoMetrics()
        self._store = store
        self._previews: dict[str, str] = {}  # room -> the first question
        self._consultations = consultations
        self._replies = replies
        self._rooms = rooms
        self._registry, self._locks = coordination
        self.settings = settings
        self._sweeper: asyncio.Task[None] | None = None

    # -- the owner asks --------------------------------------------------------------------------

    async def request(
        self, identity: Identity, consultation: Consultation, reason: str | None
    ) -> tuple[Consultation, int]:
        """Put the consultation in the queue; returns it and its place (1 = next)."""
        if consultation.owner_id != identity.user_id and not self.settings.open_access:
            raise Forbidden("Only the consultation's owner may ask for an operator")
        key = consultation.key
        updated = None
        for _ in range(3):  # another change in between (a rating): read again, retry
            current = await self._current(key)
            if current.mode is not Mode.AI:
                break
            changes = {"mode": Mode.WAITING, "waiting_since": utcnow(), "reason": reason}
            updated = await self._store.update(
                key,
                {**changes, "requeued": False, "handoffs": current.handoffs + 1},
                expect={"mode": Mode.AI, "handoffs": current.handoffs},
            )
            if updated is not None:
                break
        if updated is None:
            current = await self._current(key)
            if current.mode is Mode.WAITING:  # asked twice: the same place
                return current, await self._position(current)
            raise _refused(current, "An operator already holds this consultation")
        self._metrics.handoff("requested")
        await self._record(
            updated, "operator_requested", "You asked for a human operator. One will join shortly."
        )
        position = await self._position(updated)
        await self._announce(updated, position)
        await self._ask_operators(updated)
        await self.publish_queue(key.tenant_id)
        return updated, position

    # -- an operator takes it over ---------------------------------------------------------------

    async def accept(self, identity: Identity, connection_id: str, consultation_id: str) -> Joined:
        """Assign the consultation to this operator: exactly one of concurrent accepts wins,
        decided by the database. The assistant's reply in flight ends (what the room saw is
        kept, as stopped) before the room hears that the operator joined."""
        _staff_only(identity)
        key = ConsultationKey(identity.tenant_id, consultation_id)
        if await self._store.get(key) is None:
            raise NotFound("No such consultation")
        operator = OperatorRef(id=identity.user_id, name=identity.display_name)
        async with self._capacity(identity):
            held = await self._store.find(
                key.tenant_id, mode=Mode.OPERATOR, operator_id=operator.id
            )
            if len(held) >= self.settings.max_active:
                raise OperatorAtCapacity(
                    f"You already hold {len(held)} consultations (at most "
                    f"{self.settings.max_active}): release or close one first"
                )
            updated = await self._store.update(
                key,
                {"mode": Mode.OPERATOR, "operator": operator, "requeued": False},
                expect={"mode": OneOf([Mode.WAITING, Mode.AI])},
            )
        if updated is None:
            current = await self._current(key)
            if current.mode is Mode.OPERATOR and current.operator == operator:
                updated = current  # accepted twice by the same operator: a rejoin
            else:
                raise _refused(current, "Another operator has already taken this consultation")
        else:
            self._metrics.handoff("accepted")
            if updated.waiting_since is not None:
                self._metrics.queue_waited((utcnow() - updated.waiting_since).total_seconds())
            await self._replies.cut(key)
            await self._record(
                updated,
                "operator_joined",
                f"{operator.name} (support) joined the consultation.",
                operator,
            )
            await self._announce(updated, None)
            await self._rooms.to_room(
                key.room,
                OperatorJoined(
                    consultation_id=key.consultation_id,
                    operator=Operator(id=operator.id, name=operator.name),
                ),
            )
            await self.publish_queue(key.tenant_id)
        log.info("consultation %s accepted by %s", key.room, operator.id)
        return await self._consultations.join(identity, connection_id, consultation_id, None)

    async def release(self, identity: Identity, consultation: Consultation) -> Consultation:
        """Hand the consultation back to the assistant: its assigned operator, or an admin."""
        _staff_only(identity)
        key = consultation.key
        expect: dict[str, object] = {"mode": Mode.OPERATOR}
        if identity.role is not Role.ADMIN:
            expect["operator.id"] = identity.user_id
        updated = await self._store.update(
            key, {"mode": Mode.AI, "operator": None, "waiting_since": None}, expect=expect
        )
        if updated is None:
            current = await self._current(key)
            if current.mode is Mode.OPERATOR:
                raise Forbidden("Only the assigned operator (or an admin) may release it")
            raise _refused(current, "No operator holds this consultation")
        self._metrics.handoff("released")
        await self._record(
            updated,
            "released",
            "The support operator handed the conversation back to the assistant.",
        )
        await self._announce(updated, None)
        return updated

    async def close(self, identity: Identity, consultation: Consultation) -> Consultation:
        """Close it for good: the owner, the assigned operator, or an admin."""
        key = consultation.key
        current = await self._current(key)
        allowed = (
            self.settings.open_access
            or identity.role is Role.ADMIN
            or current.owner_id == identity.user_id
            or (current.operator is not None and current.operator.id == identity.user_id)
        )
        if not allowed:
            raise Forbidden("Only the owner, the assigned operator or an admin may close it")
        updated = await self._store.update(
            key,
            {"mode": Mode.CLOSED, "waiting_since": None, "requeued": False},
            expect={"mode": OneOf([Mode.AI, Mode.WAITING, Mode.OPERATOR])},
        )
        if updated is None:
            return await self._current(key)  # closed already: closing again is harmless
        self._metrics.handoff("closed")
        await self._replies.cut(key)
        await self._record(updated, "closed", "The consultation was closed.")
        await self._announce(updated, None)
        if current.mode is Mode.WAITING:
            await self.publish_queue(key.tenant_id)
        return updated

    # -- the queue -------------------------------------------------------------------------------

    async def queue(self, identity: Identity) -> list[QueueItem]:
        _staff_only(identity)
        return await self._items(identity.tenant_id)

    async def listing(self, identity: Identity, mode: Mode | None) -> list[Consultation]:
        """The tenant's consultations (in one mode), for operators' and admins' dashboards."""
        _staff_only(identity)
        return await self._store.find(identity.tenant_id, mode=mode)

    async def publish_queue(self, tenant_id: str) -> None:
        """Tell the tenant's operators the queue, and each waiting owner their place."""
        items = await self._items(tenant_id)
        self._metrics.queue_length(tenant_id, len(items))
        await self._rooms.to_room(operators_room(tenant_id), OperatorQueue(items=items))
        for item in items:
            owner = Identity(item.user_id, tenant_id)
            await self._rooms.to_room(
                owner.user_room,
                SupportPending(consultation_id=item.consultation_id, queue_position=item.position),
            )

    async def send_queue_to(self, connection_id: str, tenant_id: str) -> None:
        """A new operator connection: the queue as it is now."""
        await self._rooms.to_connection(
            connection_id, OperatorQueue(items=await self._items(tenant_id))
        )

    async def _items(self, tenant_id: str) -> list[QueueItem]:
        waiting = await self._store.find(tenant_id, mode=Mode.WAITING)
        return [
            QueueItem(
                consultation_id=c.consultation_id,
                user_id=c.owner_id,
                user_name=c.owner_name,
                user_role=c.owner_role.value,
                reason=c.reason,
                preview=await self._first_question(c),
                page=c.context.page.to_wire() if c.context and c.context.page else None,
                waiting_since=iso(c.waiting_since or c.created_at),
                position=n,
            )
            for n, c in enumerate(waiting, start=1)
        ]

    async def _first_question(self, consultation: Consultation) -> str | None:
        """What the person asked first, for the queue's preview (it never changes: kept)."""
        key = consultation.key.room
        if key in self._previews:
            return self._previews[key]
        first = next(
            (
                m.content
                for m in await self._store.after(consultation.key, 0, PREVIEW_SCAN)
                if m.role is Author.USER
            ),
            None,
        )
        preview = (
            first
            if first is None or len(first) <= PREVIEW_CHARS
            else (first[: PREVIEW_CHARS - 1] + "…")
        )
        if preview is not None:
            if len(self._previews) >= PREVIEWS_KEPT:
                self._previews.pop(next(iter(self._previews)))
            self._previews[key] = preview
        return preview

    async def _position(self, consultation: Consultation) -> int:
        waiting = await self._store.find(consultation.tenant_id, mode=Mode.WAITING)
        ids = [c.consultation_id for c in waiting]
        return ids.index(consultation.consultation_id) + 1 if consultation.id in ids else len(ids)

    # -- the sweeper -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="handoff-sweeper")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def _sweep_forever(self) -> None:
        settings = self.settings
        interval = max(0.2, min(5.0, settings.wait_timeout_seconds / 4, settings.grace_seconds / 4))
        while True:
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))
            try:
                await self.sweep()
            except AppError as exc:
                log.warning("handoff sweep skipped: %s", exc.message)
            except Exception:
                log.exception("handoff sweep failed")

    async def sweep(self) -> None:
        """Return unanswered requests to the assistant; requeue vanished operators' ones."""
        now = utcnow()
        timeout = timedelta(seconds=self.settings.wait_timeout_seconds)
        for waiting in await self._store.find(None, mode=Mode.WAITING):
            since = waiting.waiting_since or waiting.created_at
            if now - since < timeout:
                continue
            updated = await self._store.update(
                waiting.key,
                {"mode": Mode.AI, "waiting_since": None, "requeued": False},
                expect={"mode": Mode.WAITING, "waiting_since": waiting.waiting_since},
            )
            if updated is not None:
                self._metrics.handoff("timed_out")
                await self._record(
                    updated,
                    "timed_out",
                    "No operator is available right now. The assistant will keep helping you; "
                    "you may ask for a human again later.",
                )
                await self._announce(updated, None)
                await self.publish_queue(updated.tenant_id)
        for held in await self._store.find(None, mode=Mode.OPERATOR):
            if held.operator is not None:
                await self._requeue_if_vanished(held, held.operator)

    async def _requeue_if_vanished(self, held: Consultation, operator: OperatorRef) -> None:
        absent = await self._registry.absent_since(user_name(Identity(operator.id, held.tenant_id)))
        if absent is None or time.time() - absent < self.settings.grace_seconds:
            return
        updated = await self._store.update(
            held.key,
            {
                "mode": Mode.WAITING,
                "operator": None,
                "requeued": True,
                "waiting_since": held.waiting_since or utcnow(),
            },
            expect={"mode": Mode.OPERATOR, "operator.id": operator.id},
        )
        if updated is None:
            return
        log.info("%s requeued: operator %s has been gone for a while", held.key.room, operator.id)
        self._metrics.handoff("requeued")
        await self._record(
            updated,
            "requeued",
            f"{operator.name} (support) was disconnected. You are back at the front of the "
            "queue; another operator will join shortly.",
            operator,
        )
        position = await self._position(updated)
        await self._announce(updated, position)
        await self._ask_operators(updated)
        await self.publish_queue(held.tenant_id)

    # -- shared steps ----------------------------------------------------------------------------

    async def _current(self, key: ConsultationKey) -> Consultation:
        current = await self._store.get(key)
        if current is None:
            raise NotFound("No such consultation")
        return current

    async def _record(
        self,
        consultation: Consultation,
        note: str,
        text: str,
        operator: OperatorRef | None = None,
    ) -> None:
        """The change, in the message log (with its seq) and to the room: ``note`` says what
        happened (clients phrase it for their reader), ``text`` is the customer's wording,
        ``operator`` the one it names (``userId``, ``authorName``)."""
        message = Message.new(
            consultation.key,
            Author.SYSTEM,
            text,
            note=note,
            user_id=operator.id if operator else None,
            author_name=operator.name if operator else None,
        )
        appended = await self._store.append(message)
        self._metrics.message_stored(Author.SYSTEM.value)
        await self._rooms.to_room(consultation.key.room, SystemMessage(message=appended.message))

    async def _ask_operators(self, waiting: Consultation) -> None:
        """Tell the tenant's operators that this consultation waits for one of them."""
        await self._rooms.to_room(
            operators_room(waiting.tenant_id),
            NewSupportRequest(
                consultation_id=waiting.consultation_id,
                user_id=waiting.owner_id,
                reason=waiting.reason,
                waiting_since=iso(waiting.waiting_since or waiting.created_at),
                preview=await self._preview(waiting.key),
            ),
        )

    async def _announce(self, consultation: Consultation, position: int | None) -> None:
        operator = consultation.operator
        await self._rooms.to_room(
            consultation.key.room,
            ConsultationUpdated(
                consultation_id=consultation.consultation_id,
                mode=consultation.mode,
                operator=Operator(id=operator.id, name=operator.name) if operator else None,
                queue_position=position,
            ),
        )

    async def _preview(self, key: ConsultationKey) -> str:
        recent = await self._store.recent(key, 10)
        last = next((m.content for m in reversed(recent) if m.role is Author.USER), "")
        return last if len(last) <= PREVIEW_CHARS else last[: PREVIEW_CHARS - 1] + "…"

    @contextlib.asynccontextmanager
    async def _capacity(self, identity: Identity) -> AsyncIterator[None]:
        """One accept at a time per operator (best effort across instances), so that two at
        once cannot both pass the capacity check."""
        lock = None
        for _ in range(40):
            lock = await self._locks.try_lock(f"accept:{user_name(identity)}", 10)
            if lock is not None:
                break
            await asyncio.sleep(0.05)
        try:
            yield
        finally:
            if lock is not None:
                await lock.release()


def _staff_only(identity: Identity) -> None:
    if not identity.is_staff:
        raise Forbidden("Only operators and admins may do this")


def _refused(current: Consultation, assigned_message: str) -> AppError:
    if current.mode is Mode.CLOSED:
        return ConsultationClosed()
    if current.mode is Mode.OPERATOR:
        return AlreadyAssigned(assigned_message)
    return InvalidState(f"The consultation is in mode {current.mode.value}")
