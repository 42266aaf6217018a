"""The per-connection outbox: order, the byte bound, holds, and drains, against a sink that
takes frames only while it has room (as a socket's write buffer does)."""

from __future__ import annotations

import asyncio

from server.fanout.outbox import Outbox, OutboxStats
from server.transport.sinks import websocket_frame


class Socketish:
    """Takes ``room`` frames at once, then waits for ``drain()`` (a reader catching up)."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.written: list[str | bytes] = []
        self.drained = asyncio.Event()

    def write_now(self, data: str | bytes, frame: bytes | None) -> bool:
        if self.room <= 0:
            return False
        self.room -= 1
        self.written.append(data)
        return True

    async def write(self, data: str | bytes) -> None:
        while self.room <= 0:
            self.drained.clear()
            await self.drained.wait()
        self.room -= 1
        self.written.append(data)

    def drain(self, frames: int) -> None:
        self.room += frames
        self.drained.set()


def outbox(sink: Socketish, limit: int = 100) -> tuple[Outbox, list[str], OutboxStats]:
    overflows: list[str] = []
    stats = OutboxStats()
    return Outbox(sink, limit, lambda: overflows.append("slow"), stats), overflows, stats


async def test_frames_are_written_at_once_while_the_transport_has_room() -> None:
    sink = Socketish(room=3)
    box, _, _ = outbox(sink)
    for text in ("a", "b", "c"):
        box.send(text)
    assert sink.written == ["a", "b", "c"]
    assert box.pending_bytes == 0


async def test_past_the_room_frames_wait_in_order_and_drain_as_the_reader_catches_up() -> None:
    sink = Socketish(room=1)
    box, overflows, _ = outbox(sink)
    for text in ("1", "2", "3", "4"):
        box.send(text)
    assert sink.written == ["1"] and box.pending_bytes == 3
    sink.drain(1)
    box.send("5")  # queued behind the others, never written ahead of them
    sink.drain(10)
    await box.flushed()
    assert sink.written == ["1", "2", "3", "4", "5"]
    assert box.pending_bytes == 0 and overflows == []


async def test_a_connection_past_the_bound_is_closed_once_and_holds_nothing() -> None:
    sink = Socketish(room=0)
    box, overflows, stats = outbox(sink, limit=10)
    for _ in range(5):
        box.send("xxxx")  # 4 bytes each: the third passes 10
    assert overflows == ["slow"] and stats.slow_consumers == 1
    assert box.closed and box.pending_bytes == 0
    box.send("after")
    sink.drain(5)
    await box.flushed()  # nothing to drain: it was closed
    assert sink.written == []


async def test_the_bound_counts_the_framed_size_of_shared_frames() -> None:
    sink = Socketish(room=0)
    box, overflows, _ = outbox(sink, limit=100)
    frame = websocket_frame(b"x" * 60)
    box.send("x" * 60, frame)
    assert box.pending_bytes == len(frame) == 62
    box.send("x" * 60, frame)
    assert overflows == ["slow"]


async def test_a_hold_keeps_later_frames_behind_what_goes_ahead() -> None:
    sink = Socketish(room=10)
    box, _, _ = outbox(sink)
    box.send("broadcast caused by the handler")
    box.hold()  # the handler returned: its ack is queued elsewhere
    box.send("later broadcast")
    box.send_ahead("ping queued before the ack")
    box.send_ahead("the ack")
    assert sink.written == ["broadcast caused by the handler"]
    box.release()
    await box.flushed()
    assert sink.written == [
        "broadcast caused by the handler",
        "ping queued before the ack",
        "the ack",
        "later broadcast",
    ]
    box.send("direct again")
    assert sink.written[-1] == "direct again"


async def test_a_hold_while_frames_wait_lets_those_frames_go_first() -> None:
    sink = Socketish(room=0)
    box, _, _ = outbox(sink)
    box.send("queued before")
    box.hold()
    box.send("held")
    box.send_ahead("ack")
    sink.drain(10)
    await box.flushed()  # the drain stops at the held frames
    assert sink.written == ["queued before", "ack"]  # "held" waits for the release
    box.release()
    await box.flushed()
    assert sink.written == ["queued before", "ack", "held"]


async def test_close_cancels_the_drain_and_drops_what_waits() -> None:
    sink = Socketish(room=0)
    box, overflows, _ = outbox(sink)
    box.send("a")
    box.send("b")
    box.close()
    sink.drain(10)
    box.send("c")  # a closed outbox takes nothing more
    await box.flushed()
    assert sink.written == [] and overflows == [] and box.pending_bytes == 0


def test_websocket_frames_carry_their_length_and_kind() -> None:
    assert websocket_frame(b"hi") == b"\x81\x02hi"
    assert websocket_frame(b"\x00", binary=True) == b"\x82\x01\x00"
    assert websocket_frame(b"x" * 200)[:4] == b"\x81\x7e\x00\xc8"
    assert websocket_frame(b"x" * 70000)[:2] == b"\x81\x7f"
