"""Value objects of the domain (frozen, typed, free of any driver)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Role(StrEnum):
    USER = "user"
    OPERATOR = "operator"
    ADMIN = "admin"


class Author(StrEnum):
    """Who wrote a message."""

    USER = "user"
    ASSISTANT = "assistant"


class MessageStatus(StrEnum):
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"  # the provider failed mid-stream; what arrived is kept
    STOPPED = "stopped"


@dataclass(frozen=True)
class Identity:
    """Who is calling: always taken from a verified token (or dev auth), never from payloads."""

    user_id: str
    tenant_id: str = "default"
    role: Role = Role.USER
    name: str | None = None
    expires_at: datetime | None = None

    @property
    def is_staff(self) -> bool:
        return self.role in (Role.OPERATOR, Role.ADMIN)


@dataclass(frozen=True)
class ConsultationKey:
    """A consultation is identified by its tenant and its id: ids are only unique per tenant."""

    tenant_id: str
    consultation_id: str

    @property
    def room(self) -> str:
        # Length-prefixed so that no tenant/id pair can collide with another one.
        return f"c:{len(self.tenant_id)}:{self.tenant_id}:{self.consultation_id}"


@dataclass(frozen=True)
class Consultation:
    key: ConsultationKey
    owner_id: str
    created_at: datetime

    @property
    def id(self) -> str:
        return self.key.consultation_id

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.key.consultation_id,
            "consultationId": self.key.consultation_id,
            "tenantId": self.key.tenant_id,
            "ownerId": self.owner_id,
            "createdAt": iso(self.created_at),
        }


@dataclass(frozen=True)
class NewMessage:
    """A message about to be stored; the store allocates its ``seq``."""

    id: str
    key: ConsultationKey
    author: Author
    user_id: str | None
    content: str
    created_at: datetime
    status: MessageStatus = MessageStatus.COMPLETE
    model: str | None = None
    client_message_id: str | None = None


@dataclass(frozen=True)
class Message:
    id: str
    key: ConsultationKey
    seq: int
    author: Author
    user_id: str | None
    content: str
    created_at: datetime
    status: MessageStatus = MessageStatus.COMPLETE
    model: str | None = None
    client_message_id: str | None = None

    @classmethod
    def stored(cls, new: NewMessage, seq: int) -> Message:
        return cls(
            id=new.id,
            key=new.key,
            seq=seq,
            author=new.author,
            user_id=new.user_id,
            content=new.content,
            created_at=new.created_at,
            status=new.status,
            model=new.model,
            client_message_id=new.client_message_id,
        )

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "id": self.id,
            "consultationId": self.key.consultation_id,
            "seq": self.seq,
            "role": self.author.value,
            "userId": self.user_id,
            "content": self.content,
            "timestamp": iso(self.created_at),
            "status": self.status.value,
        }
        if self.author is Author.ASSISTANT:
            wire["model"] = self.model
        if self.client_message_id is not None:
            wire["clientMessageId"] = self.client_message_id
        return wire


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    # Millisecond precision: what MongoDB stores, so memory and mongo stores agree exactly.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a ``Z``, as JavaScript's ``Date`` prints it."""
    # isoformat is C and ~10x faster than strftime; in UTC it always ends in "+00:00".
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
