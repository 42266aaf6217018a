"""In-memory store: the embedded default. Single process, lost on restart."""

from __future__ import annotations

from ..domain.models import Consultation, ConsultationKey, Message, NewMessage, utcnow
from ..domain.ports import Appended


class MemoryStore:
    def __init__(self) -> None:
        self._consultations: dict[ConsultationKey, Consultation] = {}
        self._messages: dict[ConsultationKey, list[Message]] = {}
        self._by_client_id: dict[tuple[ConsultationKey, str], Message] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def get_or_create(self, key: ConsultationKey, owner_id: str) -> Consultation:
        existing = self._consultations.get(key)
        if existing is not None:
            return existing
        created = Consultation(key=key, owner_id=owner_id, created_at=utcnow())
        self._consultations[key] = created
        return created

    async def get(self, key: ConsultationKey) -> Consultation | None:
        return self._consultations.get(key)

    async def append(self, message: NewMessage) -> Appended:
        # No await between reading and appending: atomic on the event loop.
        client_key = (message.key, message.client_message_id or "")
        if message.client_message_id is not None and client_key in self._by_client_id:
            return Appended(self._by_client_id[client_key], created=False)
        log = self._messages.setdefault(message.key, [])
        stored = Message.stored(message, seq=len(log) + 1)
        log.append(stored)
        if message.client_message_id is not None:
            self._by_client_id[client_key] = stored
        return Appended(stored, created=True)

    async def recent(self, key: ConsultationKey, limit: int) -> list[Message]:
        log = self._messages.get(key, [])
        return list(log[-limit:]) if limit > 0 else []

    async def after(self, key: ConsultationKey, after_seq: int, limit: int) -> list[Message]:
        log = self._messages.get(key, [])
        start = max(after_seq, 0)  # seq n sits at index n - 1
        return list(log[start : start + limit])
