"""In-memory store: the embedded default. Single process, lost on restart."""

from __future__ import annotations

from ..domain.models import Consultation, ConsultationKey, Message, NewMessage, utcnow


class MemoryStore:
    def __init__(self) -> None:
        self._consultations: dict[ConsultationKey, Consultation] = {}
        self._messages: dict[ConsultationKey, list[Message]] = {}

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

    async def append(self, message: NewMessage) -> Message:
        # No await between reading the length and appending: atomic on the event loop.
        log = self._messages.setdefault(message.key, [])
        stored = Message.stored(message, seq=len(log) + 1)
        log.append(stored)
        return stored

    async def recent(self, key: ConsultationKey, limit: int) -> list[Message]:
        log = self._messages.get(key, [])
        return list(log[-limit:]) if limit > 0 else []

    async def after(self, key: ConsultationKey, after_seq: int, limit: int) -> list[Message]:
        log = self._messages.get(key, [])
        start = max(after_seq, 0)  # seq n sits at index n - 1
        return list(log[start : start + limit])
