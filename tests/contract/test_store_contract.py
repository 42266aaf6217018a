"""The Store contract: the memory and mongo stores must behave the same."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from server.domain.models import (
    Article,
    Author,
    CannedReply,
    ConsultationKey,
    Message,
    MessageStatus,
    Mode,
    OperatorRef,
    PageContext,
    PageRef,
    Role,
    Source,
    TenantSettings,
    utcnow,
)
from server.domain.ports import OneOf, Store
from server.storage.memory import MemoryStore
from server.storage.mongo import MongoStore
from tests.servers import MongoServer

KEY = ConsultationKey("tenant-a", "c-1")


@pytest.fixture(params=["memory", "mongo"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    impl: Store
    if request.param == "memory":
        impl = MemoryStore()
    else:
        server: MongoServer = request.getfixturevalue("mongo_server")
        impl = MongoStore(server.url, f"test_{uuid.uuid4().hex[:12]}", timeout_seconds=5)
    await impl.start()
    yield impl
    await impl.close()


@pytest.fixture(params=["memory", "mongo"])
async def two_handles(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Store, Store]]:
    """Two instances' view of one store (for memory, one object)."""
    stores: list[Store]
    if request.param == "memory":
        stores = [MemoryStore()] * 2
    else:
        server: MongoServer = request.getfixturevalue("mongo_server")
        database = f"test_{uuid.uuid4().hex[:12]}"
        stores = [MongoStore(server.url, database, timeout_seconds=5) for _ in range(2)]
    for impl in stores:
        await impl.start()
    yield stores[0], stores[1]
    for impl in stores:
        await impl.close()


def draft(
    key: ConsultationKey = KEY, content: str = "hello", role: Author = Author.USER, **fields: Any
) -> Message:
    return Message.new(key, role, content, **{"user_id": "u1", **fields})


async def test_get_or_create_creates_once_and_keeps_the_first_owner(store: Store) -> None:
    first = await store.get_or_create(KEY, "owner")
    second = await store.get_or_create(KEY, "someone-else")
    assert first == second
    assert second.owner_id == "owner"
    assert await store.get(KEY) == first


async def test_get_of_a_missing_consultation_is_none(store: Store) -> None:
    assert await store.get(ConsultationKey("tenant-a", "missing")) is None


async def test_same_id_in_two_tenants_is_two_consultations(store: Store) -> None:
    a = await store.get_or_create(ConsultationKey("tenant-a", "shared"), "alice")
    b = await store.get_or_create(ConsultationKey("tenant-b", "shared"), "bob")
    assert (a.owner_id, b.owner_id) == ("alice", "bob")
    await store.append(draft(a.key, "for tenant a"))
    assert await store.recent(b.key, 10) == []
    assert await store.after(b.key, 0, 10) == []


async def test_concurrent_get_or_create_agrees_on_one_owner(store: Store) -> None:
    key = ConsultationKey("tenant-a", "race")
    results = await asyncio.gather(*(store.get_or_create(key, f"u{i}") for i in range(10)))
    assert len({r.owner_id for r in results}) == 1


async def test_append_allocates_consecutive_seqs_per_consultation(store: Store) -> None:
    other = ConsultationKey("tenant-a", "c-2")
    seqs = [(await store.append(draft())).message.seq for _ in range(3)]
    assert seqs == [1, 2, 3]
    assert (await store.append(draft(other))).message.seq == 1


async def test_message_round_trips_every_field(store: Store) -> None:
    sent = draft(
        role=Author.ASSISTANT,
        user_id=None,
        content="partial ünïcödé 🙂",
        status=MessageStatus.INCOMPLETE,
        model="m-1",
        client_message_id="cm-1",
    )
    stored = (await store.append(sent)).message
    [read] = await store.recent(KEY, 10)
    assert read == stored
    assert read.status is MessageStatus.INCOMPLETE
    assert read.model == "m-1"
    assert read.timestamp == sent.timestamp
    assert read.key == KEY


async def test_concurrent_appends_are_gap_free_and_unique(store: Store) -> None:
    appended = await asyncio.gather(*(store.append(draft(content=f"m{i}")) for i in range(40)))
    stored = [a.message for a in appended]
    assert all(a.created for a in appended)
    assert sorted(m.seq for m in stored) == list(range(1, 41))
    read = await store.after(KEY, 0, 100)
    assert [m.seq for m in read] == list(range(1, 41))
    assert {m.id for m in read} == {m.id for m in stored}


