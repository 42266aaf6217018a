"""Namespace ``/chat``: each handler parses its payload, calls the domain, returns the ack."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import socketio

from ..domain.consultations import ChatSession, ConsultationService
from ..domain.models import ConsultationKey, Identity, iso
from ..domain.policies import Admission
from ..errors import AppError, TokenExpired, UnknownEvent
from .acks import Ack, acknowledged, failed, ok
from .auth import Authenticator, token_from_handshake
from .net import Network, handshake_address
from .schemas import (
    JoinConsultation,
    LeaveConsultation,
    RefreshToken,
    SendMessage,
    StopGeneration,
)

log = logging.getLogger(__name__)

NAMESPACE = "/chat"
CLIENT_EVENTS = frozenset(
    {"joinConsultation", "sendMessage", "leaveConsultation", "stopGeneration", "refreshToken"}
)


class ChatNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    def __init__(
        self,
        service: ConsultationService,
        authenticator: Authenticator,
        admission: Admission,
        trusted_proxies: Sequence[Network] = (),
    ) -> None:
        super().__init__(NAMESPACE)
        self._service = service
        self._auth = authenticator
        self._admission = admission
        self._proxies = tuple(trusted_proxies)
        self._sessions: dict[str, ChatSession] = {}
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        try:
            identity = self._auth.identify(token_from_handshake(environ, auth))
            await self._admission.admit(identity, sid, len(self._sessions))
        except AppError as exc:
            # Two arguments: socket.io-client then sees err.message and err.data.code.
            raise socketio.exceptions.ConnectionRefusedError(exc.code, exc.to_wire()) from None
        self._sessions[sid] = ChatSession(identity, self._service, origin=sid)
        self._schedule_expiry(sid, identity)
        log.info(
            "connected %s as %s/%s from %s",
            sid,
            identity.tenant_id,
            identity.user_id,
            handshake_address(environ, self._proxies),
        )

    async def on_disconnect(self, sid: str, reason: str | None = None) -> None:
        session = self._sessions.pop(sid, None)
        timer = self._expiry.pop(sid, None)
        if timer is not None:
            timer.cancel()
        if session is not None:
            try:
                await self._admission.release(session.identity, sid)
            except AppError as exc:  # the presence entry expires by itself
                log.warning("could not release the connection of %s: %s", sid, exc.message)

    def _schedule_expiry(self, sid: str, identity: Identity) -> None:
        """Disconnect the socket when its token expires, unless refreshToken comes first."""
        previous = self._expiry.pop(sid, None)
        if previous is not None:
            previous.cancel()
        if identity.expires_at is None:
            return
        delay = max(0.0, identity.expires_at.timestamp() - time.time())
        self._expiry[sid] = asyncio.get_running_loop().call_later(delay, self._on_expiry, sid)

    def _on_expiry(self, sid: str) -> None:
        task = asyncio.ensure_future(self._expire(sid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _expire(self, sid: str) -> None:
        self._expiry.pop(sid, None)
        if sid in self._sessions:
            await self.emit_error(sid, TokenExpired().to_wire())
            await self.disconnect(sid)

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

    @acknowledged
    async def on_stopGeneration(self, sid: str, session: ChatSession, data: Any) -> Ack:
        command = StopGeneration.parse(data)
        return ok(stopping=await session.stop(command.consultationId))

    @acknowledged
    async def on_refreshToken(self, sid: str, session: ChatSession, data: Any) -> Ack:
        command = RefreshToken.parse(data)
        identity = self._auth.identify(command.token)
        session.refresh(identity)
        self._schedule_expiry(sid, identity)
        expires_at = identity.expires_at
        return ok(expiresAt=iso(expires_at) if expires_at else None)

    def presence(self) -> list[tuple[Identity, str]]:
        """Every live connection of this instance, to keep their presence entries alive."""
        return [(session.identity, sid) for sid, session in self._sessions.items()]

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
