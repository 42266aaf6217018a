"""The ReplyBuffer contract: one reply at a time, chunk by chunk, with what is needed to
continue it elsewhere; appends are fenced by the owner."""

from __future__ import annotations

import asyncio

from server.coordination import Coordination
from server.domain.ports import BufferWrite, ReplyDraft


def draft(message_id: str = "m1", owner: str = "tok-a", seq: int = 7) -> ReplyDraft:
    return ReplyDraft(message_id, owner, seq)


async def test_the_buffer_accumulates_one_reply_at_a_time(
    coordination: Coordination, name: str
) -> None:
    buffer = coordination.buffer
    assert await buffer.read(name) is None
    await buffer.start(name, draft(), 5)
    empty = await buffer.read(name)
    assert empty is not None
    assert (empty.message_id, empty.content, empty.index, empty.parts) == ("m1", "", -1, ())
    assert (empty.owner, empty.request_seq, empty.model) == ("tok-a", 7, "")
    for text in ("Hel", "lo ", "wörld 🙂"):
        assert await buffer.append(name, "m1", "tok-a", text, 5) is BufferWrite.OK
    partial = await buffer.read(name)
    assert partial is not None
    assert (partial.content, partial.index) == ("Hello wörld 🙂", 2)
    assert partial.parts == ("Hel", "lo ", "wörld 🙂")
    assert await buffer.append(name, "stale", "tok-a", "ignored", 5) is BufferWrite.TAKEN
    await buffer.clear(name, "stale")  # nor here
    assert (await buffer.read(name)) == partial
    await buffer.start(name, draft("m2"), 5)  # the next reply replaces the buffer
    assert await buffer.append(name, "m2", "tok-a", "x", 5) is BufferWrite.OK
    again = await buffer.read(name)
    assert again is not None and (again.message_id, again.content, again.index) == ("m2", "x", 0)
    await buffer.clear(name, "m2")
    assert await buffer.read(name) is None
    # Gone (Redis restarted empty): said apart from taken, so the owner can restore it.
    assert await buffer.append(name, "m2", "tok-a", "x", 5) is BufferWrite.GONE


async def test_only_the_owner_appends_and_a_claim_moves_ownership(
    coordination: Coordination, name: str
) -> None:
    buffer = coordination.buffer
    await buffer.start(name, draft(owner="dead"), 5)
    assert await buffer.append(name, "m1", "dead", "half ", 5) is BufferWrite.OK
    await buffer.set_model(name, "m1", "model-7")
    claimed = await buffer.claim(name, "m1", "taker", 5)
    assert claimed is not None
    assert (claimed.content, claimed.index, claimed.owner) == ("half ", 0, "taker")
    assert (claimed.request_seq, claimed.model) == (7, "model-7")
    assert await buffer.append(name, "m1", "dead", "stale ", 5) is BufferWrite.TAKEN
    assert await buffer.append(name, "m1", "taker", "done", 5) is BufferWrite.OK
    final = await buffer.read(name)
    assert final is not None and final.parts == ("half ", "done")
    assert await buffer.claim(name, "other", "x", 5) is None
    await buffer.clear(name, "m1")
    assert await buffer.claim(name, "m1", "late", 5) is None


async def test_the_buffer_expires_with_a_crashed_writer(
    coordination: Coordination, name: str
) -> None:
    await coordination.buffer.start(name, draft(), 0.2)
    await coordination.buffer.append(name, "m1", "tok-a", "half a sen", 0.2)
    await asyncio.sleep(0.35)
    assert await coordination.buffer.read(name) is None


async def test_appending_keeps_the_buffer_alive(coordination: Coordination, name: str) -> None:
    await coordination.buffer.start(name, draft(), 0.4)
    for _ in range(3):
        await asyncio.sleep(0.2)
        await coordination.buffer.append(name, "m1", "tok-a", "x", 0.4)
    partial = await coordination.buffer.read(name)
    assert partial is not None and (partial.content, partial.index) == ("xxx", 2)


async def test_an_owner_fenced_out_by_a_newer_lock_never_writes_again(
    coordination: Coordination, name: str
) -> None:
    """A paused owner comes back after another instance took its reply over, stored it and
    cleared the buffer: it can neither restore the buffer nor append to it."""
    old = await coordination.locks.try_lock(name, 0.2)
    assert old is not None
    await coordination.buffer.start(name, draft(owner=old.token), 5)
    assert await coordination.buffer.append(name, "m1", old.token, "a", 5) is BufferWrite.OK
    await asyncio.sleep(0.35)
    new = await coordination.locks.try_lock(name, 5)
    assert new is not None
    claimed = await coordination.buffer.claim(name, "m1", new.token, 5)
    assert claimed is not None and claimed.content == "a"
    assert await coordination.buffer.append(name, "m1", new.token, "b", 5) is BufferWrite.OK
    await coordination.buffer.clear(name, "m1")

    await coordination.buffer.start(name, draft(owner=old.token), 5)  # a restore: refused
    assert await coordination.buffer.read(name) is None
    assert await coordination.buffer.append(name, "m1", old.token, "c", 5) is not BufferWrite.OK
    # Nor may it claim what the new owner starts next.
    await coordination.buffer.start(name, draft("m2", owner=new.token), 5)
    assert await coordination.buffer.claim(name, "m2", old.token, 5) is None
    assert await coordination.buffer.append(name, "m2", new.token, "d", 5) is BufferWrite.OK
    await new.release()


async def test_a_reply_cut_by_a_newer_fence_cannot_be_put_back_by_its_holder(
    coordination: Coordination, name: str
) -> None:
    holder = await coordination.locks.try_lock(name, 5)
    assert holder is not None
    await coordination.buffer.start(name, draft(owner=holder.token), 5)
    assert await coordination.buffer.append(name, "m1", holder.token, "a", 5) is BufferWrite.OK
    cutter = await coordination.locks.fenced_token(name)  # an operator accepted
    assert await coordination.buffer.claim(name, "m1", cutter, 5) is not None
    assert await coordination.buffer.append(name, "m1", holder.token, "b", 5) is not BufferWrite.OK
    await coordination.buffer.clear(name, "m1")  # the cut stored the reply
    await coordination.buffer.start(name, draft(owner=holder.token), 5)
    assert await coordination.buffer.read(name) is None
    await holder.release()


async def test_only_the_owner_abandons_a_reply(coordination: Coordination, name: str) -> None:
    buffer = coordination.buffer
    assert await buffer.abandon(name, "m1", "tok-a") is None  # nothing buffered
    await buffer.start(name, draft(owner="tok-a"), 5)
    assert await buffer.append(name, "m1", "tok-a", "shown", 5) is BufferWrite.OK
    assert await buffer.claim(name, "m1", "tok-b", 5) is not None  # taken over
    assert await buffer.abandon(name, "m1", "tok-a") is False  # the taker finishes it
    assert (await buffer.read(name)) is not None
    assert await buffer.abandon(name, "other", "tok-b") is None
    assert await buffer.abandon(name, "m1", "tok-b") is True
    assert await buffer.read(name) is None
