"""Every client event answers an acknowledgement, even on failure.

python-socketio sends no ack when a handler raises, and the client then waits for its timeout.
``acknowledged`` turns a handler's result into ``{"ok": true, ...}`` and any error into
``{"ok": false, "error": {"code", "message"}}``, also emitted as ``error`` to that socket (for
frontends that listen for it), and the connection lives on.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from ..domain.consultations import ChatSession
from ..errors import AppError, InternalError, InvalidPayload, Unauthorized

log = logging.getLogger(__name__)

Ack = dict[str, Any]


class SessionOwner(Protocol):
    def session_of(self, sid: str) -> ChatSession | None: ...

    async def emit_error(self, sid: str, error: dict[str, Any]) -> None: ...


Owner = TypeVar("Owner", bound=SessionOwner)
Handler = Callable[[Owner, str, ChatSession, Any], Awaitable[Ack]]
Wrapped = Callable[..., Awaitable[Ack]]


def ok(**fields: Any) -> Ack:
    return {"ok": True, **fields}


def failed(error: AppError) -> Ack:
    return {"ok": False, "error": error.to_wire()}


def acknowledged(handler: Handler[Owner]) -> Wrapped:
    @functools.wraps(handler)
    async def wrapper(self: Owner, sid: str, *args: Any) -> Ack:
        try:
            session = self.session_of(sid)
            if session is None:
                raise Unauthorized("This connection has no session")
            if len(args) > 1:
                raise InvalidPayload("expected one payload object")
            return await handler(self, sid, session, args[0] if args else None)
        except AppError as exc:
            error = exc
        except Exception:
            log.exception("unexpected error in %s", handler.__name__)
            error = InternalError()
        await self.emit_error(sid, error.to_wire())
        return failed(error)

    return wrapper