async def test_recent_returns_the_last_messages_oldest_first(store: Store) -> None:
    for i in range(6):
        await store.append(draft(content=f"m{i}"))
    recent = await store.recent(KEY, 3)
    assert [m.content for m in recent] == ["m3", "m4", "m5"]
    assert [m.seq for m in recent] == [4, 5, 6]
    assert len(await store.recent(KEY, 50)) == 6


async def test_the_newest_messages_are_found_after_another_instance_wrote_more(
    two_handles: tuple[Store, Store],
) -> None:
    """An instance's idea of a consultation's last seq is only a lower bound: messages another
    instance stored since are in its recent() and after(), and its next append follows them."""
    first, second = two_handles
    for i in range(5):
        await first.append(draft(content=f"a{i}"))
    assert [m.seq for m in await first.recent(KEY, 2)] == [4, 5]
    for i in range(70):
        await second.append(draft(content=f"b{i}"))
    assert [m.seq for m in await first.recent(KEY, 3)] == [73, 74, 75]
    assert [m.content for m in await first.recent(KEY, 1)] == ["b69"]
    assert len(await first.recent(KEY, 100)) == 75
    assert [m.seq for m in await first.after(KEY, 70, 50)] == [71, 72, 73, 74, 75]
    appended = await first.append(draft(content="a5"))
    assert appended.message.seq == 76
    assert [m.seq for m in await second.recent(KEY, 2)] == [75, 76]


async def test_messages_removed_by_hand_do_not_stall_the_next_append(
    mongo_server: MongoServer,
) -> None:
    """MongoDB only: the store's floor of a consultation's last seq is a hint, not a fact. An
    operator who deletes the newest messages in the database gets appends, not errors."""
    database = f"test_{uuid.uuid4().hex[:12]}"
    store = MongoStore(mongo_server.url, database, timeout_seconds=5)
    await store.start()
    try:
        for i in range(5):
            await store.append(draft(content=f"m{i}"))
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.url)
        await client[database]["messages"].delete_many({"seq": {"$gte": 3}})
        await client.close()
        assert (await store.append(draft(content="after"))).message.seq == 3
        assert [m.content for m in await store.recent(KEY, 10)] == ["m0", "m1", "after"]
    finally:
        await store.close()


async def test_after_returns_messages_past_a_seq_with_a_limit(store: Store) -> None:
    for i in range(6):
        await store.append(draft(content=f"m{i}"))
    assert [m.seq for m in await store.after(KEY, 4, 50)] == [5, 6]
    assert [m.seq for m in await store.after(KEY, 0, 2)] == [1, 2]
    assert await store.after(KEY, 6, 50) == []
    assert [m.seq for m in await store.after(KEY, 2, 2)] == [3, 4]


async def test_ping_succeeds_when_the_store_is_up(store: Store) -> None:
    await store.ping()


async def test_a_retried_client_message_id_returns_the_stored_message(store: Store) -> None:
    first = await store.append(draft(content="once", client_message_id="cm-1"))
    retry = await store.append(draft(content="once (retry)", client_message_id="cm-1"))
    assert first.created is True and retry.created is False
    assert retry.message == first.message
    other_consultation = await store.append(
        draft(ConsultationKey("tenant-a", "c-2"), client_message_id="cm-1")
    )
    assert other_consultation.created is True  # ids are scoped to their consultation
    assert [m.content for m in await store.after(KEY, 0, 10)] == ["once"]


async def test_a_send_retried_long_after_is_still_found_once(
    two_handles: tuple[Store, Store],
) -> None:
    """Retries are looked for among the newest messages first; one retried after a hundred
    more (or on another instance) is found all the same."""
    first, second = two_handles
    original = await first.append(draft(content="early", client_message_id="cm-early"))
    for i in range(100):
        await second.append(draft(content=f"m{i}", client_message_id=f"cm-{i}"))
    for store in (first, second):
        retry = await store.append(draft(content="early (retry)", client_message_id="cm-early"))
        assert retry.created is False and retry.message == original.message
        recent_retry = await store.append(draft(content="again", client_message_id="cm-98"))
        assert recent_retry.created is False and recent_retry.message.seq == 100
    assert len(await first.after(KEY, 0, 200)) == 101


