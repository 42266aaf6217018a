"""The room hub, with two instances on a memory bus: routing, per-room seq order, gap filling.

Members here record frames (the transports' members are tested end to end); the store is a
dict of the events a consultation has stored, which the hub's history port reads as the real
one (``StoredHistory``) does.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from server.broker.memory import MemoryBroker, MemoryBus
from server.domain.events import AiChunk, ServerEvent, UserMessage
from server.domain.models import Author, ConsultationKey, Message
from server.fanout.frames import Frame
from server.fanout.hub import RoomHub
from tests.helpers import eventually

KEY = ConsultationKey("t", "c")
ROOM = KEY.room


@dataclass
class Recorder:
    id: str
    frames: list[Frame] = field(default_factory=list)

    def deliver(self, frame: Frame) -> None:
        self.frames.append(frame)

    def seqs(self) -> list[int]:
        return [json.loads(f.data_json)["seq"] for f in self.frames if f.event == "userMessage"]

    def names(self) -> list[str]:
        return [f.event for f in self.frames]


@dataclass
class Store:
    """What the consultation has stored: the gap filler reads it."""

    events: dict[int, ServerEvent] = field(default_factory=dict)
    reads: int = 0

    async def missed(self, room: str, after_seq: int) -> list[ServerEvent]:
        self.reads += 1
        return [self.events[seq] for seq in sorted(self.events) if seq > after_seq]

    async def head(self, room: str) -> int:
        return max(self.events, default=0)


def message(seq: int, text: str = "") -> UserMessage:
    stored = Message.new(KEY, Author.USER, text or f"m{seq}", user_id="u").model_copy(
        update={"seq": seq}
    )
    return UserMessage(message=stored)


def chunk(index: int) -> AiChunk:
    return AiChunk(consultation_id="c", message_id="r", index=index, content="x", is_complete=False)


async def instances(store: Store, hold: float = 0.05) -> tuple[RoomHub, RoomHub]:
    bus = MemoryBus()
    hubs = []
    for name in ("a", "b"):
        hub = RoomHub(MemoryBroker(bus), name, history=store, hold_seconds=hold)
        await hub.start()
        hubs.append(hub)
    return hubs[0], hubs[1]


async def member_of(hub: RoomHub, name: str, room: str = ROOM) -> Recorder:
    recorder = Recorder(f"{name}@{hub.instance_id}")
    hub.attach(recorder)
    await hub.join(recorder.id, room)
    return recorder


async def test_a_room_reaches_members_on_both_instances_except_the_skipped_one() -> None:
    a, b = await instances(Store())
    sender, neighbour = await member_of(a, "sender"), await member_of(a, "neighbour")
    remote = await member_of(b, "remote")
    await a.to_room(ROOM, message(1), skip=sender.id)
    await eventually(lambda: remote.seqs() == [1])
    assert neighbour.seqs() == [1] and sender.seqs() == []


async def test_an_instance_without_members_receives_nothing_of_the_room() -> None:
    a, b = await instances(Store())
    await member_of(a, "only-on-a")
    await member_of(b, "elsewhere", room="another-room")
    received = b.broker.stats.messages_received
    await a.to_room(ROOM, message(1))
    await a.to_room("another-room", chunk(0))  # a marker b does receive
    await eventually(lambda: b.broker.stats.messages_received == received + 1)
    assert ROOM not in b.rooms()


async def test_leaving_the_last_member_unsubscribes_and_joining_again_resubscribes() -> None:
    a, b = await instances(Store())
    first = await member_of(b, "first")
    channel = b.broker.room_channel(ROOM)
    assert channel in b.broker.subscriptions()
    await b.leave(first.id, ROOM)
    assert channel not in b.broker.subscriptions()
    again = await member_of(b, "again")
    await a.to_room(ROOM, message(1))
    await eventually(lambda: again.seqs() == [1])
    assert first.seqs() == []


async def test_a_message_ahead_of_a_missing_one_waits_for_it() -> None:
    a, b = await instances(Store(), hold=5)
    remote = await member_of(b, "remote")
    await a.to_room(ROOM, message(1))
    await eventually(lambda: remote.seqs() == [1])
    await a.to_room(ROOM, message(3))  # stored after 2, whose broadcast is late
    await a.to_room(ROOM, chunk(0))  # held behind 3: a reply's events keep their order
    await a.to_room(ROOM, message(2))
    await eventually(lambda: len(remote.frames) == 4)
    assert remote.seqs() == [1, 2, 3]
    assert remote.names()[-1] == "aiChunk"


async def test_a_message_that_never_arrives_is_read_from_the_store() -> None:
    store = Store()
    a, b = await instances(store)
    remote = await member_of(b, "remote")
    for seq in (1, 2, 3):
        store.events[seq] = message(seq)
    await a.to_room(ROOM, message(1))
    # 2 was stored but its broadcast was lost (a failed publish, an instance that died).
    await a.to_room(ROOM, message(3))
    await eventually(lambda: remote.seqs() == [1, 2, 3])
    assert b.gaps_filled == 1
    await a.to_room(ROOM, message(3))  # a duplicate (a re-sent outbox): dropped
    await a.to_room(ROOM, chunk(0))
    await eventually(lambda: remote.names()[-1] == "aiChunk")
    assert remote.seqs() == [1, 2, 3]


async def test_a_join_that_reads_newer_history_brings_existing_members_up_to_date() -> None:
    store = Store()
    a, b = await instances(store)
    remote = await member_of(b, "remote")
    store.events[1] = message(1)
    await a.to_room(ROOM, message(1))
    await eventually(lambda: remote.seqs() == [1])
    store.events[2] = message(2)  # stored, never broadcast here
    b.sync(ROOM, 2)  # a join on b just read history up to 2
    await eventually(lambda: remote.seqs() == [1, 2])


async def test_resync_after_an_outage_delivers_what_was_stored_meanwhile() -> None:
    store = Store()
    a, b = await instances(store)
    remote = await member_of(b, "remote")
    store.events[1] = message(1)
    await a.to_room(ROOM, message(1))
    await eventually(lambda: remote.seqs() == [1])
    for seq in (2, 3, 4):  # published while b was cut off: never arrived
        store.events[seq] = message(seq)
    await b.resync()
    await eventually(lambda: remote.seqs() == [1, 2, 3, 4])
    await a.to_room(ROOM, message(4))  # the outbox, sent late: nothing twice
    await a.to_room(ROOM, message(5))
    await eventually(lambda: remote.seqs() == [1, 2, 3, 4, 5])


async def test_a_message_to_a_connection_on_another_instance_is_routed_there() -> None:
    a, b = await instances(Store())
    remote = Recorder("conn@b")
    b.attach(remote)
    await a.to_connection(remote.id, chunk(7))
    await eventually(lambda: remote.names() == ["aiChunk"])


class SlowSubscriptions(MemoryBroker):
    """A broker whose subscriptions take a while to be in place (a busy Redis)."""

    async def subscribe(self, channel: str) -> None:
        await asyncio.sleep(0.2)
        await super().subscribe(channel)


async def test_join_returns_only_once_the_room_subscription_is_in_place() -> None:
    bus = MemoryBus()
    a = RoomHub(MemoryBroker(bus), "a")
    b = RoomHub(SlowSubscriptions(bus), "b")
    for hub in (a, b):
        await hub.start()
    first, second = Recorder("first@b"), Recorder("second@b")
    b.attach(first)
    b.attach(second)
    await asyncio.gather(b.join(first.id, ROOM), b.join(second.id, ROOM))  # one subscription
    await a.to_room(ROOM, chunk(0))  # right after the joins returned
    await eventually(lambda: first.names() == ["aiChunk"] and second.names() == ["aiChunk"])


async def test_a_first_join_holds_what_arrives_until_its_history_says_where_the_store_is() -> None:
    store = Store()
    a, b = await instances(store)
    joiner = Recorder("joiner@b")
    b.attach(joiner)
    await b.join(joiner.id, ROOM, ordered=True)
    # Published by two instances, arriving out of order while the joiner reads history:
    # 2 must not become the baseline, or 1 would later be dropped as already delivered.
    for seq in (1, 2):
        store.events[seq] = message(seq)
    await a.to_room(ROOM, message(2))
    await a.to_room(ROOM, message(1))
    await eventually(lambda: len(b._rooms[ROOM].order.held) == 2)
    assert joiner.frames == []
    b.sync(ROOM, 0)  # its history was read before either was stored
    await eventually(lambda: joiner.seqs() == [1, 2])


async def test_what_the_joiners_history_had_is_not_delivered_again() -> None:
    a, b = await instances(Store())
    joiner = Recorder("joiner@b")
    b.attach(joiner)
    await b.join(joiner.id, ROOM, ordered=True)
    await a.to_room(ROOM, message(1))
    await a.to_room(ROOM, message(2))
    await eventually(lambda: len(b._rooms[ROOM].order.held) == 2)
    b.sync(ROOM, 1, joiner.id)  # its history already held 1
    await eventually(lambda: joiner.seqs() == [2])
    await a.to_room(ROOM, message(3))
    await eventually(lambda: joiner.seqs() == [2, 3])


async def concurrent_joiners(store: Store) -> tuple[RoomHub, RoomHub, Recorder, Recorder]:
    """Two joiners of one room on b, both still reading history, while a sends 1..4."""
    a, b = await instances(store)
    first, second = Recorder("first@b"), Recorder("second@b")
    for joiner in (first, second):
        b.attach(joiner)
        await b.join(joiner.id, ROOM, ordered=True)
    for seq in range(1, 5):
        store.events[seq] = message(seq)
        await a.to_room(ROOM, message(seq))
    await eventually(lambda: len(b._rooms[ROOM].order.held) == 4)
    return a, b, first, second


async def test_the_later_joiner_syncing_first_gives_the_first_no_duplicate() -> None:
    # The first joiner's read saw 1..3, the second's 1..1, and the second's answer came first.
    a, b, first, second = await concurrent_joiners(Store())
    b.sync(ROOM, 1, second.id)
    await eventually(lambda: second.seqs() == [2, 3, 4])
    assert first.seqs() == []  # still held for its own read
    b.sync(ROOM, 3, first.id)
    await eventually(lambda: first.seqs() == [4])
    await a.to_room(ROOM, message(5))
    await eventually(lambda: first.seqs() == [4, 5] and second.seqs() == [2, 3, 4, 5])


async def test_an_older_read_still_gets_what_a_newer_one_made_the_room_skip() -> None:
    # The first answer to come back had read up to 3: the room counts 1..3 as delivered, but
    # the other joiner's read stopped at 1 and needs 2 and 3 live.
    _, b, first, second = await concurrent_joiners(Store())
    b.sync(ROOM, 3, first.id)
    await eventually(lambda: first.seqs() == [4])
    b.sync(ROOM, 1, second.id)
    await eventually(lambda: second.seqs() == [2, 3, 4])


async def test_a_joiner_behind_a_message_that_never_arrived_reads_it_from_the_store() -> None:
    store = Store()
    a, b, first, second = await concurrent_joiners(store)
    store.events[5] = message(5)  # stored by a dead publisher: never arrives live
    store.events[6] = message(6)
    await a.to_room(ROOM, message(6))
    b.sync(ROOM, 5, first.id)  # its read saw 5
    await eventually(lambda: first.seqs() == [6])
    b.sync(ROOM, 2, second.id)  # its read was older: 5 reached nobody's hold
    await eventually(lambda: second.seqs() == [3, 4, 5, 6])


async def test_a_join_repeated_while_the_first_reads_history_misses_nothing() -> None:
    # Under load a client gives up waiting for its join's answer and joins again: what
    # arrived in between must not be dropped with the first join's hold.
    store = Store()
    a, b = await instances(store)
    member = await member_of(b, "member")
    for seq in (1, 2):
        store.events[seq] = message(seq)
        await a.to_room(ROOM, message(seq))
    await eventually(lambda: member.seqs() == [1, 2])
    await b.leave(member.id, ROOM)
    await b.join(member.id, ROOM, ordered=True)  # the first join, slow to read
    store.events[3] = message(3)
    await a.to_room(ROOM, message(3))
    await b.join(member.id, ROOM, ordered=True)  # the client asks again
    store.events[4] = message(4)
    await a.to_room(ROOM, message(4))
    b.sync(ROOM, 2, member.id)  # the first join's read saw up to 2
    await eventually(lambda: member.seqs() == [1, 2, 3, 4])
    b.sync(ROOM, 4, member.id)  # the second one's answer: nothing twice
    await a.to_room(ROOM, message(5))
    await eventually(lambda: member.seqs() == [1, 2, 3, 4, 5])


async def test_a_join_that_never_syncs_releases_the_room(monkeypatch: object) -> None:
    from server.fanout import hub as rooms

    setattr(rooms, "SYNC_WAIT_SECONDS", 0.1)  # noqa: B010 (module constant, test scope)
    try:
        a, b = await instances(Store())
        joiner = Recorder("joiner@b")
        b.attach(joiner)
        await b.join(joiner.id, ROOM, ordered=True)
        await a.to_room(ROOM, message(4))
        await eventually(lambda: joiner.seqs() == [4])
        # ... and the joiner is told that what came before may be missing: its client rejoins
        # with lastSeq instead of waiting for a join answer that may never come.
        [gap] = [json.loads(f.data_json) for f in joiner.frames if f.event == "error"]
        assert gap["code"] == "history_gap"
        assert (gap["afterSeq"], gap["beforeSeq"], gap["retryable"]) == (3, 4, True)
        assert joiner.names().index("error") < joiner.names().index("userMessage")
    finally:
        setattr(rooms, "SYNC_WAIT_SECONDS", 5.0)  # noqa: B010


async def test_messages_held_behind_a_gap_stay_in_seq_order_whatever_their_arrival() -> None:
    # The chaos run found this: with 55 delivered, 58 arrives, then 57, then 56. Queued in
    # arrival order, 57 sat behind 58 for good (draining looks at the head of the queue).
    a, b = await instances(Store(), hold=5)
    remote = await member_of(b, "remote")
    for seq in range(1, 56):
        await a.to_room(ROOM, message(seq))
    await eventually(lambda: len(remote.seqs()) == 55)
    for seq in (58, 57, 56):
        await a.to_room(ROOM, message(seq))
    await eventually(lambda: remote.seqs()[55:] == [56, 57, 58], timeout=3)


async def test_a_joiner_is_not_sent_again_what_its_join_returned() -> None:
    a, b = await instances(Store())
    early = await member_of(b, "early")
    await a.to_room(ROOM, message(1))
    await eventually(lambda: early.seqs() == [1])
    joiner = Recorder("joiner@b")
    b.attach(joiner)
    await b.join(joiner.id, ROOM, ordered=True)
    await a.to_room(ROOM, message(2))  # stored before the joiner read its history ...
    b.sync(ROOM, 2, joiner.id)  # ... so its join returned it
    await a.to_room(ROOM, message(3))
    await eventually(lambda: joiner.seqs() == [3] and early.seqs() == [1, 2, 3])


async def test_a_joiner_gets_a_message_once_even_when_it_arrives_during_its_history_read() -> None:
    a, b = await instances(Store())
    early = await member_of(b, "early")
    joiner = Recorder("joiner@b")
    b.attach(joiner)
    await b.join(joiner.id, ROOM, ordered=True)
    await a.to_room(ROOM, message(1))  # delivered while the joiner still reads history
    await eventually(lambda: early.seqs() == [1])
    assert joiner.frames == []  # it waits for its join's answer
    b.sync(ROOM, 1, joiner.id)  # the answer had 1
    await a.to_room(ROOM, message(2))
    await eventually(lambda: joiner.seqs() == [2])


async def test_a_resync_that_reads_a_local_senders_message_before_its_broadcast_skips_it() -> None:
    store = Store()
    a, _ = await instances(store)
    sender, neighbour = await member_of(a, "sender"), await member_of(a, "neighbour")
    store.events[1] = message(1)
    await a.to_room(ROOM, message(1))
    own = message(2)
    a.sending(sender.id, own.message.id)
    store.events[2] = own  # stored; the broker came back before its broadcast went out
    await a.resync()
    await eventually(lambda: neighbour.seqs() == [1, 2])
    await a.to_room(ROOM, own, skip=sender.id)
    await a.to_room(ROOM, message(3))
    await eventually(lambda: neighbour.seqs() == [1, 2, 3])
    assert sender.seqs() == [1, 3]


async def test_a_joiner_whose_older_read_is_completed_from_the_store_then_gets_messages_live() -> (
    None
):
    """Two joins read history at different moments; the room counts from the newer read,
    and the older joiner's missing messages are read from the store for it. Its hold ends
    there: what comes next reaches it live at once, like everyone else (not seconds later,
    when a forgotten hold would time out and hand out its messages a second time)."""
    store = Store()
    a, b = await instances(store, hold=5)
    first, older = Recorder("first@b"), Recorder("older@b")
    for recorder in (first, older):
        b.attach(recorder)
        await b.join(recorder.id, ROOM, ordered=True)
    for seq in (1, 2, 3):
        store.events[seq] = message(seq)
    b.sync(ROOM, 3, first.id)  # its read saw 1-3 (their broadcasts are still on the way)
    b.sync(ROOM, 1, older.id)  # an older read: 2 and 3 come from the store
    await eventually(lambda: older.seqs() == [2, 3])
    for seq in (4, 5):
        store.events[seq] = message(seq)
        await a.to_room(ROOM, store.events[seq])
    await eventually(lambda: first.seqs() == [4, 5])
    assert older.seqs() == [2, 3, 4, 5]  # delivered in the same pass as to the first joiner
