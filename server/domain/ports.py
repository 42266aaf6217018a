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


@dataclass(frozen=True)
class Appended:
    message: Message
    created: bool  # False: a message with the same clientMessageId was already stored


class MessageStore(Protocol):
    async def append(self, message: NewMessage) -> Appended:
        """Store the message with the next ``seq`` of its consultation (atomic, gap-free).

        A message whose ``client_message_id`` is already stored in its consultation is not
        stored again: the stored one is returned with ``created=False``.
        """
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


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    count: int  # hits in the window, this one included when allowed
    retry_after: float  # seconds until a hit would be allowed again (0 when allowed)


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

    async def hit_rate(self, name: str, limit: int, window_seconds: float) -> RateDecision:
        """Count one hit in a sliding window, unless ``limit`` hits are already in it."""
        ...

    async def add_presence(self, name: str, member: str, limit: int, ttl_seconds: float) -> bool:
        """Register a live connection under ``name``; False when ``limit`` are already live."""
        ...

    async def refresh_presence(
        self, entries: Sequence[tuple[str, str]], ttl_seconds: float
    ) -> None:
        """Keep these (name, member) connections alive; the others expire (crashed instances)."""
        ...

    async def remove_presence(self, name: str, member: str) -> None: ...

    async def request_stop(self, name: str, ttl_seconds: float) -> None: ...

    async def take_stop(self, name: str) -> bool:
        """Consume a stop request; True when there was one."""
        ...

    async def ping(self) -> None:
        """Raise :class:`CoordinationUnavailable` when the backend cannot serve requests."""
        ...

    async def close(self) -> None: ...


class Notifier(Protocol):
    """Delivers domain events to everyone in a consultation's room."""

    async def to_room(
        self, key: ConsultationKey, event: str, data: dict[str, Any], *, skip: str | None = None
    ) -> None: ...

    async def to_connection(self, connection_id: str, event: str, data: dict[str, Any]) -> None:
        """Deliver to one connection (wherever it is connected)."""
        ...
