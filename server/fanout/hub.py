"""The room hub: the Rooms port for every transport, on every instance.

- **Members** are this instance's connections, whatever their transport (a Socket.IO socket,
  a plain WebSocket); each says how a :class:`~.frames.Frame` reaches it (its transport's
  codec encodes a frame once, for every recipient of that transport).
- **Broadcasting** delivers to local members at once and, when there are other instances,
  publishes on the room's broker channel. An instance subscribes to a room's channel when its
  first local member joins (confirmed before the join returns) and unsubscribes when the last
  one leaves: it never receives the traffic of rooms it has no member in.
- **No silent gaps.** Per room, a :class:`~.ordering.RoomOrder` decides what goes out, in
  ``seq`` order and once each. A message held ahead of a missing one waits ``hold_seconds``
  for it; then the missing ones are read from the message history (a port, given at
  construction). After the broker reconnects (Redis was down: whatever was published
  meanwhile never arrived), every room is checked against the store. Clients connected
  through an outage thus end up with every message, in order, without reconnecting.
- **Joiners** of an ordered room each get their own hold, the room's first joiner included:
  what arrives while their join reads history waits for it, so nothing is sent both live and
  in the join's answer. Concurrent joins read the store at different moments: when the first
  history read ends the room's own hold, what it released as already stored still goes to the
  joiners still reading, and a joiner whose read turns out older than what the room has
  delivered since reads the difference from the store before its hold is released. Each
  joiner thus gets every seq once, in its join's answer or live, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..broker import Broker
from ..domain.events import AiChunk, ErrorEvent, MessageEvent, ServerEvent
from ..domain.models import ConsultationKey
from ..errors import HistoryGap
from .frames import Frame
from .ordering import Arrival, RoomOrder

log = logging.getLogger(__name__)

HOLD_SECONDS = 0.5  # how long a message waits for a missing one before the store is asked
SYNC_WAIT_SECONDS = 5.0  # a first join that never syncs (it failed) releases the room
FILL_ATTEMPTS = 8  # reads that succeed but still lack a message, before giving up on it
RETRY_MAX_SECONDS = 5.0  # backoff cap while the store cannot be read
HEAD_CHECK_SECONDS = 2.0  # a quiet room's stored head is compared with what it delivered
ACTIVE_SECONDS = 60.0  # ... this long after its last activity
HEAD_CHECK_BATCH = 50  # store reads at once
MAX_HELD = 1000  # messages held behind a gap before the room delivers past it
MAX_SENDING = 10_000  # senders remembered for messages not yet broadcast (failed sends linger)


class Member(Protocol):
    """A local connection, as the hub sees it."""

    @property
    def id(self) -> str: ...

    def deliver(self, frame: Frame) -> None:
        """Send without blocking, after whatever this connection was sent before."""
        ...


class History(Protocol):
    """The stored messages of a room, for filling gaps."""

    async def missed(self, room: str, after_seq: int) -> list[ServerEvent]:
        """The room's stored messages after ``after_seq``, as the events that broadcast them."""
        ...

    async def head(self, room: str) -> int:
        """The newest stored seq of the room (0 when none)."""
        ...


@dataclass(frozen=True)
class _Delivery:
    frame: Frame
    skip: str | None  # the connection that must not receive it (its sender)


@dataclass
class _Room:
    order: RoomOrder[_Delivery]
    members: dict[str, Member] = field(default_factory=dict)
    subscribed: asyncio.Future[None] | None = None
    timer: asyncio.TimerHandle | None = None
    filling: bool = False
    floors: dict[str, int] = field(default_factory=dict)  # member -> seq its join returned
    waiting: dict[str, list[Arrival[_Delivery]]] = field(default_factory=dict)  # not synced
    active_at: float = field(default_factory=time.monotonic)  # last arrival or join
    told: tuple[int, int | None] | None = None  # the gap its members were told about


