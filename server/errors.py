"""One error hierarchy for the whole server.

Every error a client can see is an :class:`AppError` with a stable ``code``. Transports translate
them once, at their edge (``to_wire``); driver errors are translated where they occur
(``raise StorageUnavailable(...) from exc``) so no driver detail ever reaches a client.
"""

from __future__ import annotations

from typing import Any, ClassVar


class AppError(Exception):
    """Base of every error that is answered to a client."""

    code: ClassVar[str] = "internal_error"
    retryable: ClassVar[bool] = False
    default_message: ClassVar[str] = "Internal server error"

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or self.default_message
        self.details = details
        super().__init__(self.message)

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.retryable:
            wire["retryable"] = True
        wire.update(self.details)  # may override retryable for one instance
        if wire.get("retryable") is False:
            del wire["retryable"]
        return wire


class InvalidPayload(AppError):
    code = "invalid_payload"
    default_message = "The payload is not valid for this event"


class UnknownEvent(AppError):
    code = "unknown_event"
    default_message = "This event is not supported"


class Unauthorized(AppError):
    code = "unauthorized"
    default_message = "A valid token is required"


class Forbidden(AppError):
    code = "forbidden"
    default_message = "You may not access this consultation"


class NotJoined(AppError):
    code = "not_joined"
    default_message = "Join the consultation before sending to it"


class NotFound(AppError):
    code = "not_found"
    default_message = "Not found"


class RateLimited(AppError):
    code = "rate_limited"
    retryable = True
    default_message = "Too many messages, slow down"


class ContentRejected(AppError):
    code = "content_rejected"
    default_message = "This message was rejected by the content policy"


class TooManyConnections(AppError):
    code = "too_many_connections"
    retryable = True
    default_message = "Too many connections"


class TokenExpired(AppError):
    code = "token_expired"
    default_message = "The token has expired: reconnect with a fresh one"


class StorageUnavailable(AppError):
    code = "storage_unavailable"
    retryable = True
    default_message = "Storage is unavailable, please retry"


class CoordinationUnavailable(AppError):
    code = "coordination_unavailable"
    retryable = True
    default_message = "Cluster coordination is unavailable, please retry"


class AssistantUnavailable(AppError):
    code = "ai_unavailable"
    retryable = True
    default_message = "The assistant is unavailable right now"


class ReplyInterrupted(AssistantUnavailable):
    """The provider failed after some text had streamed: do not retry on another model."""

    default_message = "The assistant's reply was interrupted"


class InternalError(AppError):
    code = "internal_error"
