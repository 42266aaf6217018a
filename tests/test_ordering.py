"""The per-room ordering state machine alone: no hub, no clock, no I/O."""

from __future__ import annotations

from server.fanout.ordering import STREAMS_REMEMBERED, Arrival, RoomOrder


def msg(seq: int) -> Arrival[str]:
    return Arrival(f"m{seq}", seq)


def live(name: str) -> Arrival[str]:
    return Arrival(name)  # no seq: typing, presence


def chunk(reply: str, index: int) -> Arrival[str]:
    return Arrival(f"{reply}#{index}", chunk=(reply, index))


def items(arrivals: list[Arrival[str]]) -> list[str]:
    return [a.item for a in arrivals]


def started_at(seq: int) -> RoomOrder[str]:
    order: RoomOrder[str] = RoomOrder()
    order.behind(seq)  # a join read the store up to seq
    return order


def test_in_order_messages_go_out_at_once() -> None:
    order = started_at(0)
    assert items(order.arrive(msg(1))) == ["m1"]
    assert items(order.arrive(live("typing"))) == ["typing"]
    assert items(order.arrive(msg(2))) == ["m2"]
    assert order.last_seq == 2 and not order.gap


def test_a_message_ahead_of_a_missing_one_waits_and_goes_out_when_it_arrives() -> None:
    order = started_at(0)
    assert order.arrive(msg(2)) == []
    assert order.gap
    assert order.arrive(live("chunk after 2")) == []  # behind the held one, in order
    assert order.arrive(msg(3)) == []
    assert items(order.arrive(msg(1))) == ["m1", "m2", "chunk after 2", "m3"]
    assert not order.gap and not order.held


def test_held_messages_are_kept_in_seq_order_whatever_the_arrival_order() -> None:
    order = started_at(0)
    order.arrive(msg(4))
    order.arrive(msg(3))
    order.arrive(msg(2))
    assert items(order.arrive(msg(1))) == ["m1", "m2", "m3", "m4"]


def test_duplicates_and_old_messages_are_dropped() -> None:
    order = started_at(5)
    assert order.arrive(msg(5)) == []
    assert order.arrive(msg(3)) == []
    assert items(order.arrive(msg(6))) == ["m6"]
    assert order.arrive(msg(6)) == []


def test_chunks_already_delivered_are_dropped_as_a_takeover_resends_them() -> None:
    order = started_at(0)
    assert items(order.arrive(chunk("r", 0))) == ["r#0"]
    assert items(order.arrive(chunk("r", 1))) == ["r#1"]
    assert order.arrive(chunk("r", 0)) == [] and order.arrive(chunk("r", 1)) == []
    assert items(order.arrive(chunk("r", 2))) == ["r#2"]
    for reply in range(STREAMS_REMEMBERED):  # only the newest replies are remembered
        order.arrive(chunk(f"other{reply}", 0))
    assert items(order.arrive(chunk("r", 0))) == ["r#0"]


def test_a_late_joiner_holds_everything_until_its_history_says_where_the_store_is() -> None:
    order: RoomOrder[str] = RoomOrder(syncing=True)
    for arrival in (msg(3), live("typing"), msg(4), msg(6)):
        assert order.arrive(arrival) == []
    assert not order.gap  # no gap while syncing: the head is not known yet
    # The history read returned up to seq 3: 3 is the joiner's already, 5 is missing.
    assert items(order.synced(3)) == ["typing", "m4"]
    assert order.gap and items(order.held) == ["m6"]


def test_a_join_that_never_syncs_releases_what_it_held_from_the_oldest() -> None:
    order: RoomOrder[str] = RoomOrder(syncing=True)
    order.arrive(msg(8))
    order.arrive(msg(9))
    assert items(order.synced(None)) == ["m8", "m9"]
    assert order.synced(None) == []  # once


def test_the_store_fills_a_gap_and_releases_what_waited() -> None:
    order = started_at(1)
    order.arrive(msg(4))
    assert order.gap
    delivered, from_store = order.fill([msg(2), msg(3), msg(4), msg(5)])
    assert items(delivered) == ["m2", "m3", "m4", "m5"]
    assert from_store == 3  # 4 was held (it arrived): delivered in turn, not from the store
    assert not order.gap and order.last_seq == 5


def test_a_store_that_lacks_the_gap_leaves_it_open_and_giving_up_releases_the_rest() -> None:
    order = started_at(1)
    order.arrive(msg(4))
    order.arrive(live("after 4"))
    delivered, from_store = order.fill([msg(4)])  # 2 and 3 are not there (yet)
    assert delivered == [] and from_store == 0 and order.gap
    assert items(order.give_up()) == ["m4", "after 4"]
    assert order.last_seq == 4 and not order.held


def test_a_store_ahead_of_the_room_means_it_is_behind() -> None:
    order = started_at(3)
    assert not order.behind(3)
    assert order.behind(5)
    order.arrive(msg(6))  # held: a fill will cover it
    assert not order.behind(7)
