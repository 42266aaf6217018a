"""One connection's view of the chat, whatever its transport: who it is, what it has joined,
and one method per client event of the catalogue. ``dispatch`` is the single entry point both
transports call: parse with the catalogue's schema, run the handler, answer an ack."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import AppError, InternalError, NotJoined, UnknownEvent
from .events import (
    CATALOGUE,
    AcceptConsultation,
    CannedRepliesAck,
    CloseConsultation,
    ConsultationAck,
    ErrorAck,
    ErrorEvent,
    GetCannedReplies,
    GetOperatorQueue,
    JoinAck,
    JoinConsultation,
    LeaveAck,
    LeaveConsultation,
    Participant,
    QueueAck,
    RateConsultation,
    RefreshAck,
    RefreshToken,
    ReleaseConsultation,
    RequestOperator,
    SendAck,
    SendMessage,
    StopAck,
    StopGeneration,
    StreamingPartial,
    Typing,
    TypingAck,
)
from .models import Consultation, Identity, iso, valid_user_id
from .ports import EventMetrics, NoMetrics, Rooms
from .tenants import TenantService

if TYPE_CHECKING:
    from .consultations import ConsultationService, Joined
    from .handoff import HandoffService
    from .presence import PresenceService

log = logging.getLogger(__name__)

# Outcomes that are a policy refusing a message (counted as rejections too).
REJECTIONS = frozenset({"rate_limited", "content_rejected"})


class ConnectionControl(Protocol):
    """What a session asks of the connection policy (``connections.ConnectionService``, which
    builds sessions: this keeps the dependency one way)."""

    @property
    def rooms(self) -> Rooms: ...

    async def refresh(self, session: ChatSession, token: str) -> Identity:
        """Adopt a fresh token for the same user."""
        ...

    async def adopt(self, session: ChatSession, user_id: str) -> None:
        """Dev auth: the guest's payload names its user."""
        ...


@dataclass(frozen=True)
class Services:
    """What a session calls: one instance of each, shared by every connection."""

    consultations: ConsultationService
    handoff: HandoffService
    presence: PresenceService
    connections: ConnectionControl
    metrics: EventMetrics = field(default_factory=NoMetrics)
    log_content: bool = False  # LOG_CONTENT: message text in the logs (never tokens)
    tenants: TenantService | None = None


