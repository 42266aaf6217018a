"""Ports: what the domain needs from the outside world, one small Protocol per concern.

Each port has a memory implementation and a production one (MongoDB, Redis, an LLM API), and
one contract suite in ``tests/contract`` that every implementation passes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from .events import ServerEvent
from .models import (
    Article,
    Author,
    Consultation,
    ConsultationKey,
    Identity,
    Message,
    Mode,
    Role,
    TenantSettings,
)

# -- storage -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OneOf:
    """An expectation of :meth:`ConsultationStore.update` met by any of several values."""

    values: Collection[Any]


class ConsultationStore(Protocol):
    async def get_or_create(
        self, key: ConsultationKey, owner_id: str, owner_role: Role = Role.USER
    ) -> Consultation:
        """Return the consultation, creating it owned by ``owner_id`` when it does not exist."""
        ...

    async def get(self, key: ConsultationKey) -> Consultation | None: ...

    async def find(
        self,
        tenant_id: str | None,
        *,
        mode: Mode | None = None,
        operator_id: str | None = None,
        limit: int = 500,
    ) -> list[Consultation]:
        """Consultations of a tenant (of all tenants with None), optionally in one mode or held
        by one operator; those waiting in queue order, the others newest first."""
        ...

    async def update(
        self,
        key: ConsultationKey,
        changes: Mapping[str, Any],
        *,
        expect: Mapping[str, Any] | None = None,
    ) -> Consultation | None:
        """Set ``changes`` (Consultation field names) atomically, only while every field of
        ``expect`` has its value (or one of a :class:`OneOf`'s). Returns the updated
        consultation, or None when it does not exist or an expectation does not hold: of two
        concurrent updates expecting the same state, exactly one succeeds."""
        ...


class Ownership(Protocol):
    async def transfer(
        self, tenant_id: str, from_owner: str, to_owner: str, to_role: Role
    ) -> list[Consultation]:
        """Give every consultation ``from_owner`` owns in the tenant to ``to_owner`` (of
        ``to_role``), and
        attribute the messages ``from_owner`` wrote in them to ``to_owner``: a visitor who
        signed in keeps its history. Returns the consultations moved (none on a repeat)."""
        ...


@dataclass(frozen=True, slots=True)
class Appended:
    message: Message
    created: bool  # False: a message with the same clientMessageId was already stored


class MessageStore(Protocol):
    async def append(self, message: Message) -> Appended:
        """Store the message with the next ``seq`` of its consultation (atomic, gap-free).

        A message whose ``client_message_id`` is already stored in its consultation, or whose
        ``id`` is already stored, is not stored again: the stored one is returned with
        ``created=False``.
        """
        ...

    async def recent(self, key: ConsultationKey, limit: int) -> list[Message]:
        """The last ``limit`` messages, oldest first."""
        ...

    async def after(self, key: ConsultationKey, after_seq: int, limit: int) -> list[Message]:
        """Messages with ``seq > after_seq``, oldest first, at most ``limit``."""
        ...


class KnowledgeStore(Protocol):
    """A tenant's knowledge-base articles. Every write moves the tenant's ``revision``, so
    every instance knows when its index is stale."""

    async def put_article(self, article: Article) -> Article:
        """Create or replace the article ``(tenant, id)``."""
        ...

    async def get_article(self, tenant_id: str, article_id: str) -> Article | None: ...

    async def articles(self, tenant_id: str) -> list[Article]:
        """Every article of the tenant, by id."""
        ...

    async def delete_article(self, tenant_id: str, article_id: str) -> bool:
        """False when there was none."""
        ...

    async def knowledge_revision(self, tenant_id: str) -> int:
        """A number that changes with every write of the tenant's articles (0: none ever)."""
        ...


class TenantSettingsStore(Protocol):
    async def tenant_settings(self, tenant_id: str) -> TenantSettings:
        """The tenant's settings (defaults when it never set any)."""
        ...

    async def put_tenant_settings(self, settings: TenantSettings) -> TenantSettings: ...


class ChatStore(
    ConsultationStore, MessageStore, Ownership, KnowledgeStore, TenantSettingsStore, Protocol
):
    """Consultations and their messages."""


# What the stats count as messages: what people wrote and the assistant answered.
COUNTED_ROLES = frozenset({Author.USER, Author.ASSISTANT, Author.OPERATOR})


@dataclass(frozen=True)
class Stats:
    """A tenant's figures over a period: consultations created in it, messages written in it."""

    consultations: int
    messages: int  # user, assistant and operator messages; system notes are not counted
    avg_ai_response_ms: float | None  # replies' response_ms, averaged
    resolved_without_operator_ratio: float | None  # share of consultations never handed off
    handoffs: int  # times a human was asked for
    avg_rating: float | None
    ratings: int
    # The knowledge base: articles cited most (id, title, count), the most frequent user
    # questions (normalized text, count), and replies given no source at all.
    top_sources: list[tuple[str, str, int]] = field(default_factory=list)
    top_questions: list[tuple[str, int]] = field(default_factory=list)
    unanswered: int = 0


TOP_STATS = 10  # how many top sources and questions the stats list


QUESTION_TRIM = " ?!.,;:\n\t"


def normalized_question(text: str) -> str:
    """A question as counted among the popular ones: lower case, without the spaces and
    punctuation around it, at most 200 characters (MongoDB's $toLower folds ASCII only)."""
    return text.lower().strip(QUESTION_TRIM)[:200]


class StatsReader(Protocol):
    async def stats(self, tenant_id: str, since: datetime | None, until: datetime | None) -> Stats:
        """The tenant's figures for ``since <= t < until`` (either end open when None)."""
        ...


class Store(ChatStore, StatsReader, Protocol):
    async def start(self) -> None:
        """Connect and create indexes."""
        ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise :class:`StorageUnavailable` when the store cannot serve requests."""
        ...


# -- the assistant -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Turn:
    author: Author
    content: str


@dataclass(frozen=True, slots=True)
class Passage:
    """A part of a knowledge-base article, as given to the assistant."""

    article_id: str
    title: str
    url: str | None
    text: str


@dataclass(frozen=True, slots=True)
class ReplyRequest:
    system_prompt: str
    turns: Sequence[Turn]
    # Continue this answer (given as the start of the assistant's reply) rather than begin one:
    # the text a dead instance had streamed.
    continue_from: str = ""
    # The knowledge-base passages in the turns (numbered from 1): for an assistant that
    # answers from them directly (the offline one).
    knowledge: Sequence[Passage] = ()


@dataclass(frozen=True, slots=True)
class Delta:
    text: str
    model: str


class Assistant(Protocol):
    """Streams a reply. Raises AssistantUnavailable before any delta, ReplyInterrupted after."""

    def stream(self, request: ReplyRequest) -> AsyncIterator[Delta]: ...

    async def close(self) -> None: ...


# -- coordination between instances: one Protocol per concern ------------------------------------


class Lock(Protocol):
    @property
    def token(self) -> str:
        """Unique to this holding of the lock, ``"<fence>:<random>"`` where the fence grows
        with every acquisition of the name: what fences the holder's writes."""
        ...

    async def renew(self) -> bool:
        """Extend the lock's expiry; False when it was lost (taken by another since). Raises
        :class:`CoordinationUnavailable` when the backend cannot be reached: that is not a
        lost lock."""
        ...

    async def release(self) -> None: ...


class ReplyLocks(Protocol):
    """One reply at a time per consultation, cluster-wide; a dead holder's lock expires."""

    async def try_lock(self, name: str, ttl_seconds: float) -> Lock | None: ...

    async def fenced_token(self, name: str) -> str:
        """A token with the next fence of ``name``, without the lock: for a writer that takes
        a reply from its holder (a human's takeover cuts it). Every older token, the
        holder's included, can no longer write for the reply."""
        ...


class ReplyQueue(Protocol):
    """Whether a consultation has messages waiting for a reply."""

    async def mark_pending(self, name: str) -> None: ...

    async def take_pending(self, name: str) -> bool:
        """Clear the pending flag; True when it was set."""
        ...

    async def is_pending(self, name: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class ReplyDraft:
    """What a reply in flight is, so that another instance can continue it."""

    message_id: str
    owner: str  # the lock token of the instance streaming it: only it may append
    request_seq: int  # the newest message of the context it answers
    model: str = ""


@dataclass(frozen=True, slots=True)
class Partial:
    """The text of a reply while it streams: what a client joining mid-stream starts from, and
    what an instance taking the reply over continues from."""

    message_id: str
    content: str
    index: int  # index of the last chunk included in ``content``; -1 before the first
    owner: str = ""
    request_seq: int = 0
    model: str = ""
    parts: tuple[str, ...] = ()  # the chunks' texts, by index


class BufferWrite(StrEnum):
    OK = "ok"
    TAKEN = "taken"  # another instance owns the reply now (or another reply is buffered)
    GONE = "gone"  # nothing is buffered (Redis restarted empty): the owner may restore it


class ReplyBuffer(Protocol):
    """The partial-reply buffer: the text of the reply streaming in a consultation, so far."""

    async def start(self, name: str, draft: ReplyDraft, ttl_seconds: float) -> None:
        """Begin buffering the reply ``draft`` (replacing any older buffer)."""
        ...

    async def append(
        self, name: str, message_id: str, owner: str, text: str, ttl_seconds: float
    ) -> BufferWrite:
        """Add one chunk's text, only while ``message_id`` is the buffered reply and ``owner``
        streams it: TAKEN when another instance took it over (stop), GONE when nothing is
        buffered any more."""
        ...

    async def claim(
        self, name: str, message_id: str, owner: str, ttl_seconds: float
    ) -> Partial | None:
        """Become the owner of the buffered reply ``message_id`` (a takeover); its state, or
        None when it is no longer buffered."""
        ...

    async def set_model(self, name: str, message_id: str, model: str) -> None:
        """Record the model answering (once the first token came)."""
        ...

    async def read(self, name: str) -> Partial | None: ...

    async def clear(self, name: str, message_id: str) -> None:
        """Drop the buffer, only while ``message_id`` is the buffered reply."""
        ...

    async def abandon(self, name: str, message_id: str, owner: str) -> bool | None:
        """Drop the buffer of ``message_id`` if ``owner`` still streams it: True when it did,
        False when another owner took the reply over (it finishes it), None when the reply
        is not buffered (any more)."""
        ...


class ReplyRegistry(Protocol):
    """Consultations with a reply in flight, each with a deadline its instance keeps moving:
    an entry past its deadline belongs to an instance that died."""

    async def touch(self, name: str, ttl_seconds: float) -> None: ...

    async def drop(self, name: str) -> None: ...

    async def overdue(self, limit: int) -> list[str]:
        """Entries whose deadline passed (their reply may need taking over)."""
        ...


class StopSignals(Protocol):
    """A request to stop the reply streaming in a consultation, on whichever instance."""

    async def request_stop(self, name: str, ttl_seconds: float) -> None: ...

    async def take_stop(self, name: str) -> bool:
        """Consume a stop request; True when there was one."""
        ...


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    count: int  # hits in the window, this one included when allowed
    retry_after: float  # seconds until a hit would be allowed again (0 when allowed)


class RateLimits(Protocol):
    async def hit(self, name: str, limit: int, window_seconds: float) -> RateDecision:
        """Count one hit in a sliding window, unless ``limit`` hits are already in it."""
        ...


class ConnectionRegistry(Protocol):
    """Live connections per user, for the per-user connection limit."""

    async def add(self, name: str, member: str, limit: int, ttl_seconds: float) -> bool:
        """Register a live connection under ``name``; False when ``limit`` are already live."""
        ...

    async def refresh(self, entries: Sequence[tuple[str, str]], ttl_seconds: float) -> None:
        """Keep these (name, member) connections alive; the others expire (crashed instances)."""
        ...

    async def remove(self, name: str, member: str) -> None: ...

    async def absent_since(self, name: str) -> float | None:
        """None while ``name`` has a live connection (on any instance); else the time (a
        clock shared by every instance, in seconds) since when it has had none."""
        ...


class RoomPresence(Protocol):
    """Who is in a consultation's room, over every connection on every instance: the first
    connection of a participant makes it online, its last one offline."""

    async def enter(self, room: str, who: str, connection_id: str, ttl_seconds: float) -> bool:
        """Add a connection of ``who``; True when ``who`` had none in the room before."""
        ...

    async def exit(self, room: str, who: str, connection_id: str) -> bool:
        """Remove one; True when it was ``who``'s last in the room."""
        ...

    async def online(self, room: str) -> list[str]: ...

    async def refresh(self, entries: Sequence[tuple[str, str, str]], ttl_seconds: float) -> None:
        """Keep these (room, who, connection) entries; the others expire (crashed instances)."""
        ...


# -- identity and delivery -----------------------------------------------------------------------


class TokenVerifier(Protocol):
    async def identify(
        self, token: str | None, *, dev: Mapping[str, Any] | None = None
    ) -> Identity:
        """The identity a token proves; raises :class:`Unauthorized` (or
        :class:`AuthUnavailable` when the keys cannot be fetched). In dev auth ``dev`` may
        choose it (``userId``, ``name``, ``role``): nothing is verified
        there anyway."""
        ...


class Rooms(Protocol):
    """Room membership and delivery, the same for every transport and across instances."""

    async def join(self, connection_id: str, room: str, *, ordered: bool = False) -> bool:
        """Add a local connection to a room; every later broadcast to it reaches it once this
        returns. True when it was not a member. In an ``ordered`` room (a consultation, whose
        stored messages carry a seq) the joiner then calls ``sync``."""
        ...

    async def leave(self, connection_id: str, room: str) -> None: ...

    async def leave_all(self, connection_id: str) -> None:
        """The connection is gone: leave every room it was in."""
        ...

    def sync(self, room: str, head_seq: int, connection_id: str | None = None) -> None:
        """The store holds the room's messages up to ``head_seq`` (as the join of
        ``connection_id`` just returned them): members of this instance that lack some of them
        receive them, and the joiner is not sent them again."""
        ...

    def sending(self, connection_id: str, message_id: str) -> None:
        """``connection_id`` is about to store message ``message_id``, then broadcast it with
        ``skip=connection_id``. A copy read from the store before that broadcast (a gap filled
        meanwhile) is not delivered to that connection either: it has the message in its ack."""
        ...

    async def to_room(self, room: str, event: ServerEvent, *, skip: str | None = None) -> None:
        """Deliver to every member of ``room`` on every instance, except ``skip``."""
        ...

    async def to_connection(self, connection_id: str, event: ServerEvent) -> None:
        """Deliver to one connection (wherever it is connected)."""
        ...


class InstanceDirectory(Protocol):
    """Every running instance's latest figures (for cluster-wide status)."""

    async def report(self, instance: str, figures: Mapping[str, int], ttl_seconds: float) -> None:
        """This instance's figures, valid for ``ttl_seconds`` unless reported again."""
        ...

    async def forget(self, instance: str) -> None:
        """This instance is stopping: leave the totals now."""
        ...

    async def live(self) -> dict[str, dict[str, int]]:
        """The figures of every instance that reported within its TTL."""
        ...


# -- observability -------------------------------------------------------------------------------


class EventMetrics(Protocol):
    """What the connection policy and sessions count (exported by ``observability``)."""

    def event_handled(self, event: str, outcome: str) -> None:
        """A client event answered: ``ok`` or its error code."""
        ...

    def rejected(self, reason: str) -> None:
        """A message or connection refused by a policy (rate limit, moderation, limits)."""
        ...


class MessageMetrics(Protocol):
    """What the consultations count."""

    def message_stored(self, role: str) -> None: ...

    def rated(self, score: int) -> None: ...


class ReplyMetrics(MessageMetrics, Protocol):
    """What the assistant's replies count."""

    def reply_finished(
        self, model: str | None, status: str, first_token_seconds: float | None, seconds: float
    ) -> None:
        """A stored reply: its model, status, time to its first token and its whole duration."""
        ...

    def ai_error(self, code: str, model: str | None) -> None: ...

    def fallback_used(self, failed_model: str) -> None:
        """A model failed before its first token and the next of the chain was asked."""
        ...

    def reply_grounded(self, grounding: str) -> None:
        """A stored reply's sources: cited, uncited (given, none cited) or none."""
        ...


class HandoffMetrics(MessageMetrics, Protocol):
    """What the operator handoff counts."""

    def handoff(self, step: str) -> None:
        """requested, accepted, released, closed, timed_out, requeued."""
        ...

    def queue_waited(self, seconds: float) -> None:
        """How long an accepted consultation waited for its operator."""
        ...

    def queue_length(self, tenant_id: str, length: int) -> None: ...


class NoMetrics:
    """Counts nothing: for services built without an exporter (unit tests, tools)."""

    def event_handled(self, event: str, outcome: str) -> None:
        return None

    def message_stored(self, role: str) -> None:
        return None

    def reply_finished(
        self, model: str | None, status: str, first_token_seconds: float | None, seconds: float
    ) -> None:
        return None

    def ai_error(self, code: str, model: str | None) -> None:
        return None

    def fallback_used(self, failed_model: str) -> None:
        return None

    def reply_grounded(self, grounding: str) -> None:
        return None

    def rejected(self, reason: str) -> None:
        return None

    def handoff(self, step: str) -> None:
        return None

    def queue_waited(self, seconds: float) -> None:
        return None

    def queue_length(self, tenant_id: str, length: int) -> None:
        return None

    def rated(self, score: int) -> None:
        return None
