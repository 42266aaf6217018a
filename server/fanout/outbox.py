"""One outbox per connection: every frame a connection is sent goes through it, in order.

It writes while the transport takes data and holds the rest, bounded in bytes. A connection
whose held frames pass the bound is a **slow consumer**: the outbox drops what it holds and
calls ``on_overflow`` once (the transport closes it: the client reconnects and catches up
from the store with ``lastSeq``). The other members of a room are never delayed by it: a
broadcast only appends to this queue.

The outbox writes through a :class:`Sink`, the transport's side of the connection:
``write_now`` takes a frame at once when the transport has room (a plain write into the
socket's buffer: no task, no await), ``write`` waits while it is full. Idle connections hold
no task: the drain task exists only while frames wait.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 1024 * 1024  # as Centrifugo's client queue
_EMPTY: deque[tuple[str | bytes, int]] = deque(maxlen=0)  # never appended to


class Sink(Protocol):
    """Where an outbox's frames go: one transport of one connection."""

    def write_now(self, data: str | bytes, frame: bytes | None) -> bool:
        """Write ``data`` at once if the transport has room; False to hold it. ``frame`` is
        the same data already framed for the wire (shared by a broadcast's recipients)."""
        ...

    async def write(self, data: str | bytes) -> None:
        """Write ``data``, waiting while the transport is full; raises when it is gone."""
        ...


class OutboxStats:
    """Totals over every outbox of this instance (read by the metrics)."""

    def __init__(self) -> None:
        self.slow_consumers = 0


class Outbox:
    __slots__ = (
        "_bytes",
        "_closed",
        "_drainer",
        "_hold",
        "_limit",
        "_on_overflow",
        "_queue",
        "sink",
        "stats",
    )

    def __init__(
        self,
        sink: Sink,
        limit: int,
        on_overflow: Callable[[], None],
        stats: OutboxStats | None = None,
    ) -> None:
        self.sink = sink
        self._limit = limit
        self._on_overflow = on_overflow
        self.stats = stats
        # Shared while empty: an idle connection holds no queue of its own.
        self._queue: deque[tuple[str | bytes, int]] = _EMPTY
        self._bytes = 0
        self._drainer: asyncio.Task[None] | None = None
        self._closed = False
        # While holding: how many queued frames may still go out before the held ones.
        self._hold: int | None = None

    @property
    def pending_bytes(self) -> int:
        """Bytes held, not yet given to the transport."""
        return self._bytes

    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, data: str | bytes, frame: bytes | None = None) -> None:
        """Queue ``data`` after everything sent before; never blocks."""
        if self._closed:
            return
        if (
            self._hold is None
            and self._drainer is None
            and not self._queue
            and self.sink.write_now(data, frame)
        ):
            return
        self._enqueue(len(self._queue), data, frame)

    def hold(self) -> None:
        """Frames sent from now on wait (in order) until :meth:`release`; ``send_ahead`` goes
        before them. Used while a frame another layer has queued must go out first."""
        if self._hold is None:
            self._hold = len(self._queue)

    def send_ahead(self, data: str | bytes) -> None:
        """While holding: ``data`` goes after the frames queued before the hold, ahead of the
        held ones. Otherwise the same as :meth:`send`."""
        if self._hold is None:
            self.send(data)
        elif not self._closed:
            self._hold += 1
            self._enqueue(self._hold - 1, data, None)

    def release(self) -> None:
        if self._hold is not None:
            self._hold = None
            self._start()

    @property
    def holding(self) -> bool:
        return self._hold is not None

    def _enqueue(self, position: int, data: str | bytes, frame: bytes | None) -> None:
        size = len(frame) if frame is not None else len(data)
        if self._queue is _EMPTY:
            self._queue = deque()
        self._queue.insert(position, (data, size))
        self._bytes += size
        if self._bytes > self._limit:
            self._overflow()
            return
        self._start()

    def _start(self) -> None:
        if self._drainer is None and self._queue and self._hold != 0:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())

    async def flushed(self) -> None:
        """Wait until what is held has been given to the transport (bound it with a timeout:
        a stalled reader never takes it)."""
        while (writer := self._drainer) is not None and not self._closed:
            await asyncio.wait({writer})

    def close(self) -> None:
        """Drop what is held and take nothing more (the connection is going away)."""
        self._closed = True
        self._hold = None
        self._queue = _EMPTY
        self._bytes = 0
        writer, self._drainer = self._drainer, None
        if writer is not None and writer is not asyncio.current_task():
            writer.cancel()

    def _overflow(self) -> None:
        held = self._bytes
        self.close()
        if self.stats is not None:
            self.stats.slow_consumers += 1
        log.warning("slow consumer: %d bytes waiting (limit %d): closing it", held, self._limit)
        self._on_overflow()

    async def _drain(self) -> None:
        try:
            while self._queue and self._hold != 0:
                data, size = self._queue[0]
                await self.sink.write(data)
                if self._closed:
                    return
                self._queue.popleft()
                self._bytes -= size
                if self._hold is not None:
                    self._hold -= 1
            if not self._queue:
                self._queue = _EMPTY
        except asyncio.CancelledError:
            raise
        except Exception:
            # The transport is gone: its close is under way and will detach the connection.
            self.close()
        finally:
            if self._drainer is asyncio.current_task():
                self._drainer = None
