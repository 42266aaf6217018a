"""One error hierarchy for the whole server.

Every error a client can see is an :class:`AppError` with a stable ``code`` and the HTTP status
it maps to. Transports translate them once, at their edge (``to_wire`` for events and acks,
``http_status`` for REST); driver errors are translated where they occur
(``raise StorageUnavailable(...) from exc``) so no driver detail ever reaches a client.
"""

from __future__ import annotations

from typing import Any, ClassVar


class AppError(Exception):
    """Base of every error that is answered to a client."""

    code: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500
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
    """The payload does not match the event's schema or limits (``field`` names the field)."""

    code = "invalid_payload"
    http_status = 400
    default_message = "The payload is not valid for this event"


class PayloadTooLarge(AppError):
    """A body over its limit (a knowledge-base article over KNOWLEDGE_MAX_CHARS)."""

    code = "payload_too_large"
    http_status = 413
    default_message = "The payload is too large"


class UnknownEvent(AppError):
    """An event the namespace does not have."""

    code = "unknown_event"
    http_status = 404
    default_message = "This event is not supported"


class Unauthorized(AppError):
    """A bad or missing token (at connect, on REST)."""

    code = "unauthorized"
    http_status = 401
    default_message = "A valid token is required"


class Forbidden(AppError):
    """Not yours: another user's consultation, or an operator-only action."""

    code = "forbidden"
    http_status = 403
    default_message = "You may not access this consultation"


class NotJoined(AppError):
    """An event about a consultation this connection has not joined."""

    code = "not_joined"
    http_status = 409
    default_message = "Join the consultation before sending to it"


class NotFound(AppError):
    """REST or handoff: no such consultation in your tenant."""

    code = "not_found"
    http_status = 404
    default_message = "Not found"


class RateLimited(AppError):
    """Over the message rate; ``retryAfter`` says in how many seconds to retry."""

    code = "rate_limited"
    http_status = 429
    retryable = True
    default_message = "Too many messages, slow down"


class ContentRejected(AppError):
    """The message contains a blocklisted term; nothing was stored."""

    code = "content_rejected"
    http_status = 422
    default_message = "This message was rejected by the content policy"


class TooManyConnections(AppError):
    """Connect refused: the instance or the user is at its connection limit."""

    code = "too_many_connections"
    http_status = 429
    retryable = True
    default_message = "Too many connections"


class TokenExpired(AppError):
    """The connection's token expired without ``refreshToken``; it is then disconnected."""

    code = "token_expired"
    http_status = 401
    default_message = "The token has expired: reconnect with a fresh one"


class ConsultationClosed(AppError):
    """The consultation is closed: nothing more can be sent to it."""

    code = "consultation_closed"
    http_status = 409
    default_message = "This consultation is closed"


class AlreadyAssigned(AppError):
    """Another operator accepted the consultation first."""

    code = "already_assigned"
    http_status = 409
    default_message = "Another operator has already taken this consultation"


class OperatorAtCapacity(AppError):
    """The operator already holds ``OPERATOR_MAX_ACTIVE`` consultations."""

    code = "operator_at_capacity"
    http_status = 409
    default_message = "You already hold as many consultations as you may"


class InvalidState(AppError):
    """The consultation's mode does not allow this (e.g. accepting a closed one)."""

    code = "invalid_state"
    http_status = 409
    default_message = "The consultation is not in a state that allows this"


class AuthUnavailable(AppError):
    """The identity provider's keys (JWT_JWKS_URL) could not be fetched (retryable)."""

    code = "auth_unavailable"
    http_status = 503
    retryable = True
    default_message = "Token verification is unavailable, please retry"


class StorageUnavailable(AppError):
    """The database is unreachable; nothing was stored or broadcast (retryable)."""

    code = "storage_unavailable"
    http_status = 503
    retryable = True
    default_message = "Storage is unavailable, please retry"


class CoordinationUnavailable(AppError):
    """Redis could not be reached for an operation that needs it (retryable)."""

    code = "coordination_unavailable"
    http_status = 503
    retryable = True
    default_message = "Cluster coordination is unavailable, please retry"


class AssistantUnavailable(AppError):
    """No model of the chain could answer (retryable); the user's message is kept."""

    code = "ai_unavailable"
    http_status = 503
    retryable = True
    default_message = "The assistant is unavailable right now"


class ReplyInterrupted(AssistantUnavailable):
    """The provider failed after some text had streamed: do not retry on another model."""

    default_message = "The assistant's reply was interrupted"


class HistoryGap(AppError):
    """Messages after ``afterSeq`` (up to ``beforeSeq`` when known) may be missing here: the
    store could not be read to deliver them. The server keeps trying and delivers them in
    order; a rejoin with ``lastSeq`` fetches them too (retryable)."""

    code = "history_gap"
    http_status = 503
    retryable = True
    default_message = "Some messages could not be delivered yet: they will follow"


class InternalError(AppError):
    """A bug on our side; the connection stays up."""

    code = "internal_error"


def error_classes() -> list[type[AppError]]:
    """Every concrete error class, each code once (for documentation and its tests)."""
    seen: dict[str, type[AppError]] = {}
    pending: list[type[AppError]] = list(AppError.__subclasses__())
    while pending:
        cls = pending.pop(0)
        seen.setdefault(cls.code, cls)
        pending.extend(cls.__subclasses__())
    return list(seen.values())