async def test_concurrent_retries_store_one_message_and_keep_seqs_gap_free(store: Store) -> None:
    attempts = [draft(content=f"m{i % 5}", client_message_id=f"cm-{i % 5}") for i in range(25)]
    results = await asyncio.gather(*(store.append(a) for a in attempts))
    assert sum(r.created for r in results) == 5
    stored = await store.after(KEY, 0, 100)
    assert [m.seq for m in stored] == [1, 2, 3, 4, 5]
    for result in results:
        assert result.message in stored


async def test_a_new_consultation_is_answered_by_the_ai(store: Store) -> None:
    consultation = await store.get_or_create(KEY, "owner")
    assert consultation.mode is Mode.AI
    assert consultation.operator is None


async def test_update_sets_fields_and_returns_the_updated_consultation(store: Store) -> None:
    await store.get_or_create(KEY, "owner")
    operator = OperatorRef(id="op-1", name="Olga")
    updated = await store.update(KEY, {"mode": Mode.OPERATOR, "operator": operator})
    assert updated is not None
    assert (updated.mode, updated.operator, updated.owner_id) == (Mode.OPERATOR, operator, "owner")
    assert await store.get(KEY) == updated
    cleared = await store.update(KEY, {"mode": Mode.AI, "operator": None})
    assert cleared is not None and cleared.operator is None
    assert await store.update(ConsultationKey("tenant-a", "missing"), {"mode": Mode.AI}) is None


async def test_update_applies_only_while_the_expectation_holds(store: Store) -> None:
    await store.get_or_create(KEY, "owner")
    assert await store.update(KEY, {"mode": Mode.CLOSED}, expect={"mode": Mode.WAITING}) is None
    assert (await store.get(KEY)).mode is Mode.AI  # type: ignore[union-attr]
    waiting = await store.update(
        KEY, {"mode": Mode.WAITING, "reason": "pain"}, expect={"mode": OneOf([Mode.AI])}
    )
    assert waiting is not None and waiting.reason == "pain"
    taken = await store.update(
        KEY,
        {"mode": Mode.OPERATOR, "operator": OperatorRef(id="op-1", name="O")},
        expect={"mode": Mode.WAITING},
    )
    assert taken is not None
    assert await store.update(KEY, {"mode": Mode.AI}, expect={"operator.id": "op-2"}) is None
    released = await store.update(
        KEY, {"mode": Mode.AI, "operator": None}, expect={"operator.id": "op-1"}
    )
    assert released is not None and released.mode is Mode.AI


async def test_of_concurrent_conditional_updates_exactly_one_wins(store: Store) -> None:
    await store.get_or_create(KEY, "owner")
    await store.update(KEY, {"mode": Mode.WAITING})
    results = await asyncio.gather(
        *(
            store.update(
                KEY,
                {"mode": Mode.OPERATOR, "operator": OperatorRef(id=f"op-{i}", name="O")},
                expect={"mode": Mode.WAITING},
            )
            for i in range(10)
        )
    )
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert await store.get(KEY) == winners[0]


async def test_update_refuses_fields_a_consultation_does_not_have(store: Store) -> None:
    await store.get_or_create(KEY, "owner")
    with pytest.raises(ValueError):
        await store.update(KEY, {"no_such_field": 1})


async def test_find_lists_a_tenants_consultations_by_mode_and_operator(store: Store) -> None:
    keys = [ConsultationKey("tenant-a", f"q-{n}") for n in range(4)]
    for key in keys:
        await store.get_or_create(key, "owner")
    await store.get_or_create(ConsultationKey("tenant-b", "q-0"), "other")
    base = utcnow()
    for n, key in enumerate(keys[:3]):
        await store.update(
            key, {"mode": Mode.WAITING, "waiting_since": base + timedelta(seconds=10 - n)}
        )
    await store.update(keys[0], {"requeued": True})  # back after its operator vanished
    await store.update(keys[3], {"mode": Mode.OPERATOR, "operator": OperatorRef(id="op", name="O")})
    waiting = await store.find("tenant-a", mode=Mode.WAITING)
    assert [c.id for c in waiting] == ["q-0", "q-2", "q-1"]  # requeued first, then oldest
    assert [c.id for c in await store.find("tenant-a", operator_id="op")] == ["q-3"]
    assert len(await store.find("tenant-a")) == 4
    assert len(await store.find(None, mode=Mode.AI)) == 1  # every tenant
    assert await store.find("tenant-c") == []
    assert len(await store.find("tenant-a", mode=Mode.WAITING, limit=2)) == 2