class RoomHub:
    def __init__(
        self,
        broker: Broker,
        instance_id: str,
        *,
        history: History | None = None,
        hold_seconds: float = HOLD_SECONDS,
    ) -> None:
        self.broker = broker
        self.instance_id = instance_id
        self._history = history
        self._hold = hold_seconds
        self._members: dict[str, Member] = {}
        self._memberships: dict[str, set[str]] = {}  # connection id -> rooms
        self._rooms: dict[str, _Room] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # message id -> the local connection storing it, until its broadcast (``sending``)
        self._senders: dict[str, str] = {}
        self.gaps_filled = 0  # messages read from the store because they never arrived

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.broker.start(self.instance_id, self._receive, self.resync)
        if self.broker.distributed and self._history is not None:
            self._spawn(self._watch_heads())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for room in self._rooms.values():
            if room.timer is not None:
                room.timer.cancel()
        await self.broker.stop()

    def state(self) -> str:
        return self.broker.state()

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
            state = self._rooms[room] = _Room(RoomOrder(syncing=ordered))
            if ordered:
                # A join that never syncs (it failed) must not hold the room for long.
                loop = asyncio.get_running_loop()
                state.timer = loop.call_later(SYNC_WAIT_SECONDS, self._end_sync, room, state, None)
            if self.broker.distributed:
                state.subscribed = asyncio.ensure_future(
                    self.broker.subscribe(self.broker.room_channel(room))
                )
        if ordered and connection_id not in state.waiting:
            # Its deliveries wait for its join's history read, so none is sent twice (live and
            # in the join's answer) and none is missed. A read that never ends (the join
            # failed) must not hold the member for long. A join repeated while the first is
            # still reading (its client gave up waiting) keeps the same hold: what it holds
            # is for whichever answer the client takes.
            waited: list[Arrival[_Delivery]] = []
            state.waiting[connection_id] = waited
            loop = asyncio.get_running_loop()
            loop.call_later(
                SYNC_WAIT_SECONDS, self._release_stuck, room, state, connection_id, waited
            )
        state.active_at = time.monotonic()
        added = connection_id not in state.members
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
            if self.broker.distributed:
                with contextlib.suppress(Exception):
                    await self.broker.unsubscribe(self.broker.room_channel(room))

    async def leave_all(self, connection_id: str) -> None:
        for room in list(self._memberships.get(connection_id, ())):
            await self.leave(connection_id, room)

    def members(self, room: str) -> list[str]:
        state = self._rooms.get(room)
        return list(state.members) if state else []

    def rooms(self) -> list[str]:
        return list(self._rooms)

    # -- delivery -------------------------------------------------------------------------------

    def sending(self, connection_id: str, message_id: str) -> None:
        """A message a local connection is storing: if a gap fill reads it from the store
        before its broadcast (``to_room(..., skip=connection_id)``) reaches the room, the fill
        skips that connection too. A send that fails (or was a retry, answered with the
        original) never broadcasts: its entry is forgotten in turn, oldest first."""
        self._senders[message_id] = connection_id
        while len(self._senders) > MAX_SENDING:
            del self._senders[next(iter(self._senders))]

    async def to_room(self, room: str, event: ServerEvent, *, skip: str | None = None) -> None:
        if self._senders:
            message_id = _message_id_of(event)
            if message_id is not None:
                self._senders.pop(message_id, None)
        frame = Frame.of(event)
        seq = _seq_of(event)
        chunk = _chunk_of(event)
        state = self._rooms.get(room)
        if state is not None:
            self._arrive(room, state, Arrival(_Delivery(frame, skip), seq, chunk))
        if self.broker.distributed:
            header = [self.instance_id, "r", room, frame.event, skip, seq, chunk]
            self.broker.publish(self.broker.room_channel(room), _envelope(header, frame))

    async def to_connection(self, connection_id: str, event: ServerEvent) -> None:
        member = self._members.get(connection_id)
        if member is not None:
            member.deliver(Frame.of(event))
            return
        instance = connection_id.rpartition("@")[2]
        if self.broker.distributed and instance and instance != self.instance_id:
            frame = Frame.of(event)
            header = [self.instance_id, "c", connection_id, frame.event, None, None, None]
            self.broker.publish(self.broker.instance_channel(instance), _envelope(header, frame))

    def sync(self, room: str, head_seq: int, connection_id: str | None = None) -> None:
        """The store holds the room's messages up to ``head_seq`` (read by a join, after the
        subscription): count from there, or fetch what this instance's members lack. The
        joining connection has them all from its join: none is delivered to it again."""
        state = self._rooms.get(room)
        if state is None:
            return
        if state.order.syncing:
            self._end_sync(room, state, head_seq)
        if connection_id is not None and connection_id in state.members:
            state.floors[connection_id] = head_seq
            self._release(room, state, connection_id, head_seq)
        if state.order.behind(head_seq) and not state.filling:
            self._start_fill(room, state)

    def _release(self, room: str, state: _Room, connection_id: str, head_seq: int) -> None:
        """A joiner's history read is done: what waited for it goes out, but what its join
        returned. If the room delivered messages after ``head_seq`` that never reached this
        joiner's hold (its read was older than another joiner's), they are read from the
        store first, and the hold lasts until then."""
        waited = state.waiting.get(connection_id)
        if waited is None:
            return
        last = state.order.last_seq
        held = {a.seq for a in waited if a.seq is not None}
        if last is not None and any(s not in held for s in range(head_seq + 1, last + 1)):
            task = asyncio.ensure_future(
                self._release_after_reading(room, state, connection_id, waited, head_seq)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        self._hand_over(state, connection_id, waited, head_seq)

    async def _release_after_reading(
        self,
        room: str,
        state: _Room,
        connection_id: str,
        waited: list[Arrival[_Delivery]],
        head_seq: int,
    ) -> None:
        stored: list[ServerEvent] = []
        attempt = 0
        while self._history is not None and state.waiting.get(connection_id) is waited:
            try:
                stored = await self._history.missed(room, head_seq)
                break
            except Exception as exc:
                log.warning("could not read %s's messages for a joiner: %s", room, exc)
                if attempt == 0:
                    self._tell_gap(room, state, head_seq, state.order.last_seq, connection_id)
                await asyncio.sleep(min(0.2 * 2**attempt, RETRY_MAX_SECONDS))
                attempt += 1
        if state.waiting.get(connection_id) is not waited:
            return  # it left meanwhile
        fill = self._read_arrivals(stored)
        self.gaps_filled += len(fill)
        self._hand_over(state, connection_id, waited, head_seq, stored=fill)

    def _release_stuck(
        self, room: str, state: _Room, connection_id: str, waited: list[Arrival[_Delivery]]
    ) -> None:
        """A join whose history read never said where the store is: deliver what waited, and
        tell the joiner (``history_gap``) that what lies before it may be missing, so its
        client rejoins with ``lastSeq`` instead of trusting a join answer that may never come."""
        if state.waiting.get(connection_id) is waited:
            log.warning("a join of %s never read its history: releasing its hold", room)
            first = next((a.seq for a in waited if a.seq is not None), None)
            after = first - 1 if first is not None else state.order.last_seq or 0
            self._tell_gap(room, state, after, first, connection_id)
            self._hand_over(state, connection_id, waited, None)

    def _hand_over(
        self,
        state: _Room,
        connection_id: str,
        waited: list[Arrival[_Delivery]],
        head_seq: int | None,
        *,
        stored: list[Arrival[_Delivery]] | None = None,
    ) -> None:
        """End a joiner's hold (``waited``): deliver what it holds, with the messages read
        from the store for it put in order among them, each seq once and after ``head_seq``
        (or, without one, after what the joiner was already given)."""
        if state.waiting.get(connection_id) is waited:
            del state.waiting[connection_id]
        member = state.members.get(connection_id)
        if member is None:
            return
        sent = head_seq if head_seq is not None else state.floors.get(connection_id, 0)
        for arrival in _merged(waited, stored) if stored else waited:
            if arrival.seq is not None:
                if arrival.seq <= sent:
                    continue  # in the join's answer, or already handed over
                sent = arrival.seq
            if connection_id != arrival.item.skip:
                member.deliver(arrival.item.frame)
        if sent:
            # What it was handed (some of it read from the store) may still arrive live:
            # never twice.
            state.floors[connection_id] = max(state.floors.get(connection_id, 0), sent)

    def _end_sync(self, room: str, state: _Room, head_seq: int | None) -> None:
        """The first history read of the room reaches ``head_seq`` (None: the join failed):
        the room delivers from there. Joiners still reading history may need what the room
        now counts as delivered (their reads may be older): it goes to their holds too."""
        if not state.order.syncing or self._rooms.get(room) is not state:
            return
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None
        if head_seq is not None and state.waiting:
            older = [a for a in state.order.held if a.seq is not None and a.seq <= head_seq]
            older.sort(key=lambda a: a.seq or 0)
            for waited in state.waiting.values():
                waited.extend(older)
        self._deliver(state, state.order.synced(head_seq))
        self._watch_gap(room, state)

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
            self._arrive(str(target), state, Arrival(_Delivery(frame, skip), seq, position))

    # -- ordering -------------------------------------------------------------------------------

    def _arrive(self, room: str, state: _Room, arrival: Arrival[_Delivery]) -> None:
        state.active_at = time.monotonic()
        self._deliver(state, state.order.arrive(arrival))
        self._watch_gap(room, state)

    def _watch_gap(self, room: str, state: _Room) -> None:
        """Held messages wait ``hold_seconds`` for the missing one, then the store is asked."""
        if state.order.syncing:
            return
        if not state.order.gap:
            if state.timer is not None and not state.order.held:
                state.timer.cancel()
                state.timer = None
            return
        if state.timer is None and not state.filling:
            loop = asyncio.get_running_loop()
            state.timer = loop.call_later(self._hold, self._start_fill, room, state)

    def _deliver(self, state: _Room, arrivals: list[Arrival[_Delivery]]) -> None:
        floors, waiting = state.floors, state.waiting
        for arrival in arrivals:
            delivery, seq = arrival.item, arrival.seq
            for connection_id, member in list(state.members.items()):
                if waiting and connection_id in waiting:
                    waiting[connection_id].append(arrival)
                    continue
                if floors and seq is not None and seq <= floors.get(connection_id, 0):
                    continue  # it has this one from its join
                if connection_id != delivery.skip:
                    try:
                        member.deliver(delivery.frame)
                    except Exception:
                        log.exception("could not deliver %s to %s", delivery.frame.event, member.id)

    def _start_fill(self, room: str, state: _Room) -> None:
        state.timer = None
        if state.filling or self._rooms.get(room) is not state:
            return
        state.filling = True
        task = asyncio.ensure_future(self._fill_gap(room, state))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fill_gap(self, room: str, state: _Room) -> None:
        """Read what the room lacks from the store. While the store cannot be read, the
        room's members are told (``error`` ``history_gap``, retryable) and the reads go on
        with backoff until one succeeds; a gap the store itself does not close, or one that
        holds more than MAX_HELD messages, is delivered past (with the same signal)."""
        try:
            failures = reads = 0
            while self._rooms.get(room) is state:
                filled = await self._fill_from_store(room, state)
                if filled is True:
                    state.told = None
                    return
                if filled is None:  # the store could not be read
                    if failures == 0:
                        self._tell_gap(room, state, *self._gap_range(state))
                    failures += 1
                else:
                    reads += 1
                if reads >= FILL_ATTEMPTS or len(state.order.held) > MAX_HELD:
                    self._give_up(room, state)
                    return
                await asyncio.sleep(min(0.2 * 2 ** min(failures + reads, 5), RETRY_MAX_SECONDS))
        finally:
            state.filling = False

    def _give_up(self, room: str, state: _Room) -> None:
        """Deliver past the gap, and say which messages the members lack: a rejoin with
        ``lastSeq`` fetches them."""
        after, until = self._gap_range(state)
        log.warning("gap in %s after seq %s not filled: delivering past it", room, after)
        self._tell_gap(room, state, after, until, force=True)
        self._deliver(state, state.order.give_up())

    @staticmethod
    def _gap_range(state: _Room) -> tuple[int, int | None]:
        """(the last seq delivered, the first one held or None when unknown)."""
        last = state.order.last_seq or 0
        first_held = next((a.seq for a in state.order.held if a.seq is not None), None)
        return last, first_held

    def _tell_gap(
        self,
        room: str,
        state: _Room,
        after_seq: int,
        before_seq: int | None,
        connection_id: str | None = None,
        *,
        force: bool = False,
    ) -> None:
        """``error {code: "history_gap", afterSeq, beforeSeq?, retryable}`` to the room's
        members here (or one joiner): messages after ``afterSeq`` may be missing until the
        store answers again; this instance keeps trying and delivers them in order."""
        key = ConsultationKey.from_room(room)
        if key is None:
            return
        if connection_id is None:
            if state.told == (after_seq, before_seq) and not force:
                return
            state.told = (after_seq, before_seq)
        details: dict[str, Any] = {"consultationId": key.consultation_id, "afterSeq": after_seq}
        if before_seq is not None:
            details["beforeSeq"] = before_seq
        event = ErrorEvent.model_validate(HistoryGap(**details).to_wire())
        frame = Frame.of(event)
        targets = [connection_id] if connection_id is not None else list(state.members)
        for target in targets:
            member = state.members.get(target)
            if member is not None:
                member.deliver(frame)

    async def _fill_from_store(self, room: str, state: _Room) -> bool | None:
        """Deliver the stored messages this instance missed: True when no gap is left,
        False when one is (the store lacks it), None when the store could not be read."""
        last = state.order.last_seq
        if self._history is None or last is None:
            return True
        try:
            stored = await self._history.missed(room, last)
        except Exception as exc:
            log.warning("could not read %s's missed messages: %s", room, exc)
            return None
        arrivals = self._read_arrivals(stored)
        delivered, from_store = state.order.fill(arrivals)
        self.gaps_filled += from_store
        self._deliver(state, delivered)
        return not state.order.gap

    def _read_arrivals(self, stored: list[ServerEvent]) -> list[Arrival[_Delivery]]:
        """Messages read from the store, each skipping its sender while that sender's own
        broadcast of it is still on the way (it has the message in its ack)."""
        arrivals = []
        for event in stored:
            message_id = _message_id_of(event)
            skip = self._senders.get(message_id) if message_id is not None else None
            arrivals.append(Arrival(_Delivery(Frame.of(event), skip), _seq_of(event)))
        return arrivals

    async def resync(self) -> None:
        """After a broker outage (whatever was published meanwhile never arrived): every room
        with local members is checked against the store, retried until the store answers."""
        for room, state in list(self._rooms.items()):
            if state.order.last_seq is not None and not state.filling:
                state.filling = True
                self._spawn(self._fill_gap(room, state))

    async def _watch_heads(self) -> None:
        """A member never stays behind a stored message in a quiet room: a message whose
        publisher died after storing it is announced by no one, so rooms quiet for a moment
        (and active within ACTIVE_SECONDS) have their stored head compared with what they
        delivered; one behind fills from the store."""
        assert self._history is not None
        history = self._history
        while True:
            await asyncio.sleep(HEAD_CHECK_SECONDS)
            now = time.monotonic()
            quiet = [
                (room, state)
                for room, state in list(self._rooms.items())
                if state.order.last_seq is not None
                and not state.filling
                and not state.order.syncing
                and HEAD_CHECK_SECONDS <= now - state.active_at <= ACTIVE_SECONDS
            ]
            for start in range(0, len(quiet), HEAD_CHECK_BATCH):
                batch = quiet[start : start + HEAD_CHECK_BATCH]
                heads = await asyncio.gather(
                    *(history.head(room) for room, _ in batch), return_exceptions=True
                )
                for (room, state), head in zip(batch, heads, strict=True):
                    if isinstance(head, BaseException):
                        continue  # the store is away: the next round asks again
                    last = state.order.last_seq
                    behind = last is not None and head > last and not state.order.held
                    if behind and not state.filling and self._rooms.get(room) is state:
                        self._start_fill(room, state)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _merged(
    waited: list[Arrival[_Delivery]], stored: list[Arrival[_Delivery]]
) -> list[Arrival[_Delivery]]:
    """What waited, with messages read from the store put in seq order among it (each before
    the first waiting message with a larger seq)."""
    merged = list(waited)
    for arrival in sorted(stored, key=lambda a: a.seq or 0):
        if arrival.seq is None or any(a.seq == arrival.seq for a in merged):
            continue
        position = next(
            (i for i, a in enumerate(merged) if a.seq is not None and a.seq > arrival.seq),
            len(merged),
        )
        merged.insert(position, arrival)
    return merged


def _chunk_of(event: ServerEvent) -> tuple[str, int] | None:
    if isinstance(event, AiChunk):
        return (event.message_id, event.index)
    return None


def _message_id_of(event: ServerEvent) -> str | None:
    return event.message.id if isinstance(event, MessageEvent) else None


def _seq_of(event: ServerEvent) -> int | None:
    seq = getattr(event, "seq", None)
    return seq if isinstance(seq, int) and seq > 0 else None


def _envelope(header: list[Any], frame: Frame) -> bytes:
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + frame.data_json.encode()
