"""The order of one room's deliveries, as a pure state machine: no I/O, no clock, no members.

Stored messages carry their consultation's ``seq``. The room delivers them in ``seq`` order
and once each:

- an arrival ahead of a missing seq is **held**, with everything after it (so a reply's
  events keep their order), until the missing one arrives or is read from the store
  (:meth:`RoomOrder.fill`); the hub asks the store once ``gap`` has stayed true for a while;
- an arrival at or below the last delivered seq is a duplicate (or the store filled it in);
- a streamed chunk (message id, index) already delivered is dropped (a takeover sends a
  reply's chunks again);
- while the room's first join reads history (``syncing``), everything is held until
  :meth:`RoomOrder.synced` says where the store is.

Events without a seq (typing, chunks, presence) are delivered as they come, except behind
held messages, where they wait in arrival order.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

STREAMS_REMEMBERED = 8  # replies per room whose chunk indexes are remembered


@dataclass
class Arrival(Generic[T]):
    """Something to deliver to the room: ``item`` is the hub's (a frame and whom to skip)."""

    item: T
    seq: int | None = None
    chunk: tuple[str, int] | None = None  # (message id, index) of a streamed chunk


class RoomOrder(Generic[T]):
    def __init__(self, *, syncing: bool = False) -> None:
        self.syncing = syncing
        self.last_seq: int | None = None  # the newest seq delivered
        self.held: deque[Arrival[T]] = deque()
        self._chunks: dict[str, int] = {}  # message id -> last chunk index delivered

    @property
    def gap(self) -> bool:
        """True while held messages wait for a missing seq (the store may have it)."""
        if self.syncing or not self.held:
            return False
        first = self.held[0].seq
        return first is not None and self.last_seq is not None and first > self.last_seq + 1

    def arrive(self, arrival: Arrival[T]) -> list[Arrival[T]]:
        """What to deliver now, in order (nothing when it is held or a duplicate)."""
        if self.syncing:
            self.held.append(arrival)
            return []
        seq, last = arrival.seq, self.last_seq
        if seq is not None and last is not None and seq <= last:
            return []
        if self.held:
            if seq is not None and last is not None and seq == last + 1:
                return self._accept([arrival]) + self._release()
            self._hold(arrival)
            return []
        if seq is None or last is None or seq == last + 1:
            return self._accept([arrival])
        self.held.append(arrival)  # ahead of a missing message: wait for it
        return []

    def synced(self, head_seq: int | None) -> list[Arrival[T]]:
        """The first join's history reaches ``head_seq``: what was held goes out in order from
        there (older ones the joiner has). Without a head (the join failed) the held ones are
        taken as they came, starting before the oldest."""
        if not self.syncing:
            return []
        self.syncing = False
        waiting, self.held = list(self.held), deque()
        if head_seq is not None:
            self.last_seq = max(head_seq, self.last_seq or 0)
        elif self.last_seq is None:
            seqs = [a.seq for a in waiting if a.seq is not None]
            self.last_seq = min(seqs) - 1 if seqs else None
        delivered: list[Arrival[T]] = []
        for arrival in waiting:
            delivered += self.arrive(arrival)
        return delivered

    def behind(self, head_seq: int) -> bool:
        """The store holds messages up to ``head_seq``: True when this room lacks some and
        nothing already explains it (held messages, a fill under way is the hub's)."""
        if self.syncing:
            return False
        if self.last_seq is None:
            self.last_seq = head_seq
            return False
        return head_seq > self.last_seq and not self.held

    def fill(self, stored: list[Arrival[T]]) -> tuple[list[Arrival[T]], int]:
        """Messages read from the store after ``last_seq``: those that close the gap go out,
        then what they release. Returns what to deliver and how many came from the store."""
        delivered: list[Arrival[T]] = []
        from_store = 0
        for arrival in stored:
            seq = arrival.seq
            if seq is None or self.last_seq is None or seq != self.last_seq + 1:
                continue
            if any(held.seq == seq for held in self.held):
                delivered += self._release()  # it arrived meanwhile: delivered in turn
                continue
            from_store += 1
            delivered += self._accept([arrival]) + self._release()
        return delivered + self._release(), from_store

    def give_up(self) -> list[Arrival[T]]:
        """The store cannot say what is missing: release what is held, past the gap."""
        released = [a for a in self.held if a.seq is None or self._after_last(a.seq)]
        self.held.clear()
        return self._accept(released)

    def _after_last(self, seq: int) -> bool:
        return self.last_seq is None or seq > self.last_seq

    def _accept(self, arrivals: list[Arrival[T]]) -> list[Arrival[T]]:
        """Deliver in this order: count each seq, drop chunks already delivered."""
        accepted = []
        for arrival in arrivals:
            if arrival.chunk is not None and self._seen_chunk(arrival.chunk):
                continue
            if arrival.seq is not None:
                if not self._after_last(arrival.seq):
                    continue
                self.last_seq = arrival.seq
            accepted.append(arrival)
        return accepted

    def _release(self) -> list[Arrival[T]]:
        """Held arrivals up to the next missing seq."""
        released: list[Arrival[T]] = []
        while self.held:
            first, last = self.held[0], self.last_seq
            if first.seq is not None and last is not None and first.seq <= last:
                self.held.popleft()
            elif first.seq is None or last is None or first.seq == last + 1:
                released += self._accept([self.held.popleft()])
            else:
                break
        return released

    def _hold(self, arrival: Arrival[T]) -> None:
        """Queue behind a gap, keeping stored messages in seq order: one that arrives after a
        later one goes before it (the queue is released from its head)."""
        if arrival.seq is not None:
            for position, waiting in enumerate(self.held):
                if waiting.seq is not None and waiting.seq > arrival.seq:
                    self.held.insert(position, arrival)
                    return
        self.held.append(arrival)

    def _seen_chunk(self, chunk: tuple[str, int]) -> bool:
        message_id, index = chunk
        if index <= self._chunks.get(message_id, -1):
            return True
        self._chunks[message_id] = index
        while len(self._chunks) > STREAMS_REMEMBERED:
            del self._chunks[next(iter(self._chunks))]
        return False
