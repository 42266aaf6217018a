"""Ports: what the domain needs from the outside world, as Protocols.

Each port has a memory implementation and a production one, and one contract test suite that
both pass (``tests/contract``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .models import Author, Consultation, ConsultationKey, Message, NewMessage


class ConsultationStore(Protocol):
    async def get_or_create(self, key: ConsultationKey, owner_id: str) -> Consultation:
        """Return the consultation, creating it owned by ``owner_id`` when it does not exist."""
        ...

    async def get(self, key: ConsultationKey) -> Consultation | None: ...


class MessageStore(Protocol):
    async def append(self, message: NewMessage) -> Message:
        """Store the message with the next ``seq`` of its consultation (atomic, gap-free)."""
        ...

    async def recent(self, key: ConsultationKey, limit: int) -> list[Message]:
        """The last ``limit`` messages, oldest first."""
        ...

    async def after(self, key: ConsultationKey, after_seq: int, limit: int) -> list[Message]:
        """Messages with ``seq > after_seq``, oldest first, at most ``limit``."""
        ...


class Store(ConsultationStore, MessageStore, Protocol):
    async def start(self) -> None:
        """Connect and create indexes."""
        ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise :class:`StorageUnavailable` when the store cannot serve requests."""
        ...


@dataclass(frozen=True)
class Turn:
    author: Author
    content: str


@dataclass(frozen=True)
class ReplyRequest:
    system_prompt: str
    turns: Sequence[Turn]


@dataclass(frozen=True)
class Delta:
    text: str
    model: str


class Assistant(Protocol):
    """Streams a reply. Raises AssistantUnavailable before any delta, ReplyInterrupted after."""

    def stream(self, request: ReplyRequest) -> AsyncIterator[Delta]: ...

    async def close(self) -> None: ...


class Lock(Protocol):
    async def renew(self) -> bool:
        """Extend the lock's expiry; False when it was lost (expired and taken by another)."""
        ...

    async def release(self) -> None: ...


@dataclass(frozen=True)
class Partial:
    """The text of a reply while it streams: what a client joining mid-stream starts from."""

    message_id: str
    content: str
    index: int  # index of the last chunk included in ``content``; -1 before the first


class Coordination(Protocol):
    """What instances agree on, per consultation: the reply lock, pending-reply flags and the
    partial-reply buffer."""

    async def try_lock(self, name: str, ttl_seconds: float) -> Lock | None: ...

    async def mark_pending(self, name: str) -> None: ...

    async def take_pending(self, name: str) -> bool:
        """Clear the pending flag; True when it was set."""
        ...

    async def is_pending(self, name: str) -> bool: ...

    async def start_partial(self, name: str, message_id: str, ttl_seconds: float) -> None:
        """Begin buffering the reply ``message_id`` (replacing any older buffer)."""
        ...

    async def append_partial(
        self, name: str, message_id: str, text: str, ttl_seconds: float
    ) -> None: ...

    async def read_partial(self, name: str) -> Partial | None: ...

    async def clear_partial(self, name: str, message_id: str) -> None: ...

    async def ping(self) -> None:
        """Raise :class:`CoordinationUnavailable` when the backend cannot serve requests."""
        ...

    async def close(self) -> None: ...


class Notifier(Protocol):
    """Delivers domain events to everyone in a consultation's room."""

    async def to_room(
        self, key: ConsultationKey, event: str, data: dict[str, Any], *, skip: str | None = None
    ) -> None: ...