async def test_stats_count_a_tenants_consultations_and_messages_in_a_period(store: Store) -> None:
    start = utcnow()
    a, b, c = (ConsultationKey("stats-t", f"s-{i}") for i in range(3))
    for key in (a, b, c):
        await store.get_or_create(key, "owner")
    await store.get_or_create(ConsultationKey("other-tenant", "s-0"), "owner")
    await store.update(b, {"handoffs": 2})
    rated = {"score": 4, "comment": "ok", "rated_at": utcnow()}
    await store.update(a, {"rating": rated})
    await store.update(c, {"rating": {**rated, "score": 1}})
    await store.append(draft(a, "q1"))
    await store.append(draft(a, "a1", Author.ASSISTANT, response_ms=100))
    await store.append(draft(a, "a2", Author.ASSISTANT, response_ms=300))
    await store.append(draft(b, "hi", Author.OPERATOR))
    await store.append(draft(b, "note", Author.SYSTEM))  # not counted
    await store.append(draft(ConsultationKey("other-tenant", "s-0"), "elsewhere"))
    later = start + timedelta(days=1)
    await store.append(draft(c, "tomorrow", timestamp=later))

    everything = await store.stats("stats-t", None, None)
    assert everything.consultations == 3
    assert everything.messages == 5
    assert everything.avg_ai_response_ms == 200
    assert everything.handoffs == 2
    assert everything.resolved_without_operator_ratio == 2 / 3
    assert everything.avg_rating == 2.5 and everything.ratings == 2

    today = await store.stats("stats-t", start - timedelta(seconds=1), later)
    assert today.messages == 4 and today.consultations == 3
    tomorrow = await store.stats("stats-t", later, None)
    assert (tomorrow.messages, tomorrow.consultations) == (1, 0)
    assert tomorrow.avg_ai_response_ms is None and tomorrow.avg_rating is None
    assert tomorrow.resolved_without_operator_ratio is None

    rated_again = await store.update(a, {"rating": {**rated, "score": 5}})
    assert rated_again is not None and rated_again.rating is not None
    assert rated_again.rating.score == 5 and rated_again.to_wire()["rating"]["score"] == 5
    assert (await store.stats("stats-t", None, None)).avg_rating == 3.0  # the last one counts
    reread = await store.get(a)
    assert reread is not None and reread.rating == rated_again.rating


async def test_transfer_gives_a_visitors_consultations_and_messages_to_the_user(
    store: Store,
) -> None:
    mine = [ConsultationKey("tenant-a", f"v-{n}") for n in range(2)]
    someone_elses = ConsultationKey("tenant-a", "other")
    other_tenant = ConsultationKey("tenant-b", "v-0")
    for key in [*mine, other_tenant]:
        await store.get_or_create(key, "visitor-1", Role.VISITOR)
        await store.append(draft(key, user_id="visitor-1", client_message_id=f"c-{key}"))
        await store.append(draft(key, role=Author.ASSISTANT, user_id=None))
    await store.get_or_create(someone_elses, "visitor-2")
    await store.append(draft(someone_elses, user_id="visitor-2"))

    moved = await store.transfer("tenant-a", "visitor-1", "user-9", Role.USER)

    assert sorted(c.consultation_id for c in moved) == ["v-0", "v-1"]
    assert all((c.owner_id, c.owner_role) == ("user-9", Role.USER) for c in moved)
    for key in mine:
        consultation = await store.get(key)
        assert consultation is not None and consultation.owner_id == "user-9"
        assert consultation.owner_role is Role.USER
        question, answer = await store.recent(key, 10)
        assert (question.user_id, answer.user_id) == ("user-9", None)
        # A retried send finds the message under its new author.
        retried = await store.append(
            draft(key, user_id="user-9", client_message_id=f"c-{key}", content="again")
        )
        assert (retried.created, retried.message.id) == (False, question.id)
    # Another visitor's and another tenant's stay where they were.
    assert (await store.get(someone_elses)).owner_id == "visitor-2"  # type: ignore[union-attr]
    theirs_too = await store.get(other_tenant)
    assert theirs_too is not None
    assert (theirs_too.owner_id, theirs_too.owner_role) == ("visitor-1", Role.VISITOR)
    [theirs, *_] = await store.recent(other_tenant, 10)
    assert theirs.user_id == "visitor-1"
    # A repeat moves none.
    assert await store.transfer("tenant-a", "visitor-1", "user-9", Role.USER) == []


