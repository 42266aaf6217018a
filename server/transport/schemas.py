"""Pydantic models of every client payload: the wire contract of namespace ``/chat``.

Unknown fields are ignored (older frontends send ``userId``/``tenantId``; they are tolerated and
never trusted). Types are strict: ``"5"`` is not a seq and ``true`` is not a number.
"""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from ..errors import InvalidPayload

ConsultationId = Annotated[
    StrictStr, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$")
]
ClientMessageId = Annotated[StrictStr, Field(min_length=1, max_length=128)]


class Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    @classmethod
    def parse(cls, data: Any) -> Self:
        if not isinstance(data, dict):
            raise InvalidPayload(f"expected an object, got {_json_type(data)}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InvalidPayload(_describe(exc)) from None


class JoinConsultation(Payload):
    consultationId: ConsultationId
    lastSeq: Annotated[StrictInt, Field(ge=0)] | None = None


class SendMessage(Payload):
    consultationId: ConsultationId
    # Length limits are the domain's (configurable); this bounds what is parsed at all.
    content: StrictStr
    clientMessageId: ClientMessageId | None = None


class LeaveConsultation(Payload):
    consultationId: ConsultationId


def _describe(exc: ValidationError) -> str:
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "payload"
    extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg']}{extra}"


def _json_type(value: Any) -> str:
    names = {
        type(None): "null",
        bool: "boolean",
        int: "number",
        float: "number",
        str: "string",
        list: "array",
    }
    return names.get(type(value), type(value).__name__)


class StopGeneration(Payload):
    consultationId: ConsultationId


class RefreshToken(Payload):
    token: Annotated[StrictStr, Field(min_length=1, max_length=8192)]
