"""Value objects of the domain (frozen, typed, free of any driver).

``Message`` and ``Consultation`` are pydantic models whose field aliases are their wire names:
the wire form, the event catalogue's schemas and the Mongo documents are all derived from the
fields, so adding a field is one edit here.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache, cached_property
from typing import Annotated, Any, ClassVar, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel


class Role(StrEnum):
    USER = "user"
    OPERATOR = "operator"
    ADMIN = "admin"
    VISITOR = "visitor"  # anonymous, from the website widget: a user with fewer rights


class Author(StrEnum):
    """Who wrote a message."""

    USER = "user"
    ASSISTANT = "assistant"
    OPERATOR = "operator"  # a human operator of the tenant
    SYSTEM = "system"  # a record of a change of the consultation (handoff), written by us


class MessageStatus(StrEnum):
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"  # the provider failed mid-stream; what arrived is kept
    STOPPED = "stopped"


class Mode(StrEnum):
    """Who answers a consultation: ``ai`` → ``waiting`` → ``operator`` → ``ai`` | ``closed``."""

    AI = "ai"
    WAITING = "waiting"
    OPERATOR = "operator"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling: always taken from a verified token (or dev auth), never from payloads."""

    user_id: str
    tenant_id: str = "default"
    role: Role = Role.USER
    name: str | None = None
    expires_at: datetime | None = None
    guest: bool = False  # dev auth gave it a random name: a payload's userId may replace it

    @property
    def is_staff(self) -> bool:
        return self.role in (Role.OPERATOR, Role.ADMIN)

    @property
    def display_name(self) -> str:
        return self.name or self.user_id

    @property
    def user_room(self) -> str:
        """Every connection of this user (any instance, any transport) is in this room."""
        return f"u:{len(self.tenant_id)}:{self.tenant_id}:{self.user_id}"


USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")


def valid_user_id(value: object) -> bool:
    """A user id a client may choose in dev auth: like a consultation id."""
    return isinstance(value, str) and bool(USER_ID.fullmatch(value))


def operators_room(tenant_id: str) -> str:
    """Every operator and admin connection of a tenant is in this room."""
    return f"ops:{tenant_id}"


