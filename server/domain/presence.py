"""Who is in a consultation, and who is typing: the same for every transport and instance.

A participant (a user, or an operator who accepted) is online from its first connection in
the room to its last one, over tabs and instances (``RoomPresence``); the room hears
``userOnline`` / ``userOffline`` once per change. ``typing`` is relayed to the others of the
room and cleared by the server when no refresh comes within a few seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from ..errors import AppError
from .events import Participant, TypingEvent, UserOffline, UserOnline
from .models import ConsultationKey, Identity
from .ports import RoomPresence, Rooms

log = logging.getLogger(__name__)

TYPING_CLEARS_AFTER_SECONDS = 5.0
PRESENCE_TTL_SECONDS = 90.0


def _who(identity: Identity) -> str:
    return f"{identity.role.value}:{identity.user_id}"


def _participant(who: str) -> Participant:
    role, _, user_id = who.partition(":")
    return Participant(user_id=user_id, role=role)


class PresenceService:
    def __init__(self, presence: RoomPresence, rooms: Rooms) -> None:
        self._presence = presence
        self._rooms = rooms
        self._entries: dict[str, dict[str, tuple[Identity, ConsultationKey]]] = {}
        self._typing: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def entered(
        self, identity: Identity, connection_id: str, key: ConsultationKey
    ) -> list[Participant]:
        """A connection joined the room: online if it is its participant's first; returns
        who is online now."""
        entries = self._entries.setdefault(connection_id, {})
        try:
            if key.room not in entries:
                entries[key.room] = (identity, key)
                first = await self._presence.enter(
                    key.room, _who(identity), connection_id, PRESENCE_TTL_SECONDS
                )
                if first:
                    await self._rooms.to_room(
                        key.room,
                        UserOnline(
                            consultation_id=key.consultation_id,
                            user_id=identity.user_id,
                            role=identity.role.value,
                        ),
                        skip=connection_id,
                    )
            return [_participant(who) for who in await self._presence.online(key.room)]
        except AppError as exc:  # presence is informative: never fail a join for it
            log.warning("presence of %s unavailable: %s", key.room, exc.message)
            return []

    async def left(self, connection_id: str, key: ConsultationKey) -> None:
        entry = self._entries.get(connection_id, {}).pop(key.room, None)
        self._clear_typing(connection_id, key, entry[0] if entry else None)
        if entry is None:
            return
        identity = entry[0]
        try:
            last = await self._presence.exit(key.room, _who(identity), connection_id)
        except AppError as exc:
            log.warning("presence of %s unavailable: %s", key.room, exc.message)
            return
        if last:
            await self._rooms.to_room(
                key.room,
                UserOffline(
                    consultation_id=key.consultation_id,
                    user_id=identity.user_id,
                    role=identity.role.value,
                ),
            )

    async def gone(self, connection_id: str) -> None:
        """The connection closed: it leaves every room it was in."""
        for _, key in list(self._entries.get(connection_id, {}).values()):
            await self.left(connection_id, key)
        self._entries.pop(connection_id, None)

    async def keep_alive(self) -> None:
        entries: Sequence[tuple[str, str, str]] = [
            (room, _who(identity), connection_id)
            for connection_id, rooms in self._entries.items()
            for room, (identity, _) in rooms.items()
        ]
        if entries:
            await self._presence.refresh(entries, PRESENCE_TTL_SECONDS)

    # -- typing ----------------------------------------------------------------------------------

    async def typing(
        self, identity: Identity, connection_id: str, key: ConsultationKey, is_typing: bool
    ) -> None:
        timer = self._typing.pop((connection_id, key.room), None)
        if timer is not None:
            timer.cancel()
        if is_typing:
            loop = asyncio.get_running_loop()
            self._typing[(connection_id, key.room)] = loop.call_later(
                TYPING_CLEARS_AFTER_SECONDS, self._expire_typing, identity, connection_id, key
            )
        await self._send_typing(identity, connection_id, key, is_typing)

    def _expire_typing(self, identity: Identity, connection_id: str, key: ConsultationKey) -> None:
        self._typing.pop((connection_id, key.room), None)
        task = asyncio.ensure_future(self._send_typing(identity, connection_id, key, False))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _clear_typing(
        self, connection_id: str, key: ConsultationKey, identity: Identity | None
    ) -> None:
        timer = self._typing.pop((connection_id, key.room), None)
        if timer is not None:
            timer.cancel()
            if identity is not None:  # it was typing: tell the room it stopped
                self._expire_typing(identity, connection_id, key)

    async def _send_typing(
        self, identity: Identity, connection_id: str, key: ConsultationKey, is_typing: bool
    ) -> None:
        await self._rooms.to_room(
            key.room,
            TypingEvent(
                consultation_id=key.consultation_id,
                user_id=identity.user_id,
                role=identity.role.value,
                display_name=identity.name,
                is_typing=is_typing,
            ),
            skip=connection_id,
        )
