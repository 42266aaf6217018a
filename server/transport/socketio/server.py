"""The Socket.IO server, built from settings.

python-socketio runs in its documented ASGI mode behind :mod:`.bridge`, which owns the
connections (outbox, closes, the protocol edge). permessage-deflate is configurable and off by
default (every browser asks for it: it costs CPU and ~90 KB of memory per connection for small
chat frames).
"""

from __future__ import annotations

import logging
from typing import Any

import socketio

log = logging.getLogger(__name__)


class ClientErrorLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The logger given to python-socketio/engineio. What they log at ERROR is a client's bad
    request (a bare ``GET /socket.io/``, an unknown sid, a bad transport), said once: a WARNING
    here, without traceback. What they log at INFO is a protocol trace of every packet, auth
    and message text included: dropped, since message text and tokens never reach our logs
    (repeats of a client error are among them). Their bugs still log with a traceback
    (``exception``). Passing a logger object also keeps them from adding their own handler,
    which printed every line twice."""

    REPEATS = " (further occurrences of this error will be logged with level INFO)"

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})

    def error(self, msg: object, *args: Any, **kwargs: Any) -> None:
        kwargs.pop("exc_info", None)
        if isinstance(msg, str):
            msg = msg.replace(self.REPEATS, " (repeats are not logged)")
        self.log(logging.WARNING, msg, *args, **kwargs)

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        return None


def create_server(
    *,
    allowed_origins: list[str] | str | None,
    ping_interval: float,
    ping_timeout: float,
    max_http_buffer_size: int,
) -> socketio.AsyncServer:
    return socketio.AsyncServer(
        async_mode="asgi",
        cors_allowed_origins=allowed_origins,
        # Events of one socket run in the order they were sent (a send emitted right after a
        # join must find the join done); AI replies run as their own tasks, so nothing slow
        # holds a socket.
        async_handlers=False,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        max_http_buffer_size=max_http_buffer_size,
        logger=ClientErrorLogger(logging.getLogger("socketio.server")),
        engineio_logger=ClientErrorLogger(logging.getLogger("engineio.server")),
    )