@dataclass(frozen=True, slots=True)
class ConsultationKey:
    """A consultation is identified by its tenant and its id: ids are only unique per tenant."""

    tenant_id: str
    consultation_id: str

    @property
    def room(self) -> str:
        # Length-prefixed so that no tenant/id pair can collide with another one.
        return f"c:{len(self.tenant_id)}:{self.tenant_id}:{self.consultation_id}"

    @classmethod
    def from_room(cls, room: str) -> ConsultationKey | None:
        """The key whose ``room`` this is, or None for another kind of room."""
        kind, _, rest = room.partition(":")
        length, _, rest = rest.partition(":")
        if kind != "c" or not length.isdigit() or len(rest) <= int(length):
            return None
        tenant, separator, consultation = (
            rest[: int(length)],
            rest[int(length)],
            rest[int(length) + 1 :],
        )
        return cls(tenant, consultation) if separator == ":" else None


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a ``Z``, as JavaScript's ``Date`` prints it."""
    # isoformat is C and ~10x faster than strftime; in UTC it always ends in "+00:00".
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _utc(moment: datetime) -> datetime:
    """Naive datetimes (BSON dates come back naive) are UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


Timestamp = Annotated[
    datetime,
    AfterValidator(_utc),
    PlainSerializer(iso, return_type=str, when_used="json"),
    Field(json_schema_extra={"format": "date-time"}),
]


def _record_required(schema: dict[str, Any], cls: Any) -> None:
    """In the schema, what the wire always carries is required: every field shown but those
    left out when None."""
    omitted = set(_omitted_aliases(cls))
    shown = [to_camel(n) for n, info in cls.model_fields.items() if not info.exclude]
    schema["required"] = [name for name in shown if name not in omitted]


class Record(BaseModel):
    """A stored, immutable record: camelCase on the wire and in the database."""

    model_config = ConfigDict(
        frozen=True,
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        json_schema_extra=_record_required,
    )
    # Fields the wire leaves out when they are None (the rest is always present).
    omit_when_none: ClassVar[frozenset[str]] = frozenset()

    def to_wire(self) -> dict[str, Any]:
        """The wire form (camelCase, JSON types). Computed once: a record is immutable, and a
        message is serialized for its ack and again for its broadcast. Do not mutate it."""
        return self._wire

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copied = super().model_copy(update=update, deep=deep)
        copied.__dict__.pop("_wire", None)  # the copy differs: its wire form is made anew
        return copied

    @cached_property
    def _wire(self) -> dict[str, Any]:
        wire = self.model_dump(mode="json", by_alias=True)
        for name in _nested_records(type(self)):
            nested = getattr(self, name)
            if isinstance(nested, Record):
                wire[to_camel(name)] = nested.to_wire()  # with its own omissions
            elif isinstance(nested, list):
                wire[to_camel(name)] = [r.to_wire() if isinstance(r, Record) else r for r in nested]
        for alias in _omitted_aliases(type(self)):
            if wire.get(alias, 0) is None:
                del wire[alias]
        return wire


@cache
def _nested_records(record: type[Record]) -> tuple[str, ...]:
    """The fields of a record that may hold a record (their wire form is theirs)."""

    def holds_record(kind: Any) -> bool:
        if isinstance(kind, type) and issubclass(kind, Record):
            return True
        return any(holds_record(arg) for arg in getattr(kind, "__args__", ()))

    return tuple(
        name for name, info in record.model_fields.items() if holds_record(info.annotation)
    )


@cache
def _omitted_aliases(record: type[Record]) -> tuple[str, ...]:
    """The wire names of a record's ``omit_when_none`` fields, once per class: ``to_camel`` is
    a regex, and this runs for every message broadcast."""
    return tuple(to_camel(name) for name in sorted(record.omit_when_none))


class OperatorRef(BaseModel):
    """The operator holding a consultation."""

    model_config = ConfigDict(frozen=True)
    id: str
    name: str


class Source(Record):
    """A knowledge-base article given to the model for a reply; ``cited`` when the reply's
    text cites it (its ``[n]`` marker)."""

    id: str
    title: str
    url: str | None = None
    cited: bool = False

    omit_when_none: ClassVar[frozenset[str]] = frozenset({"url"})


class Article(Record):
    """A tenant's knowledge-base article: what the assistant answers from."""

    id: str
    tenant_id: str = Field(exclude=True)  # the caller's own tenant: never echoed
    title: str
    content: str
    url: str | None = None
    tags: list[str] | None = None
    updated_at: Timestamp

    omit_when_none: ClassVar[frozenset[str]] = frozenset({"url", "tags"})


class CannedReply(Record):
    """A reply an operator inserts with ``/shortcut``."""

    shortcut: str
    text: str


class TenantSettings(Record):
    """What a tenant's admins configure: the greeting of an empty consultation, the canned
    replies of its operators."""

    tenant_id: str = Field(exclude=True)
    greeting: str | None = None
    canned_replies: list[CannedReply] = Field(default_factory=list)

    omit_when_none: ClassVar[frozenset[str]] = frozenset({"greeting"})


