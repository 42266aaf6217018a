"""The Rooms contract (``domain/ports.py``), as the room hub keeps it on every broker: two
instances on one backend (a memory bus, one redis-server, a Redis Cluster). Every method of
the port is exercised; what did not happen is proven by a later message that did.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest

from server.domain.events import TypingEvent
from server.domain.ports import Rooms
from server.fanout.hub import RoomHub
from tests.contract.conftest import Make
from tests.helpers import eventually
from tests.test_rooms import ROOM, Recorder, Store, message

OTHER_ROOM = "c:t:other"


@pytest.fixture
async def hubs(make_broker: Make) -> AsyncIterator[tuple[RoomHub, RoomHub, Store]]:
    store = Store()
    suffix = uuid.uuid4().hex[:6]
    started = [RoomHub(make_broker(), f"{name}{suffix}", history=store) for name in "ab"]
    for hub in started:
        await hub.start()
    yield started[0], started[1], store
    for hub in started:
        await hub.stop()


def member(hub: RoomHub, name: str) -> Recorder:
    recorder = Recorder(f"{name}@{hub.instance_id}")
    hub.attach(recorder)
    return recorder


def typing(text: str) -> TypingEvent:
    return TypingEvent(consultation_id="c", user_id=text, role="user", is_typing=True)


def typers(recorder: Recorder) -> list[str]:
    return [json.loads(f.data_json)["userId"] for f in recorder.frames if f.event == "typing"]


async def test_join_is_in_place_when_it_returns_and_says_whether_it_was_new(
    hubs: tuple[RoomHub, RoomHub, Store],
) -> None:
    a, b, _ = hubs
    rooms: Rooms = b
    reader = member(b, "reader")
    assert await rooms.join(reader.id, ROOM) is True
    assert await rooms.join(reader.id, ROOM) is False
    sender = member(a, "sender")
    await a.join(sender.id, ROOM)
    await a.to_room(ROOM, typing("first"))  # sent right after the join returned: it arrives
    await eventually(lambda: typers(reader) == ["first"])


async def test_to_room_reaches_every_member_but_the_skipped_one(
    hubs: tuple[RoomHub, RoomHub, Store],
) -> None:
    a, b, _ = hubs
    sender, near, far = member(a, "sender"), member(a, "near"), member(b, "far")
    for recorder, hub in ((sender, a), (near, a), (far, b)):
        await hub.join(recorder.id, ROOM)
    await a.to_room(ROOM, typing("hello"), skip=sender.id)
    await eventually(lambda: typers(near) == ["hello"] and typers(far) == ["hello"])
    await a.to_room(ROOM, typing("marker"))  # a later message reaches the sender...
    await eventually(lambda: typers(sender) == ["marker"])
    assert typers(sender) == ["marker"]  # ...and the skipped one never did


async def test_leave_and_leave_all_stop_deliveries(hubs: tuple[RoomHub, RoomHub, Store]) -> None:
    a, b, _ = hubs
    sender, stays, leaves, goes = member(a, "s"), member(b, "stays"), member(b, "l"), member(b, "g")
    for recorder in (stays, leaves, goes):
        await b.join(recorder.id, ROOM)
    await b.join(goes.id, OTHER_ROOM)
    await a.join(sender.id, ROOM)
    await b.leave(leaves.id, ROOM)
    await b.leave_all(goes.id)
    assert sorted(b.members(ROOM)) == [stays.id]
    await a.to_room(ROOM, typing("after"))
    await a.to_room(OTHER_ROOM, typing("other"))
    await eventually(lambda: typers(stays) == ["after"])
    assert typers(leaves) == [] and typers(goes) == []


async def test_to_connection_reaches_one_connection_wherever_it_is(
    hubs: tuple[RoomHub, RoomHub, Store],
) -> None:
    a, b, _ = hubs
    here, there, bystander = member(a, "here"), member(b, "there"), member(b, "bystander")
    await a.to_connection(here.id, typing("local"))
    await a.to_connection(there.id, typing("remote"))
    await eventually(lambda: typers(here) == ["local"] and typers(there) == ["remote"])
    await b.to_connection(bystander.id, typing("marker"))
    await eventually(lambda: typers(bystander) == ["marker"])


async def test_sync_counts_from_the_joiners_history_and_fills_what_the_room_lacks(
    hubs: tuple[RoomHub, RoomHub, Store],
) -> None:
    a, b, store = hubs
    sender, joiner = member(a, "sender"), member(b, "joiner")
    await a.join(sender.id, ROOM, ordered=True)
    a.sync(ROOM, 0, sender.id)
    await b.join(joiner.id, ROOM, ordered=True)
    store.events[1] = message(1)
    await a.to_room(ROOM, message(1))  # arrives while the join reads history
    b.sync(ROOM, 1, joiner.id)  # the history had it: not delivered again
    store.events[2] = message(2)
    await a.to_room(ROOM, message(2))
    await eventually(lambda: joiner.seqs() == [2])
    store.events[3], store.events[4] = message(3), message(4)  # stored, never published
    b.sync(ROOM, 4)  # a later read says the store is ahead: the room fills from history
    await eventually(lambda: joiner.seqs() == [2, 3, 4])


async def test_a_message_filled_from_the_store_before_its_broadcast_skips_its_sender(
    hubs: tuple[RoomHub, RoomHub, Store],
) -> None:
    """The sender has its message in its ack: a gap fill that reads it from the store before
    the sender's own broadcast reaches the room does not send it live to the sender either."""
    a, b, store = hubs
    rooms: Rooms = a
    sender, near, far = member(a, "sender"), member(a, "near"), member(b, "far")
    for recorder, hub in ((sender, a), (near, a), (far, b)):
        await hub.join(recorder.id, ROOM)
    store.events[1] = message(1)
    await b.to_room(ROOM, message(1))
    await eventually(lambda: sender.seqs() == [1] and near.seqs() == [1] and far.seqs() == [1])
    own = message(2)
    rooms.sending(sender.id, own.message.id)
    store.events[2] = own  # stored; its broadcast is late (the instance was busy, paused)
    store.events[3] = message(3)
    await b.to_room(ROOM, store.events[3])  # ahead of 2: a's room fills 2 from the store
    await eventually(lambda: near.seqs() == [1, 2, 3] and far.seqs() == [1, 2, 3])
    await a.to_room(ROOM, own, skip=sender.id)  # the broadcast, at last: a duplicate here
    store.events[4] = message(4)
    await b.to_room(ROOM, store.events[4])
    await eventually(lambda: near.seqs() == [1, 2, 3, 4] and far.seqs() == [1, 2, 3, 4])
    assert sender.seqs() == [1, 3, 4]
