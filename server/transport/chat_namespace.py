"""Namespace ``/chat``: each handler parses its payload, calls the domain, returns the ack."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import socketio

from ..domain.consultations import ChatSession, ConsultationService
from ..domain.models import ConsultationKey
from ..errors import AppError, UnknownEvent
from .acks import Ack, acknowledged, failed, ok
from .auth import Authenticator, token_from_handshake
from .net import Network, handshake_address
from .schemas import JoinConsultation, LeaveConsultation, SendMessage

log = logging.getLogger(__name__)

NAMESPACE = "/chat"
CLIENT_EVENTS = frozenset({"joinConsultation", "sendMessage", "leaveConsultation"})


class ChatNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    def __init__(
        self,
        service: ConsultationService,
        authenticator: Authenticator,
        trusted_proxies: Sequence[Network] = (),
    ) -> None:
        super().__init__(NAMESPACE)
        self._service = service
        self._auth = authenticator
        self._proxies = tuple(trusted_proxies)
        self._sessions: dict[str, ChatSession] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        try:
            identity = self._auth.identify(token_from_handshake(environ, auth))
        except AppError as exc:
            # Two arguments: socket.io-client then sees err.message and err.data.code.
            raise socketio.exceptions.ConnectionRefusedError(exc.code, exc.to_wire()) from None
        self._sessions[sid] = ChatSession(identity, self._service, origin=sid)
        log.info(
            "connected %s as %s/%s from %s",
            sid,
            identity.tenant_id,
            identity.user_id,
            handshake_address(environ, self._proxies),
        )

    async def on_disconnect(self, sid: str, reason: str | None = None) -> None:
        self._sessions.pop(sid, None)

    async def trigger_event(self, event: Any, *args: Any) -> Any:
        if event in CLIENT_EVENTS or self._is_lifecycle(event, args):
            return await super().trigger_event(event, *args)
        # Unknown events, and reserved names sent as events by a client, get an error ack
        # instead of silence (or, for "connect", a second handshake).
        sid = args[0]
        error = UnknownEvent(f"Unknown event {str(event)[:64]!r}")
        await self.emit_error(sid, error.to_wire())
        return failed(error)

    def _is_lifecycle(self, event: Any, args: tuple[Any, ...]) -> bool:
        sid = args[0] if args else None
        if event == "connect":
            return sid not in self._sessions
        if event == "disconnect":
            # During a real disconnect python-socketio has already marked the sid as leaving.
            return not self.server.manager.is_connected(sid, NAMESPACE)
        return False

    # -- client events ---------------------------------------------------------------------

    @acknowledged
    async def on_joinConsultation(self, sid: str, session: ChatSession, data: Any) -> Ack:
        command = JoinConsultation.parse(data)

        async def enter(key: ConsultationKey) -> None:
            await self.enter_room(sid, key.room)

        joined = await session.join(command.consultationId, command.lastSeq, enter)
        ack = ok(
            consultation=joined.consultation.to_wire(),
            messages=[m.to_wire() for m in joined.messages],
        )
        if joined.streaming is not None:
            ack["streaming"] = {
                "messageId": joined.streaming.message_id,
                "content": joined.streaming.content,
                "index": joined.streaming.index,
            }
        return ack

    @acknowledged
    async def on_sendMessage(self, sid: str, session: ChatSession, data: Any) -> Ack:
        command = SendMessage.parse(data)
        message = await session.send(
            command.consultationId, command.content, command.clientMessageId
        )
        return ok(message=message.to_wire())

    @acknowledged
    async def on_leaveConsultation(self, sid: str, session: ChatSession, data: Any) -> Ack:
        command = LeaveConsultation.parse(data)
        key = session.leave(command.consultationId)
        if key is not None:
            await self.leave_room(sid, key.room)
        return ok(left=key is not None)

    # -- helpers used by the ack decorator -------------------------------------------------

    def session_of(self, sid: str) -> ChatSession | None:
        return self._sessions.get(sid)

    async def emit_error(self, sid: str, error: dict[str, Any]) -> None:
        try:
            await self.emit("error", error, to=sid)
        except Exception:  # the socket may be gone; the ack still answers
            log.debug("could not emit error to %s", sid, exc_info=True)

    @property
    def connection_count(self) -> int:
        return len(self._sessions)