class Message(Record):
    id: str
    consultation_id: str
    tenant_id: str = Field(exclude=True)  # the tenant is the caller's own: never echoed
    seq: int = 0  # 0 until stored: the store allocates it
    role: Author
    user_id: str | None = None
    author_name: str | None = None  # a human operator's name, shown beside their messages
    content: str
    timestamp: Timestamp
    status: MessageStatus = MessageStatus.COMPLETE
    model: str | None = None
    client_message_id: str | None = None
    answers_seq: int | None = None  # a reply: the newest message of the context it answered
    # A reply: ms from the question it answers being stored to the reply's first token
    # reaching the room (what the user waited), for the AI response-time figures.
    response_ms: int | None = None
    sources: list[Source] | None = None  # a reply: the articles it was given, in rank order
    # A system note: what happened (operator_requested, operator_joined, released, closed,
    # timed_out, requeued), so that each reader's client phrases it for them; ``content`` is
    # the customer's wording, ``author_name`` the operator it names.
    note: str | None = None

    omit_when_none: ClassVar[frozenset[str]] = frozenset(
        {
            "model",
            "client_message_id",
            "answers_seq",
            "author_name",
            "response_ms",
            "sources",
            "note",
        }
    )

    @property
    def key(self) -> ConsultationKey:
        return ConsultationKey(self.tenant_id, self.consultation_id)

    @classmethod
    def new(cls, key: ConsultationKey, role: Author, content: str, **fields: Any) -> Message:
        """A message about to be stored (``seq`` 0); the store allocates its ``seq``."""
        return cls(
            id=fields.pop("id", None) or new_id(),
            consultation_id=key.consultation_id,
            tenant_id=key.tenant_id,
            role=role,
            content=content,
            timestamp=fields.pop("timestamp", None) or utcnow(),
            **fields,
        )


class PageRef(Record):
    url: str
    title: str | None = None

    omit_when_none: ClassVar[frozenset[str]] = frozenset({"title"})


class PageContext(Record):
    """What the client says about where the person is (the page of a website, what it shows):
    untrusted data, shown to operators and given to the assistant as data, never as
    instructions."""

    page: PageRef | None = None
    attributes: dict[str, str | int | float | bool] | None = None

    omit_when_none: ClassVar[frozenset[str]] = frozenset({"page", "attributes"})


class Rating(Record):
    """The owner's satisfaction score for a consultation (changeable: the last one counts)."""

    score: Annotated[int, Field(ge=1, le=5)]
    comment: str | None = None
    rated_at: Timestamp


class Consultation(Record):
    consultation_id: str
    tenant_id: str
    owner_id: str
    created_at: Timestamp
    owner_role: Role = Role.USER  # a visitor's until it signs in
    owner_name: str | None = None  # the name the owner's token gives (shown to operators)
    mode: Mode = Mode.AI
    operator: OperatorRef | None = None
    waiting_since: Timestamp | None = None
    reason: str | None = None
    requeued: bool = False  # back in the queue after its operator vanished: served first
    handoffs: int = 0  # how many times a human was asked for
    rating: Rating | None = None
    context: PageContext | None = None  # the latest the client gave (joins, sends)

    omit_when_none: ClassVar[frozenset[str]] = frozenset(
        {"operator", "waiting_since", "reason", "rating", "context", "owner_name"}
    )

    def queue_order(self) -> tuple[int, datetime, datetime]:
        """Position in the operator queue: requeued ones first, then the longest waiting."""
        return (0 if self.requeued else 1, self.waiting_since or self.created_at, self.created_at)

    @property
    def key(self) -> ConsultationKey:
        return ConsultationKey(self.tenant_id, self.consultation_id)

    @property
    def id(self) -> str:
        return self.consultation_id

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.consultation_id, **self._wire}

    @classmethod
    def new(cls, key: ConsultationKey, owner_id: str, owner_role: Role = Role.USER) -> Consultation:
        return cls(
            consultation_id=key.consultation_id,
            tenant_id=key.tenant_id,
            owner_id=owner_id,
            owner_role=owner_role,
            created_at=utcnow(),
        )


def sorted_consultations(found: list[Consultation], mode: Mode | None) -> list[Consultation]:
    """Waiting ones in queue order, the others newest first (what ``find`` returns)."""
    if mode is Mode.WAITING:
        return sorted(found, key=Consultation.queue_order)
    return sorted(found, key=lambda c: c.created_at, reverse=True)


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    # Millisecond precision: what MongoDB stores, so memory and mongo stores agree exactly.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)