async def test_a_consultation_keeps_its_page_context(store: Store) -> None:
    await store.get_or_create(KEY, "u1")
    context = PageContext(
        page=PageRef(url="https://tours.example/bled", title="Bled"),
        attributes={"seatsLeft": 4, "guided": True, "tour": "Lake Bled", "price": 99.5},
    )
    updated = await store.update(KEY, {"context": context})
    assert updated is not None and updated.context == context
    read = await store.get(KEY)
    assert read is not None and read.context == context
    assert read.to_wire()["context"] == {
        "page": {"url": "https://tours.example/bled", "title": "Bled"},
        "attributes": {"seatsLeft": 4, "guided": True, "tour": "Lake Bled", "price": 99.5},
    }


def article(tenant: str, article_id: str, title: str = "Tours", **fields: Any) -> Article:
    return Article(
        id=article_id,
        tenant_id=tenant,
        title=title,
        content=fields.pop("content", "Lake Bled tours leave on Mondays."),
        updated_at=utcnow(),
        **fields,
    )


async def test_articles_are_kept_per_tenant_and_every_write_moves_the_revision(
    store: Store,
) -> None:
    assert await store.knowledge_revision("t1") == 0
    first = article("t1", "bled", url="https://tours.example/bled", tags=["tours"])
    await store.put_article(first)
    await store.put_article(article("t1", "refunds", title="Refunds"))
    await store.put_article(article("t2", "bled", title="Other tenant's"))
    revision = await store.knowledge_revision("t1")
    assert revision > 0
    assert [a.id for a in await store.articles("t1")] == ["bled", "refunds"]
    assert await store.get_article("t1", "bled") == first
    assert (await store.get_article("t2", "bled")).title == "Other tenant's"  # type: ignore[union-attr]
    assert await store.get_article("t1", "nope") is None

    await store.put_article(article("t1", "bled", title="Bled, updated"))
    assert await store.knowledge_revision("t1") > revision
    assert (await store.get_article("t1", "bled")).title == "Bled, updated"  # type: ignore[union-attr]
    revision = await store.knowledge_revision("t1")
    assert await store.delete_article("t1", "bled") is True
    assert await store.delete_article("t1", "bled") is False
    assert await store.knowledge_revision("t1") > revision
    assert [a.id for a in await store.articles("t1")] == ["refunds"]
    assert [a.id for a in await store.articles("t2")] == ["bled"]


async def test_a_reply_keeps_its_sources(store: Store) -> None:
    sources = [
        Source(id="bled", title="Lake Bled", url="https://tours.example/bled", cited=True),
        Source(id="refunds", title="Refunds"),
    ]
    stored = (await store.append(draft(role=Author.ASSISTANT, sources=sources))).message
    [read] = await store.recent(KEY, 1)
    assert read == stored and read.sources == sources
    assert read.to_wire()["sources"][1] == {"id": "refunds", "title": "Refunds", "cited": False}


async def test_stats_count_cited_sources_popular_questions_and_unsourced_replies(
    store: Store,
) -> None:
    bled = Source(id="bled", title="Lake Bled", cited=True)
    refunds = Source(id="refunds", title="Refunds", cited=True)
    uncited = Source(id="visa", title="Visas")
    for text in ["When does the Bled tour leave?", "when does the bled tour leave", "Refunds?"]:
        await store.append(draft(content=text))
    await store.append(draft(role=Author.ASSISTANT, sources=[bled, uncited]))
    await store.append(draft(role=Author.ASSISTANT, sources=[bled, refunds]))
    await store.append(draft(role=Author.ASSISTANT))  # no source at all
    await store.append(
        draft(ConsultationKey("tenant-b", "x"), role=Author.ASSISTANT, sources=[bled])
    )

    stats = await store.stats("tenant-a", None, None)

    assert stats.top_sources == [("bled", "Lake Bled", 2), ("refunds", "Refunds", 1)]
    assert stats.top_questions == [("when does the bled tour leave", 2), ("refunds", 1)]
    assert stats.unanswered == 1


async def test_tenant_settings_are_kept_per_tenant(store: Store) -> None:
    assert await store.tenant_settings("t1") == TenantSettings(tenant_id="t1")
    settings = TenantSettings(
        tenant_id="t1",
        greeting="Welcome!",
        canned_replies=[CannedReply(shortcut="hi", text="Hello there")],
    )
    await store.put_tenant_settings(settings)
    assert await store.tenant_settings("t1") == settings
    assert (await store.tenant_settings("t2")).canned_replies == []
