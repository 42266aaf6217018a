"""Connection policy, shared by every transport: who may connect (identity, per-instance and
per-user limits), token expiry and refresh, the rooms every connection is in (its user's; an
operator's tenant's operators room), and keeping the per-user registry alive."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from enum import StrEnum
from typing import Any

from ..errors import AppError, Forbidden, TokenExpired
from .events import ErrorEvent
from .models import Identity, operators_room
from .policies import Admission
from .ports import Rooms, TokenVerifier
from .session import ChatSession, Services

log = logging.getLogger(__name__)


class CloseReason(StrEnum):
    """Why the server closes a connection. Each transport maps it to its wire (README)."""

    TOKEN_EXPIRED = "token_expired"
    POLICY = "policy"  # kicked, banned, tenant disabled
    SLOW_CONSUMER = "slow_consumer"
    DRAINING = "draining"  # the instance shuts down

    @property
    def ends_session(self) -> bool:
        """True: the client must not reconnect as it is (Socket.IO: "io server disconnect").
        False: only the transport goes; the client reconnects and catches up with lastSeq."""
        return self in (CloseReason.TOKEN_EXPIRED, CloseReason.POLICY)


Close = Callable[[CloseReason], Awaitable[None]]


class ConnectionService:
    def __init__(self, verifier: TokenVerifier, admission: Admission, rooms: Rooms) -> None:
        self._verifier = verifier
        self._admission = admission
        self._services: Services | None = None
        self.rooms = rooms
        self._sessions: dict[str, ChatSession] = {}
        self._closers: dict[str, Close] = {}
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._keeper: asyncio.Task[None] | None = None
        self.opened_total = 0  # connections admitted since this instance started

    def bind(self, services: Services) -> None:
        """The services sessions call (they include this one)."""
        self._services = services

    @property
    def count(self) -> int:
        return len(self._sessions)

    def session(self, connection_id: str) -> ChatSession | None:
        return self._sessions.get(connection_id)

    async def open(
        self,
        token: str | None,
        connection_id: str,
        close: Close,
        *,
        dev: Mapping[str, Any] | None = None,
        transport: str = "socketio",
        address: str | None = None,
    ) -> ChatSession:
        """Admit a connection: raises :class:`Unauthorized` or :class:`TooManyConnections`.
        ``close`` is how the transport drops it, for a :class:`CloseReason`; ``dev`` is the
        identity the client chose, used in dev auth only; ``transport`` and ``address`` are for
        the log."""
        services = self._services
        assert services is not None, "ConnectionService.bind() was not called"
        try:
            identity = await self._verifier.identify(token, dev=dev)
            await self._admission.admit(identity, connection_id, len(self._sessions))
        except AppError as exc:
            services.metrics.rejected(exc.code)
            log.info(
                "connection refused: %s",
                exc.code,
                extra={
                    "fields": {
                        "connectionId": connection_id,
                        "outcome": exc.code,
                        "transport": transport,
                        "address": address,
                    }
                },
            )
            raise
        session = ChatSession(identity, connection_id, services)
        self._sessions[connection_id] = session
        self._closers[connection_id] = close
        self.opened_total += 1
        self._schedule_expiry(session)
        await self.rooms.join(connection_id, identity.user_room)
        if identity.is_staff:
            await self.rooms.join(connection_id, operators_room(identity.tenant_id))
            # After the transport has told the client it is connected (this runs later).
            self._spawn(self._send_queue(connection_id, identity.tenant_id))
        fields = {**_who(session), "transport": transport, "address": address}
        log.info("connected", extra={"fields": fields})
        return session

    async def _send_queue(self, connection_id: str, tenant_id: str) -> None:
        services = self._services
        if services is not None and connection_id in self._sessions:
            try:
                await services.handoff.send_queue_to(connection_id, tenant_id)
            except AppError as exc:
                log.warning("could not send the operator queue: %s", exc.message)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self, connection_id: str) -> None:
        """The transport lost the connection: forget it and free its slot."""
        session = self._sessions.pop(connection_id, None)
        self._closers.pop(connection_id, None)
        timer = self._expiry.pop(connection_id, None)
        if timer is not None:
            timer.cancel()
        if session is None:
            return
        log.info("disconnected", extra={"fields": _who(session)})
        if self._services is not None:
            with contextlib.suppress(Exception):
                await self._services.presence.gone(connection_id)
        with contextlib.suppress(Exception):
            await self.rooms.leave_all(connection_id)
        try:
            await self._admission.release(session.identity, connection_id)
        except AppError as exc:  # the registry entry expires by itself
            log.warning("could not release the connection of %s: %s", connection_id, exc.message)

    async def adopt(self, session: ChatSession, user_id: str) -> None:
        """Dev auth: a guest's payload names its user (older frontends send ``userId``): the
        connection becomes that user's."""
        old = session.identity
        new = Identity(user_id=user_id, tenant_id=old.tenant_id)
        cid = session.connection_id
        with contextlib.suppress(AppError):
            await self._admission.release(old, cid)
            await self._admission.admit(new, cid, 0)
        await self.rooms.leave(cid, old.user_room)
        await self.rooms.join(cid, new.user_room)
        session.identity = new

    async def refresh(self, session: ChatSession, token: str) -> Identity:
        """Adopt a fresh token: it must be for the same user of the same tenant."""
        identity = await self._verifier.identify(token)
        current = session.identity
        if (identity.tenant_id, identity.user_id) != (current.tenant_id, current.user_id):
            raise Forbidden("A refreshed token must be for the same user")
        session.identity = identity
        self._schedule_expiry(session)
        return identity

    # -- token expiry ----------------------------------------------------------------------------

    def _schedule_expiry(self, session: ChatSession) -> None:
        """Drop the connection when its token expires, unless refreshToken comes first."""
        cid = session.connection_id
        previous = self._expiry.pop(cid, None)
        if previous is not None:
            previous.cancel()
        expires_at = session.identity.expires_at
        if expires_at is None:
            return
        delay = max(0.0, expires_at.timestamp() - time.time())
        self._expiry[cid] = asyncio.get_running_loop().call_later(delay, self._on_expiry, cid)

    def _on_expiry(self, connection_id: str) -> None:
        self._spawn(self._expire(connection_id))

    async def _expire(self, connection_id: str) -> None:
        self._expiry.pop(connection_id, None)
        close = self._closers.get(connection_id)
        if connection_id not in self._sessions or close is None:
            return
        with contextlib.suppress(Exception):
            await self.rooms.to_connection(
                connection_id, ErrorEvent.model_validate(TokenExpired().to_wire())
            )
        await close(CloseReason.TOKEN_EXPIRED)

    # -- the per-user registry -------------------------------------------------------------------

    def start(self) -> None:
        self._keeper = asyncio.create_task(self._keep_alive(), name="connection-keeper")

    async def stop(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        for timer in self._expiry.values():
            timer.cancel()

    async def _keep_alive(self) -> None:
        """Refresh this instance's connections in the per-user registry: entries of a crashed
        instance are no longer refreshed and expire."""
        interval = self._admission.policy.presence_ttl_seconds / 3
        while True:
            await asyncio.sleep(interval)
            live = [(s.identity, cid) for cid, s in self._sessions.items()]
            try:
                await self._admission.keep_alive(live)
                if self._services is not None:
                    await self._services.presence.keep_alive()
            except AppError as exc:
                log.warning("could not refresh connection presence: %s", exc.message)


def _who(session: ChatSession) -> dict[str, Any]:
    identity = session.identity
    return {
        "connectionId": session.connection_id,
        "userId": identity.user_id,
        "tenant": identity.tenant_id,
        "role": identity.role.value,
    }