@dataclass
class ChatSession:
    identity: Identity
    connection_id: str
    services: Services
    joined: dict[str, Consultation] = field(default_factory=dict)

    # -- client events (names in the catalogue's ``handler``) ----------------------------------

    async def join(self, command: JoinConsultation) -> JoinAck:
        joined = await self.services.consultations.join(
            self.identity,
            self.connection_id,
            command.consultationId,
            command.lastSeq,
            context=command.context.stored() if command.context else None,
        )
        return await self._entered(joined)

    async def send(self, command: SendMessage) -> SendAck:
        message = await self.services.consultations.send(
            self.identity,
            self._joined(command.consultationId),
            command.content,
            command.clientMessageId,
            self.connection_id,
            context=command.context.stored() if command.context else None,
        )
        return SendAck(message=message)

    async def leave(self, command: LeaveConsultation) -> LeaveAck:
        consultation = self.joined.pop(command.consultationId, None)
        if consultation is not None:
            await self.services.presence.left(self.connection_id, consultation.key)
            await self.services.consultations.leave(self.connection_id, consultation.key)
        return LeaveAck(left=consultation is not None)

    async def stop(self, command: StopGeneration) -> StopAck:
        """Stop the reply streaming in a joined consultation; True when one was running."""
        consultation = self._joined(command.consultationId)
        return StopAck(stopping=await self.services.consultations.stop(consultation))

    async def refresh(self, command: RefreshToken) -> RefreshAck:
        identity = await self.services.connections.refresh(self, command.token)
        self.identity = identity
        expires_at = identity.expires_at
        return RefreshAck(expires_at=iso(expires_at) if expires_at else None)

    async def request_operator(self, command: RequestOperator) -> ConsultationAck:
        consultation, position = await self.services.handoff.request(
            self.identity, self._joined(command.consultationId), command.reason
        )
        return ConsultationAck(consultation=consultation.to_wire(), queue_position=position)

    async def accept(self, command: AcceptConsultation) -> JoinAck:
        joined = await self.services.handoff.accept(
            self.identity, self.connection_id, command.consultationId
        )
        return await self._entered(joined)

    async def release(self, command: ReleaseConsultation) -> ConsultationAck:
        consultation = await self.services.handoff.release(
            self.identity, self._joined(command.consultationId)
        )
        return ConsultationAck(consultation=consultation.to_wire())

    async def close(self, command: CloseConsultation) -> ConsultationAck:
        consultation = await self.services.handoff.close(
            self.identity, self._joined(command.consultationId)
        )
        return ConsultationAck(consultation=consultation.to_wire())

    async def canned_replies(self, command: GetCannedReplies) -> CannedRepliesAck:
        if self.services.tenants is None:
            return CannedRepliesAck(replies=[])
        settings = await self.services.tenants.for_staff(self.identity)
        return CannedRepliesAck(replies=settings.canned_replies)

    async def operator_queue(self, command: GetOperatorQueue) -> QueueAck:
        return QueueAck(items=await self.services.handoff.queue(self.identity))

    async def rate(self, command: RateConsultation) -> ConsultationAck:
        consultation = await self.services.consultations.rate(
            self.identity, self._joined(command.consultationId), command.score, command.comment
        )
        return ConsultationAck(consultation=consultation.to_wire())

    async def typing(self, command: Typing) -> TypingAck:
        consultation = self._joined(command.consultationId)
        await self.services.presence.typing(
            self.identity, self.connection_id, consultation.key, command.isTyping
        )
        return TypingAck()

    # -- helpers ---------------------------------------------------------------------------------

    async def _entered(self, joined: Joined) -> JoinAck:
        """A join (or an accept) went through: remember it, and who else is there."""
        consultation = joined.consultation
        self.joined[consultation.consultation_id] = consultation
        online: list[Participant] = await self.services.presence.entered(
            self.identity, self.connection_id, consultation.key
        )
        streaming = joined.streaming
        greeting = None
        if not joined.messages and self.services.tenants is not None:
            greeting = (await self.services.tenants.settings(self.identity.tenant_id)).greeting
        return JoinAck(
            greeting=greeting,
            consultation=consultation.to_wire(),
            messages=joined.messages,
            streaming=(
                StreamingPartial(
                    message_id=streaming.message_id,
                    content=streaming.content,
                    index=streaming.index,
                )
                if streaming is not None
                else None
            ),
            online=online,
        )

    def _joined(self, consultation_id: str) -> Consultation:
        consultation = self.joined.get(consultation_id)
        if consultation is None:
            raise NotJoined()
        return consultation

    # -- the one entry point of every transport -------------------------------------------------

    async def dispatch(self, event: str, data: Any) -> dict[str, Any]:
        """Run one client event; always answers an ack (``ok: false`` with the error, which is
        also sent to this connection as an ``error`` event)."""
        started = time.perf_counter()
        entry = CATALOGUE.client_event(event)
        try:
            if entry is None:
                raise UnknownEvent(f"Unknown event {event[:64]!r}")
            if self.identity.guest and isinstance(data, dict) and valid_user_id(data.get("userId")):
                await self.services.connections.adopt(self, str(data["userId"]))
            payload = entry.payload.parse(data)
            ack = await getattr(self, entry.handler)(payload)
            self._handled(entry.name, "ok", started, data)
            return dict(ack.to_wire())
        except AppError as exc:
            error = exc
        except Exception:
            log.exception("unexpected error in %s", event[:64])
            error = InternalError()
        self._handled(entry.name if entry else "unknown", error.code, started, data)
        await self.fail(error)
        return ErrorAck(error=error.to_wire()).to_wire()

    def _handled(self, event: str, outcome: str, started: float, data: Any) -> None:
        """One metric and one log line per client event and outcome."""
        metrics = self.services.metrics
        metrics.event_handled(event, outcome)
        if outcome in REJECTIONS:
            metrics.rejected(outcome)
        if not log.isEnabledFor(logging.INFO):
            return
        fields: dict[str, Any] = {
            "event": event,
            "outcome": outcome,
            "ms": round((time.perf_counter() - started) * 1000, 2),
            "connectionId": self.connection_id,
            "userId": self.identity.user_id,
            "tenant": self.identity.tenant_id,
        }
        if isinstance(data, dict):
            consultation_id = data.get("consultationId")
            if isinstance(consultation_id, str):
                fields["consultationId"] = consultation_id[:128]
            if self.services.log_content and isinstance(data.get("content"), str):
                fields["content"] = data["content"]
        log.info("event %s: %s", event, outcome, extra={"fields": fields})

    async def fail(self, error: AppError) -> None:
        """Tell this connection about an error (frontends listen for ``error``)."""
        try:
            await self.services.connections.rooms.to_connection(
                self.connection_id, ErrorEvent.model_validate(error.to_wire())
            )
        except Exception:  # the connection may be gone; the ack still answers
            log.debug("could not send an error to %s", self.connection_id, exc_info=True)
