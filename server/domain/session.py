"""One connection's view of the chat, whatever its transport: who it is, what it has joined,
and one method per client event of the catalogue. ``dispatch`` is the single entry point both
transports call: parse with the catalogue's schema, run the handler, answer an ack."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import AppError, InternalError, NotJoined, UnknownEvent
from .events import (
    CATALOGUE,
    ErrorAck,
    ErrorEvent,
    JoinAck,
    JoinConsultation,
    LeaveAck,
    LeaveConsultation,
    RefreshAck,
    RefreshToken,
    SendAck,
    SendMessage,
    StopAck,
    StopGeneration,
    StreamingPartial,
)
from .models import Consultation, Identity, iso

if TYPE_CHECKING:
    from .connections import ConnectionService
    from .consultations import ConsultationService

log = logging.getLogger(__name__)


@dataclass
class ChatSession:
    identity: Identity
    connection_id: str
    consultations: ConsultationService
    connections: ConnectionService
    joined: dict[str, Consultation] = field(default_factory=dict)

    # -- client events (names in the catalogue's ``handler``) ----------------------------------

    async def join(self, command: JoinConsultation) -> JoinAck:
        joined = await self.consultations.join(
            self.identity, self.connection_id, command.consultationId, command.lastSeq
        )
        self.joined[command.consultationId] = joined.consultation
        streaming = joined.streaming
        return JoinAck(
            consultation=joined.consultation.to_wire(),
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
        )

    async def send(self, command: SendMessage) -> SendAck:
        message = await self.consultations.send(
            self.identity,
            self._joined(command.consultationId),
            command.content,
            command.clientMessageId,
            self.connection_id,
        )
        return SendAck(message=message)

    async def leave(self, command: LeaveConsultation) -> LeaveAck:
        consultation = self.joined.pop(command.consultationId, None)
        if consultation is not None:
            await self.consultations.leave(self.connection_id, consultation.key)
        return LeaveAck(left=consultation is not None)

    async def stop(self, command: StopGeneration) -> StopAck:
        """Stop the reply streaming in a joined consultation; True when one was running."""
        return StopAck(stopping=await self.consultations.stop(self._joined(command.consultationId)))

    async def refresh(self, command: RefreshToken) -> RefreshAck:
        identity = await self.connections.refresh(self, command.token)
        self.identity = identity
        expires_at = identity.expires_at
        return RefreshAck(expires_at=iso(expires_at) if expires_at else None)

    def _joined(self, consultation_id: str) -> Consultation:
        consultation = self.joined.get(consultation_id)
        if consultation is None:
            raise NotJoined()
        return consultation

    # -- the one entry point of every transport -------------------------------------------------

    async def dispatch(self, event: str, data: Any) -> dict[str, Any]:
        """Run one client event; always answers an ack (``ok: false`` with the error, which is
        also sent to this connection as an ``error`` event)."""
        try:
            entry = CATALOGUE.client_event(event)
            if entry is None:
                raise UnknownEvent(f"Unknown event {event[:64]!r}")
            payload = entry.payload.parse(data)
            ack = await getattr(self, entry.handler)(payload)
            return dict(ack.to_wire())
        except AppError as exc:
            error = exc
        except Exception:
            log.exception("unexpected error in %s", event[:64])
            error = InternalError()
        await self.fail(error)
        return ErrorAck(error=error.to_wire()).to_wire()

    async def fail(self, error: AppError) -> None:
        """Tell this connection about an error (frontends listen for ``error``)."""
        try:
            await self.connections.rooms.to_connection(
                self.connection_id, ErrorEvent.model_validate(error.to_wire())
            )
        except Exception:  # the connection may be gone; the ack still answers
            log.debug("could not send an error to %s", self.connection_id, exc_info=True)
