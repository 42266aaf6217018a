"""The event catalogue: every client event (its payload, its acknowledgement, the server events
it can cause) and every server event (its payload), as typed models.

The domain emits :class:`ServerEvent` instances; each transport serializes them (camelCase on
the wire); ``/ws/handlers``, ``/asyncapi.json``, README's tables and the tests read
:data:`CATALOGUE`. Adding an event means one entry here (and its handler).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel

from ..errors import InvalidPayload
from .models import Author, CannedReply, Message, Mode, PageContext

# -- client payloads -----------------------------------------------------------------------------

CONSULTATION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$"
ConsultationId = Annotated[
    StrictStr,
    Field(
        min_length=1,
        max_length=128,
        pattern=CONSULTATION_ID_PATTERN,
        description="1–128 characters of A–Z a–z 0–9 . _ : @ -, starting with a letter or digit",
    ),
]
ClientMessageId = Annotated[StrictStr, Field(min_length=1, max_length=128)]

# Messages for people, by field and pydantic error type; the machine-readable name of the field
# goes in the error's ``field``.
_READABLE = {
    ("consultationId", "string_pattern_mismatch"): (
        "consultationId may only contain letters, digits and . _ : @ - "
        "and must start with a letter or digit"
    ),
}


class Payload(BaseModel):
    """A client event's payload. Unknown fields are ignored (older frontends send ``userId`` and
    ``tenantId``: tolerated, never trusted). Types are strict: ``"5"`` is not a number."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    @classmethod
    def parse(cls, data: Any) -> Self:
        if data is None and not any(f.is_required() for f in cls.model_fields.values()):
            data = {}
        if not isinstance(data, dict):
            raise InvalidPayload(f"The payload must be an object, not {_json_type(data)}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise _invalid(exc) from None


MAX_CONTEXT_BYTES = 2048
MAX_CONTEXT_ATTRIBUTES = 20


class PageIn(Payload):
    url: Annotated[StrictStr, Field(min_length=1, max_length=2048)]
    title: Annotated[StrictStr, Field(max_length=500)] | None = None


AttributeName = Annotated[StrictStr, Field(min_length=1, max_length=64)]
AttributeValue = StrictBool | StrictInt | StrictFloat | Annotated[StrictStr, Field(max_length=500)]


class ContextIn(Payload):
    """Where the person is: the page (and what it shows), as the client says. Untrusted: shown
    to operators, given to the assistant as data."""

    page: PageIn | None = None
    attributes: dict[AttributeName, AttributeValue] | None = Field(
        default=None, max_length=MAX_CONTEXT_ATTRIBUTES, description="at most 20"
    )

    @model_validator(mode="after")
    def _small(self) -> Self:
        size = len(json.dumps(self.model_dump(exclude_none=True), ensure_ascii=False).encode())
        if size > MAX_CONTEXT_BYTES:
            raise ValueError(f"is {size} bytes as JSON, more than {MAX_CONTEXT_BYTES}")
        return self

    def stored(self) -> PageContext:
        return PageContext.model_validate(self.model_dump(exclude_none=True))


CONTEXT_DESCRIPTION = (
    "optional {page?: {url, title?}, attributes?: {name: string|number|boolean}}: at most 2 kB "
    "as JSON and 20 attributes; the latest is kept on the consultation"
)


class JoinConsultation(Payload):
    consultationId: ConsultationId
    lastSeq: Annotated[StrictInt, Field(ge=0)] | None = Field(
        default=None, description="the last seq the client has: the ack lists what follows"
    )
    context: ContextIn | None = Field(default=None, description=CONTEXT_DESCRIPTION)


class SendMessage(Payload):
    consultationId: ConsultationId
    # Length limits are the domain's (configurable); this bounds what is parsed at all.
    content: Annotated[StrictStr, Field(description="1 to MAX_MESSAGE_CHARS characters")]
    clientMessageId: ClientMessageId | None = Field(
        default=None, description="makes the send idempotent within the consultation"
    )
    context: ContextIn | None = Field(default=None, description=CONTEXT_DESCRIPTION)


class LeaveConsultation(Payload):
    consultationId: ConsultationId


class StopGeneration(Payload):
    consultationId: ConsultationId


class RefreshToken(Payload):
    token: Annotated[StrictStr, Field(min_length=1, max_length=8192)]


class RequestOperator(Payload):
    consultationId: ConsultationId
    reason: Annotated[StrictStr, Field(max_length=500)] | None = Field(
        default=None, description="why a human is needed, shown to operators"
    )


class AcceptConsultation(Payload):
    consultationId: ConsultationId


class ReleaseConsultation(Payload):
    consultationId: ConsultationId


class CloseConsultation(Payload):
    consultationId: ConsultationId


class GetOperatorQueue(Payload):
    pass


class GetCannedReplies(Payload):
    pass


class RateConsultation(Payload):
    consultationId: ConsultationId
    score: Annotated[StrictInt, Field(ge=1, le=5, description="1 (poor) to 5 (excellent)")]
    comment: Annotated[StrictStr, Field(max_length=1000)] | None = Field(
        default=None, description="optional, at most 1000 characters"
    )


class Typing(Payload):
    consultationId: ConsultationId
    isTyping: bool


def _invalid(exc: ValidationError) -> InvalidPayload:
    first = exc.errors(include_url=False, include_input=False)[0]
    loc = [str(part) for part in first["loc"]]
    kind = first["type"]
    if loc[:2] == ["context", "attributes"] and len(loc) > 3:  # a union member's name
        loc, kind = loc[:3], "attribute_type"
    field = ".".join(loc)
    if kind == "attribute_type":
        message = f"{field} must be a string, a number or a boolean"
    elif kind == "too_long" and field == "context.attributes":
        message = f"context.attributes may hold at most {MAX_CONTEXT_ATTRIBUTES} attributes"
    elif kind == "model_type":
        message = f"{field} must be an object"
    elif (field, kind) in _READABLE:
        message = _READABLE[(field, kind)]
    elif kind == "missing":
        message = f"{field} is required"
    elif kind in {"string_type", "int_type", "bool_type", "dict_type", "list_type"}:
        expected = {"string_type": "a string", "int_type": "an integer"}.get(kind, kind[:-5])
        message = f"{field} must be {expected}"
    elif kind == "string_too_short":
        message = f"{field} must not be empty"
    elif kind == "string_too_long":
        message = f"{field} is longer than {first['ctx']['max_length']} characters"
    elif kind in {"greater_than_equal", "less_than_equal"}:
        bound = first["ctx"].get("ge", first["ctx"].get("le"))
        word = "at least" if kind == "greater_than_equal" else "at most"
        message = f"{field} must be {word} {bound}"
    else:
        message = f"{field}: {re.sub(r'^(Value error|Input should be), ?', '', first['msg'])}"
    return InvalidPayload(message, field=field or None)


def _json_type(value: Any) -> str:
    names = {
        type(None): "null",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
    }
    return names.get(type(value), type(value).__name__)


# -- server events -------------------------------------------------------------------------------


def _wire_required(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    """In the schema, what the wire always carries is required: every field but those that
    default to None (left out when None)."""
    optional = {to_camel(name) for name, info in cls.model_fields.items() if info.default is None}
    everything = [to_camel(name) for name in cls.model_fields]
    schema["required"] = [name for name in everything if name not in optional]


class Wire(BaseModel):
    """A payload sent to clients: snake_case here, camelCase on the wire; None is left out."""

    model_config = ConfigDict(
        frozen=True,
        alias_generator=to_camel,
        validate_by_name=True,
        json_schema_extra=_wire_required,
    )

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ServerEvent(Wire):
    """One emission of a server event; the class is its catalogue entry."""

    name: ClassVar[str]
    summary: ClassVar[str]

    @classmethod
    def payload_schema(cls) -> dict[str, Any]:
        return cls.model_json_schema(by_alias=True, mode="serialization")


class MessageEvent(ServerEvent):
    """A stored message: the payload is the message itself."""

    message: Message

    def to_wire(self) -> dict[str, Any]:
        return self.message.to_wire()

    @classmethod
    def payload_schema(cls) -> dict[str, Any]:
        return Message.model_json_schema(by_alias=True, mode="serialization")

    @property
    def seq(self) -> int:
        return self.message.seq


class UserMessage(MessageEvent):
    name = "userMessage"
    summary = "A stored user message, to the room except the sending connection (it has the ack)"


class AiMessage(MessageEvent):
    name = "aiMessage"
    summary = "The stored reply, after its last aiChunk; id equals the chunks' messageId"


class SystemMessage(MessageEvent):
    name = "systemMessage"
    summary = (
        "A stored record of a change of the consultation (role system: an operator was "
        "asked for, joined, left; the consultation closed), in the history with its seq"
    )


def message_event(message: Message) -> MessageEvent:
    """The event that broadcasts a stored message."""
    if message.role is Author.ASSISTANT:
        return AiMessage(message=message)
    if message.role is Author.SYSTEM:
        return SystemMessage(message=message)
    return UserMessage(message=message)


class AiThinking(ServerEvent):
    name = "aiThinking"
    summary = "A reply starts (processing) or ends (done), whatever its outcome"
    consultation_id: str
    status: Literal["processing", "done"]


class AiChunk(ServerEvent):
    name = "aiChunk"
    summary = (
        "Streamed reply text, index from 0; the last has isComplete: true; all contents "
        "concatenated equal the stored reply"
    )
    consultation_id: str
    message_id: str
    index: int
    content: str
    is_complete: bool


class ErrorEvent(ServerEvent):
    name = "error"
    summary = (
        "An error for the room (ai_unavailable, history_gap) or for one connection (its "
        "failed event, token_expired)"
    )
    model_config = ConfigDict(extra="allow")  # codes add their own details (retryAfter …)
    code: str
    message: str
    consultation_id: str | None = None
    retryable: bool | None = None
    field: str | None = None


class RateWarning(ServerEvent):
    name = "rateWarning"
    summary = "To the sending connection, from 80% of the message rate limit"
    limit: int
    remaining: int
    window_seconds: float


class Operator(Wire):
    id: str
    name: str


class ConsultationUpdated(ServerEvent):
    name = "consultationUpdated"
    summary = (
        "The consultation's mode changed (ai, waiting, operator, closed), or its owner (a "
        "visitor signed in: ownerId); to the room"
    )
    consultation_id: str
    mode: Mode
    operator: Operator | None = None
    queue_position: int | None = None
    owner_id: str | None = None


class SupportPending(ServerEvent):
    name = "supportPending"
    summary = "To the owner's connections: waiting for an operator, at this place in the queue"
    consultation_id: str
    queue_position: int


class QueueItem(Wire):
    consultation_id: str
    user_id: str
    user_name: str | None = None  # the name the customer's token gives
    user_role: str  # "visitor" for an anonymous visitor from the website widget
    reason: str | None = None
    preview: str | None = None  # the first question, cut to 140 characters
    waiting_since: str
    position: int
    page: dict[str, str] | None = None  # {url, title?}: where the person came from


class NewSupportRequest(ServerEvent):
    name = "newSupportRequest"
    summary = "To the tenant's operators: a consultation asks for a human"
    consultation_id: str
    user_id: str
    reason: str | None = None
    waiting_since: str
    preview: str


class OperatorQueue(ServerEvent):
    name = "operatorQueue"
    summary = (
        "To the tenant's operators, at connect and whenever the queue changes: every waiting "
        "consultation, in the order they will be served"
    )
    items: list[QueueItem]


class OperatorJoined(ServerEvent):
    name = "operatorJoined"
    summary = "An operator took the consultation over; the assistant is silent until released"
    consultation_id: str
    operator: Operator


class TypingEvent(ServerEvent):
    name = "typing"
    summary = "Someone in the room is typing (or stopped; cleared by the server after ~5 s)"
    consultation_id: str
    user_id: str
    role: str
    # The name the person chose (an operator's display name, shown as "Dana is typing…").
    display_name: str | None = None
    is_typing: bool


class UserOnline(ServerEvent):
    name = "userOnline"
    summary = "A participant's first connection joined the room (any instance)"
    consultation_id: str
    user_id: str
    role: str


class UserOffline(ServerEvent):
    name = "userOffline"
    summary = "A participant's last connection left the room (any instance)"
    consultation_id: str
    user_id: str
    role: str


# -- acknowledgements ----------------------------------------------------------------------------


class Ack(Wire):
    ok: Literal[True] = True


class ErrorAck(Wire):
    ok: Literal[False] = False
    error: dict[str, Any]


class StreamingPartial(Wire):
    message_id: str
    content: str
    index: int = Field(description="index of the last chunk included in content")


class Participant(Wire):
    user_id: str
    role: str


class JoinAck(Ack):
    consultation: dict[str, Any]
    messages: list[Message]
    streaming: StreamingPartial | None = None
    online: list[Participant] = Field(default_factory=list)
    greeting: str | None = None  # the tenant's, when the consultation has no message yet

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "ok": True,
            "consultation": self.consultation,
            "messages": [m.to_wire() for m in self.messages],
            "online": [p.to_wire() for p in self.online],
        }
        if self.streaming is not None:
            wire["streaming"] = self.streaming.to_wire()
        if self.greeting is not None:
            wire["greeting"] = self.greeting
        return wire


class SendAck(Ack):
    message: Message

    def to_wire(self) -> dict[str, Any]:
        return {"ok": True, "message": self.message.to_wire()}


class LeaveAck(Ack):
    left: bool


class StopAck(Ack):
    stopping: bool


class RefreshAck(Ack):
    expires_at: str | None


class ConsultationAck(Ack):
    consultation: dict[str, Any]
    queue_position: int | None = None


class QueueAck(Ack):
    items: list[QueueItem]


class TypingAck(Ack):
    pass


class CannedRepliesAck(Ack):
    replies: list[CannedReply]


# -- the catalogue -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientEvent:
    name: str
    payload: type[Payload]
    ack: type[Wire]
    handler: str  # the ChatSession method that answers it
    causes: tuple[type[ServerEvent], ...]
    summary: str


@dataclass(frozen=True)
class Catalogue:
    client: tuple[ClientEvent, ...]
    server: tuple[type[ServerEvent], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {e.name: e for e in self.client})

    def client_event(self, name: str) -> ClientEvent | None:
        found: ClientEvent | None = self.__dict__["_by_name"].get(name)
        return found

    @property
    def client_names(self) -> frozenset[str]:
        return frozenset(e.name for e in self.client)


CATALOGUE = Catalogue(
    client=(
        ClientEvent(
            "joinConsultation",
            JoinConsultation,
            JoinAck,
            "join",
            (),
            "Join the room (creating the consultation, owned by the caller, when new); the ack "
            "has the last 50 messages, or all after lastSeq, and the reply streaming right now",
        ),
        ClientEvent(
            "sendMessage",
            SendMessage,
            SendAck,
            "send",
            (UserMessage, AiThinking, AiChunk, AiMessage, RateWarning, ErrorEvent),
            "Store a message in a joined consultation and broadcast it; the assistant answers",
        ),
        ClientEvent(
            "leaveConsultation",
            LeaveConsultation,
            LeaveAck,
            "leave",
            (),
            "Leave the room",
        ),
        ClientEvent(
            "stopGeneration",
            StopGeneration,
            StopAck,
            "stop",
            (AiChunk, AiMessage, AiThinking),
            "Stop the reply streaming in a joined consultation, on whichever instance runs it",
        ),
        ClientEvent(
            "refreshToken",
            RefreshToken,
            RefreshAck,
            "refresh",
            (),
            "A fresh token for the same user and tenant, before the current one expires",
        ),
        ClientEvent(
            "requestOperator",
            RequestOperator,
            ConsultationAck,
            "request_operator",
            (ConsultationUpdated, SystemMessage, SupportPending, NewSupportRequest, OperatorQueue),
            "The owner asks for a human operator: the consultation waits in the tenant's queue",
        ),
        ClientEvent(
            "acceptConsultation",
            AcceptConsultation,
            JoinAck,
            "accept",
            (
                *(AiChunk, AiMessage, AiThinking, SystemMessage, ConsultationUpdated),
                *(OperatorJoined, UserOnline, OperatorQueue, SupportPending),
            ),
            "An operator (or admin) of the tenant takes the consultation over: exactly one "
            "wins (already_assigned for the others); the ack is a join's",
        ),
        ClientEvent(
            "releaseConsultation",
            ReleaseConsultation,
            ConsultationAck,
            "release",
            (SystemMessage, ConsultationUpdated),
            "The assigned operator (or an admin) hands the consultation back to the assistant",
        ),
        ClientEvent(
            "closeConsultation",
            CloseConsultation,
            ConsultationAck,
            "close",
            (SystemMessage, ConsultationUpdated, OperatorQueue),
            "The owner, the assigned operator or an admin closes it: later sends are refused",
        ),
        ClientEvent(
            "getOperatorQueue",
            GetOperatorQueue,
            QueueAck,
            "operator_queue",
            (),
            "Operators and admins: the tenant's queue, in the order it will be served",
        ),
        ClientEvent(
            "getCannedReplies",
            GetCannedReplies,
            CannedRepliesAck,
            "canned_replies",
            (),
            "Operators and admins: the tenant's canned replies ({shortcut, text}), inserted "
            "with /shortcut",
        ),
        ClientEvent(
            "rateConsultation",
            RateConsultation,
            ConsultationAck,
            "rate",
            (),
            "The owner rates the consultation 1-5 (with an optional comment); rating again "
            "replaces the score",
        ),
        ClientEvent(
            "typing",
            Typing,
            TypingAck,
            "typing",
            (TypingEvent,),
            "I am typing (or stopped) in a joined consultation; the others of the room are told",
        ),
    ),
    server=(
        UserMessage,
        AiThinking,
        AiChunk,
        AiMessage,
        SystemMessage,
        ErrorEvent,
        RateWarning,
        ConsultationUpdated,
        SupportPending,
        NewSupportRequest,
        OperatorQueue,
        OperatorJoined,
        TypingEvent,
        UserOnline,
        UserOffline,
    ),
)
