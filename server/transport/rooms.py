"""The room hub: the Rooms port for every transport, on every instance.

- **Members** are this instance's connections, whatever their transport (a Socket.IO socket,
  a plain WebSocket); each says how a :class:`Frame` reaches it.
- **Broadcasting** encodes an event once per wire format, delivers it to local members at once
  and, when there are other instances, publishes it on the room's broker channel. An instance
  subscribes to a room's channel when its first local member joins (confirmed before the join
  returns) and unsubscribes when the last one leaves: it never receives the traffic of rooms
  it has no member in.
- **No silent gaps.** Stored messages carry their consultation's ``seq``. Per room, the hub
  delivers them in ``seq`` order and once each: a message that arrives ahead of a missing one
  is held (with everything after it, so a reply's events keep their order) until the missing
  one arrives or, after ``hold_seconds``, is read from the store. After the broker reconnects
  (Redis was down: whatever was published meanwhile never arrived), every room is checked
  against the store. Clients connected through an outage thus end up with every message, in
  order, without reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..broker import Broker
from ..domain.events import AiChunk, ServerEvent
from .sinks import websocket_frame

log = logging.getLogger(__name__)

HOLD_SECONDS = 0.5  # how long a message waits for a missing one before the store is asked
STREAMS_REMEMBERED = 8  # replies per room whose chunk indexes are remembered
SYNC_WAIT_SECONDS = 5.0  # a first join that never syncs (it failed) releases the room
FILL_ATTEMPTS = 8


class Frame:
    """One server event, encoded lazily and at most once per wire format."""

    __slots__ = ("_eio", "_raw", "_raw_ws", "_sio", "_sio_ws", "data_json", "event")

    def __init__(self, event: str, data_json: str) -> None:
        self.event = event
        self.data_json = data_json
        self._sio: str | None = None
        self._eio: str | None = None
        self._sio_ws: bytes | None = None
        self._raw: str | None = None
        self._raw_ws: bytes | None = None

    @classmethod
    def of(cls, event: ServerEvent) -> Frame:
        return cls(event.name, json.dumps(event.to_wire(), separators=(",", ":")))

    def socketio_text(self, namespace: str) -> str:
        """The Socket.IO EVENT packet, as python-socketio encodes it."""
        if self._sio is None:
            self._sio = f'2{namespace},["{self.event}",{self.data_json}]'
        return self._sio

    def engineio_text(self, namespace: str) -> str:
        """The Engine.IO MESSAGE carrying that packet."""
        if self._eio is None:
            self._eio = "4" + self.socketio_text(namespace)
        return self._eio

    def socketio_ws(self, namespace: str) -> bytes:
        """The WebSocket frame carrying the Engine.IO message of that packet."""
        if self._sio_ws is None:
            self._sio_ws = websocket_frame(self.engineio_text(namespace).encode())
        return self._sio_ws

    def raw_text(self) -> str:
        """The plain-WebSocket frame text: ``{"event": name, "data": payload}``."""
        if self._raw is None:
            self._raw = f'{{"event":"{self.event}","data":{self.data_json}}}'
        return self._raw

    def raw_ws(self) -> bytes:
        if self._raw_ws is None:
            self._raw_ws = websocket_frame(self.raw_text().encode())
        return self._raw_ws


class Member(Protocol):
    """A local connection, as the hub sees it."""

    @property
    def id(self) -> str: ...

    def deliver(self, frame: Frame) -> None:
        """Send without blocking, after whatever this connection was sent before."""
        ...


GapFiller = Callable[[str, int], Awaitable[list[ServerEvent]]]
"""``(room, after_seq)`` → the stored messages of the room after that seq, as events."""


@dataclass
class _Pending:
    frame: Frame
    skip: str | None
    seq: int | None
    chunk: tuple[str, int] | None = None  # (message id, index) of a streamed chunk


@dataclass
class _Room:
    members: dict[str, Member] = field(default_factory=dict)
    subscribed: asyncio.Future[None] | None = None
    last_seq: int | None = None  # the newest seq delivered here
    held: deque[_Pending] = field(default_factory=deque)
    timer: asyncio.TimerHandle | None = None
    filling: bool = False
    syncing: bool = False  # a first join is reading history: hold what arrives
    floors: dict[str, int] = field(default_factory=dict)  # member -> seq its join returned
    waiting: dict[str, list[_Pending]] = field(default_factory=dict)  # joiners not synced
    chunks: dict[str, int] = field(default_factory=dict)  # message id -> last index delivered

    def seen_chunk(self, chunk: tuple[str, int]) -> bool:
        """True when this chunk was delivered here before (a takeover sends them again)."""
        message_id, index = chunk
        last = self.chunks.get(message_id, -1)
        if index <= last:
            return True
        self.chunks[message_id] = index
        while len(self.chunks) > STREAMS_REMEMBERED:
            del self.chunks[next(iter(self.chunks))]
        return False


class RoomHub:
    def __init__(
        self,
        broker: Broker,
        instance_id: str,
        *,
        gap_filler: GapFiller | None = None,
        hold_seconds: float = HOLD_SECONDS,
    ) -> None:
        self._broker = broker
        self.broker = broker
        self.instance_id = instance_id
        self._fill = gap_filler
        self._hold = hold_seconds
        self._members: dict[str, Member] = {}
        self._memberships: dict[str, set[str]] = {}  # connection id -> rooms
        self._rooms: dict[str, _Room] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.gaps_filled = 0  # messages read from the store because they never arrived

    def set_gap_filler(self, gap_filler: GapFiller) -> None:
        self._fill = gap_filler

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._broker.start(self.instance_id, self._receive, self.resync)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for room in self._rooms.values():
            if room.timer is not None:
                room.timer.cancel()
        await self._broker.stop()

    def state(self) -> str:
        return self._broker.state()

    # -- membership -----------------------------------------------------------------------------

    def attach(self, member: Member) -> None:
        self._members[member.id] = member
        self._memberships.setdefault(member.id, set())

    async def detach(self, connection_id: str) -> None:
        await self.leave_all(connection_id)
        self._members.pop(connection_id, None)
        self._memberships.pop(connection_id, None)

    def connection_ids(self) -> list[str]:
        return list(self._members)

    async def join(self, connection_id: str, room: str, *, ordered: bool = False) -> bool:
        """Add a member; True when it was not in the room. An ``ordered`` room (stored
        messages with a seq) holds what arrives until ``sync`` says where the store is."""
        member = self._members.get(connection_id)
        if member is None:
            return False  # gone while its join was on the way
        state = self._rooms.get(room)
        if state is None:
            state = self._rooms[room] = _Room(syncing=ordered)
            if ordered:
                # A join that never syncs (it failed) must not hold the room for long.
                loop = asyncio.get_running_loop()
                state.timer = loop.call_later(SYNC_WAIT_SECONDS, self._end_sync, room, state, None)
            if self._broker.distributed:
                state.subscribed = asyncio.ensure_future(
                    self._broker.subscribe(self._broker.room_channel(room))
                )
        added = connection_id not in state.members
        if ordered and not state.syncing:
            # Joining a room already here: its deliveries wait for its join's history read,
            # so none is sent twice (live and in the join's answer).
            state.waiting[connection_id] = []
            loop = asyncio.get_running_loop()
            loop.call_later(SYNC_WAIT_SECONDS, self._release, state, connection_id, None)
        state.members[connection_id] = member
        self._memberships.setdefault(connection_id, set()).add(room)
        if state.subscribed is not None:
            # Every later broadcast to the room reaches this member once this returns.
            await asyncio.shield(state.subscribed)
        return added

    async def leave(self, connection_id: str, room: str) -> None:
        rooms = self._memberships.get(connection_id)
        if rooms is not None:
            rooms.discard(room)
        state = self._rooms.get(room)
        if state is None or state.members.pop(connection_id, None) is None:
            return
        state.floors.pop(connection_id, None)
        state.waiting.pop(connection_id, None)
        if not state.members:
            del self._rooms[room]
            if state.timer is not None:
                state.timer.cancel()
            if self._broker.distributed:
                with contextlib.suppress(Exception):
                    await self._broker.unsubscribe(self._broker.room_channel(room))

    async def leave_all(self, connection_id: str) -> None:
        for room in list(self._memberships.get(connection_id, ())):
            await self.leave(connection_id, room)

    def members(self, room: str) -> list[str]:
        state = self._rooms.get(room)
        return list(state.members) if state else []

    def rooms(self) -> list[str]:
        return list(self._rooms)

    # -- delivery -------------------------------------------------------------------------------

    async def to_room(self, room: str, event: ServerEvent, *, skip: str | None = None) -> None:
        frame = Frame.of(event)
        seq = _seq_of(event)
        chunk = _chunk_of(event)
        state = self._rooms.get(room)
        if state is not None:
            self._arrive(room, state, _Pending(frame, skip, seq, chunk))
        if self._broker.distributed:
            header = [self.instance_id, "r", room, frame.event, skip, seq, chunk]
            self._broker.publish(self._broker.room_channel(room), _envelope(header, frame))

    async def to_connection(self, connection_id: str, event: ServerEvent) -> None:
        member = self._members.get(connection_id)
        if member is not None:
            member.deliver(Frame.of(event))
            return
        instance = connection_id.rpartition("@")[2]
        if self._broker.distributed and instance and instance != self.instance_id:
            frame = Frame.of(event)
            header = [self.instance_id, "c", connection_id, frame.event, None, None, None]
            self._broker.publish(self._broker.instance_channel(instance), _envelope(header, frame))

    def sync(self, room: str, head_seq: int, connection_id: str | None = None) -> None:
        """The store holds the room's messages up to ``head_seq`` (read by a join, after the
        subscription): count from there, or fetch what this instance's members lack. The
        joining connection has them all from its join: none is delivered to it again."""
        state = self._rooms.get(room)
        if state is None:
            return
        if connection_id is not None and connection_id in state.members:
            state.floors[connection_id] = head_seq
            self._release(state, connection_id, head_seq)
        if state.syncing:
            self._end_sync(room, state, head_seq)
        elif state.last_seq is None:
            state.last_seq = head_seq
        elif head_seq > state.last_seq and not state.held and not state.filling:
            self._start_fill(room, state)

    def _release(self, state: _Room, connection_id: str, head_seq: int | None) -> None:
        """A joiner's history read is done (or took too long): what waited for it goes out,
        but what its join returned."""
        waited = state.waiting.pop(connection_id, None)
        member = state.members.get(connection_id)
        if waited is None or member is None:
            return
        for pending in waited:
            if pending.seq is not None and head_seq is not None and pending.seq <= head_seq:
                continue
            if connection_id != pending.skip:
                member.deliver(pending.frame)

    def _end_sync(self, room: str, state: _Room, head_seq: int | None) -> None:
        """The joiner's history reaches ``head_seq``: what arrived meanwhile is delivered in
        order from there (older ones the joiner has from its history). Without a head (the
        join failed) they go out as they came."""
        if not state.syncing or self._rooms.get(room) is not state:
            return
        state.syncing = False
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None
        waiting, state.held = list(state.held), deque()
        if head_seq is not None:
            state.last_seq = max(head_seq, state.last_seq or 0)
        elif state.last_seq is None:  # no head: start before the oldest that came
            seqs = [p.seq for p in waiting if p.seq is not None]
            state.last_seq = min(seqs) - 1 if seqs else None
        for pending in waiting:  # in arrival order: seq gaps are waited for as usual
            self._arrive(room, state, pending)

    def _receive(self, payload: bytes) -> None:
        """A message from another instance (or our own, coming back: skipped)."""
        try:
            raw_header, _, data = payload.partition(b"\n")
            origin, kind, target, event, skip, seq, chunk = json.loads(raw_header)
            frame = Frame(str(event), data.decode())
            position = (str(chunk[0]), int(chunk[1])) if chunk else None
        except (ValueError, TypeError, UnicodeDecodeError):
            log.warning("dropped an undecodable broker message (%d bytes)", len(payload))
            return
        if origin == self.instance_id:
            return  # delivered locally when it was sent
        if kind == "c":
            member = self._members.get(str(target))
            if member is not None:
                member.deliver(frame)
            return
        state = self._rooms.get(str(target))
        if state is not None:
            self._arrive(str(target), state, _Pending(frame, skip, seq, position))

    # -- ordering -------------------------------------------------------------------------------

    def _arrive(self, room: str, state: _Room, pending: _Pending) -> None:
        if state.syncing:
            state.held.append(pending)  # until the joiner's history says where the store is
            return
        seq = pending.seq
        if seq is not None and state.last_seq is not None and seq <= state.last_seq:
            return  # already delivered here (a duplicate, or the store filled it in)
        if state.held:
            if seq is not None and state.last_seq is not None and seq == state.last_seq + 1:
                self._deliver(state, pending)  # the missing one: it goes first
                self._drain(state)
            else:
                _hold(state.held, pending)
            return
        if seq is None or state.last_seq is None or seq == state.last_seq + 1:
            self._deliver(state, pending)
            return
        state.held.append(pending)  # ahead of a missing message: wait for it
        loop = asyncio.get_running_loop()
        state.timer = loop.call_later(self._hold, self._start_fill, room, state)

    def _deliver(self, state: _Room, pending: _Pending) -> None:
        if pending.chunk is not None and state.seen_chunk(pending.chunk):
            return
        if pending.seq is not None:
            state.last_seq = pending.seq
        floors, waiting = state.floors, state.waiting
        for connection_id, member in list(state.members.items()):
            if waiting and connection_id in waiting:
                waiting[connection_id].append(pending)
                continue
            if floors and pending.seq is not None and pending.seq <= floors.get(connection_id, 0):
                continue  # it has this one from its join
            if connection_id != pending.skip:
                try:
                    member.deliver(pending.frame)
                except Exception:
                    log.exception("could not deliver %s to %s", pending.frame.event, member.id)

    def _drain(self, state: _Room) -> None:
        """Deliver held events up to the next missing seq."""
        while state.held:
            first = state.held[0]
            last = state.last_seq
            if first.seq is not None and last is not None and first.seq <= last:
                state.held.popleft()
            elif first.seq is None or last is None or first.seq == last + 1:
                self._deliver(state, state.held.popleft())
            else:
                return
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None

    def _start_fill(self, room: str, state: _Room) -> None:
        state.timer = None
        if state.filling or self._rooms.get(room) is not state:
            return
        state.filling = True
        task = asyncio.ensure_future(self._fill_gap(room, state))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fill_gap(self, room: str, state: _Room) -> None:
        try:
            for attempt in range(FILL_ATTEMPTS):
                if await self._fill_from_store(room, state):
                    return
                await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
            # The store cannot say what is missing: deliver what was held rather than hold
            # the room forever; rejoining with lastSeq still recovers the rest.
            log.warning("gap in %s not filled from the store: delivering what was held", room)
            while state.held:
                pending = state.held.popleft()
                if pending.seq is None or state.last_seq is None or pending.seq > state.last_seq:
                    self._deliver(state, pending)
        finally:
            state.filling = False

    async def _fill_from_store(self, room: str, state: _Room) -> bool:
        """Deliver the stored messages this instance missed; True when no gap is left."""
        last = state.last_seq
        if self._fill is None or last is None:
            return True
        try:
            stored = await self._fill(room, last)
        except Exception as exc:
            log.warning("could not read %s's missed messages: %s", room, exc)
            return False
        for event in stored:
            seq = _seq_of(event)
            if seq is None or state.last_seq is None or seq != state.last_seq + 1:
                continue
            if any(p.seq == seq for p in state.held):
                self._drain(state)  # it arrived meanwhile: delivered in turn
                continue
            self.gaps_filled += 1
            self._deliver(state, _Pending(Frame.of(event), None, seq))
            self._drain(state)
        self._drain(state)
        if state.held:
            first = state.held[0]
            return not (first.seq is not None and first.seq > (state.last_seq or 0) + 1)
        return True

    async def resync(self) -> None:
        """Check every room with local members against the store (after a broker outage)."""
        for room, state in list(self._rooms.items()):
            if state.last_seq is not None and not state.filling:
                state.filling = True
                try:
                    await self._fill_from_store(room, state)
                finally:
                    state.filling = False


def _hold(held: deque[_Pending], pending: _Pending) -> None:
    """Queue behind a gap, keeping stored messages in seq order: one that arrives after a
    later one goes before it (the queue is drained from its head)."""
    if pending.seq is not None:
        for position, waiting in enumerate(held):
            if waiting.seq is not None and waiting.seq > pending.seq:
                held.insert(position, pending)
                return
    held.append(pending)


def _chunk_of(event: ServerEvent) -> tuple[str, int] | None:
    if isinstance(event, AiChunk):
        return (event.message_id, event.index)
    return None


def _seq_of(event: ServerEvent) -> int | None:
    seq = getattr(event, "seq", None)
    return seq if isinstance(seq, int) and seq > 0 else None


def _envelope(header: list[Any], frame: Frame) -> bytes:
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + frame.data_json.encode()
