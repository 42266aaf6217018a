"""MongoDB store on PyMongo's native async API (``AsyncMongoClient``).

Documents are the records' own dumps, with their camelCase field names. ``seq`` is allocated
optimistically: read the last seq, insert seq + 1, and retry when the unique (tenantId,
consultationId, seq) index says another writer won. Unlike a counter that is incremented before
the insert, this never leaves a gap when an insert fails.

Because seqs have no gaps, "the newest messages" is a seq range. Every query for the newest is
bounded below by a seq this instance knows exists (``_SeqFloors``), so it reads a short index
range on any MongoDB-wire server, whatever the size of the consultation: an unbounded "sort
by seq, descending, limit 1" costs a real MongoDB one index probe, but the test server scans
the consultation, which made long chaos runs slower with every message.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from pydantic.alias_generators import to_camel
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument, uri_parser
from pymongo.errors import DuplicateKeyError, InvalidURI, PyMongoError

from ..domain.models import (
    Article,
    Author,
    Consultation,
    ConsultationKey,
    Message,
    Mode,
    Record,
    Role,
    TenantSettings,
    sorted_consultations,
)
from ..domain.ports import (
    COUNTED_ROLES,
    QUESTION_TRIM,
    TOP_STATS,
    Appended,
    OneOf,
    Stats,
)
from ..errors import StorageUnavailable

log = logging.getLogger(__name__)

MAX_SEQ_ATTEMPTS = 100
RETRY_WINDOW = 64  # newest messages of a consultation looked at first for a retried send
SEQ_INDEX = "tenant_consultation_seq"
CLIENT_ID_INDEX = "tenant_consultation_client_message"

Document = dict[str, Any]


class _SeqFloors:
    """The newest seq this instance has seen per consultation: a lower bound of its last seq
    (seqs only grow, and messages are never deleted). Bounded: the least recently used
    consultations are forgotten, and then looked up once unbounded."""

    LIMIT = 10_000

    def __init__(self) -> None:
        self._floors: OrderedDict[tuple[str, str], int] = OrderedDict()

    def get(self, key: ConsultationKey) -> int:
        return self._floors.get((key.tenant_id, key.consultation_id), 0)

    def saw(self, key: ConsultationKey, seq: int) -> None:
        name = (key.tenant_id, key.consultation_id)
        if seq <= self._floors.get(name, 0):
            self._floors.move_to_end(name)
            return
        self._floors[name] = seq
        self._floors.move_to_end(name)
        if len(self._floors) > self.LIMIT:
            self._floors.popitem(last=False)

    def forget(self, key: ConsultationKey) -> None:
        self._floors.pop((key.tenant_id, key.consultation_id), None)


class MongoStore:
    def __init__(self, url: str, database: str, *, timeout_seconds: float = 5.0) -> None:
        timeout_ms = int(timeout_seconds * 1000)
        # Fail within seconds, not PyMongo's 30 s server selection default: a client waiting
        # on an acknowledgement needs a prompt, retryable answer.
        self._client: AsyncMongoClient[Document] = AsyncMongoClient(
            url,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            socketTimeoutMS=timeout_ms * 2,
            tz_aware=True,
        )
        db = self._client[database]
        self._consultations = db["consultations"]
        self._messages = db["messages"]
        self._articles = db["knowledge"]
        self._revisions = db["knowledge_revisions"]
        self._tenants = db["tenant_settings"]
        self._seq_floors = _SeqFloors()

    async def start(self) -> None:
        """Create the indexes; :class:`StorageUnavailable` with a one-line reason when the
        server cannot be reached (the caller logs it and retries)."""
        try:
            await self._create_indexes()
        except PyMongoError as exc:
            raise StorageUnavailable(short_reason(exc)) from exc

    async def _create_indexes(self) -> None:
        await self._consultations.create_index(
            [("tenantId", ASCENDING), ("consultationId", ASCENDING)],
            unique=True,
            name="tenant_consultation",
        )
        # The operator queue and the dashboards' lists.
        await self._consultations.create_index(
            [("tenantId", ASCENDING), ("mode", ASCENDING), ("waitingSince", ASCENDING)],
            name="tenant_mode_waiting",
        )
        await self._consultations.create_index(
            [("operator.id", ASCENDING), ("mode", ASCENDING)], name="operator_mode"
        )
        await self._articles.create_index(
            [("tenantId", ASCENDING), ("_id", ASCENDING)], name="tenant_article"
        )
        await self._revisions.create_index([("tenantId", ASCENDING)], unique=True, name="tenant")
        # A visitor's consultations, moved to the user it signs in as.
        await self._consultations.create_index(
            [("tenantId", ASCENDING), ("ownerId", ASCENDING)], name="tenant_owner"
        )
        # The stats: a tenant's consultations and messages over a period.
        await self._consultations.create_index(
            [("tenantId", ASCENDING), ("createdAt", ASCENDING)], name="tenant_created"
        )
        await self._messages.create_index(
            [("tenantId", ASCENDING), ("timestamp", ASCENDING)], name="tenant_timestamp"
        )
        await self._messages.create_index(
            [("tenantId", ASCENDING), ("consultationId", ASCENDING), ("seq", ASCENDING)],
            unique=True,
            name=SEQ_INDEX,
        )
        # Idempotent sends: a retried clientMessageId is refused by the database itself,
        # even when two instances receive the retry at once.
        await self._messages.create_index(
            [
                ("tenantId", ASCENDING),
                ("consultationId", ASCENDING),
                ("clientMessageId", ASCENDING),
            ],
            unique=True,
            name=CLIENT_ID_INDEX,
            partialFilterExpression={"clientMessageId": {"$type": "string"}},
        )

    async def close(self) -> None:
        await self._client.close()

    async def ping(self) -> None:
        async with _translated("ping"):
            await self._client.admin.command("ping")

    async def stats(self, tenant_id: str, since: datetime | None, until: datetime | None) -> Stats:
        """Two aggregations, each one ``$group`` over an index range."""
        consultations = [
            {"$match": {"tenantId": tenant_id, **_period("createdAt", since, until)}},
            {
                "$group": {
                    "_id": None,
                    "count": {"$sum": 1},
                    "handedOff": {
                        "$sum": {"$cond": [{"$gt": [{"$ifNull": ["$handoffs", 0]}, 0]}, 1, 0]}
                    },
                    "handoffs": {"$sum": {"$ifNull": ["$handoffs", 0]}},
                    "avgRating": {"$avg": "$rating.score"},
                    "ratings": {"$sum": {"$cond": [{"$ifNull": ["$rating.score", False]}, 1, 0]}},
                }
            },
        ]
        messages = [
            {
                "$match": {
                    "tenantId": tenant_id,
                    "role": {"$in": [r.value for r in COUNTED_ROLES]},
                    **_period("timestamp", since, until),
                }
            },
            {
                "$group": {
                    "_id": None,
                    "count": {"$sum": 1},
                    "avgResponseMs": {"$avg": "$responseMs"},
                }
            },
        ]
        async with _translated("read stats"):
            c = await _single(await self._consultations.aggregate(consultations))
            m = await _single(await self._messages.aggregate(messages))
            knowledge = await self._knowledge_figures(tenant_id, since, until)
        count = int(c.get("count", 0))
        return Stats(
            consultations=count,
            messages=int(m.get("count", 0)),
            avg_ai_response_ms=m.get("avgResponseMs"),
            resolved_without_operator_ratio=(
                (count - int(c["handedOff"])) / count if count else None
            ),
            handoffs=int(c.get("handoffs", 0)),
            avg_rating=c.get("avgRating"),
            ratings=int(c.get("ratings", 0)),
            **knowledge,
        )

    async def _knowledge_figures(
        self, tenant_id: str, since: datetime | None, until: datetime | None
    ) -> dict[str, Any]:
        """The articles cited most, the most frequent questions, replies with no source."""
        period: Document = {"tenantId": tenant_id, **_period("timestamp", since, until)}
        top: list[Document] = [
            {"$sort": {"count": DESCENDING, "_id": ASCENDING}},
            {"$limit": TOP_STATS},
        ]
        sources: list[Document] = [
            {"$match": {**period, "role": Author.ASSISTANT.value, "sources.cited": True}},
            {"$unwind": "$sources"},
            {"$match": {"sources.cited": True}},
            {
                "$group": {
                    "_id": "$sources.id",
                    "count": {"$sum": 1},
                    "title": {"$last": "$sources.title"},
                }
            },
            *top,
        ]
        question: Document = {
            "$substrCP": [
                {"$trim": {"input": {"$toLower": "$content"}, "chars": QUESTION_TRIM}},
                0,
                200,
            ]
        }
        questions: list[Document] = [
            {"$match": {**period, "role": Author.USER.value}},
            {"$group": {"_id": question, "count": {"$sum": 1}}},
            {"$match": {"_id": {"$ne": ""}}},
            *top,
        ]
        unsourced: Document = {
            **period,
            "role": Author.ASSISTANT.value,
            "$or": [{"sources": {"$exists": False}}, {"sources": None}, {"sources": []}],
        }
        cited = await (await self._messages.aggregate(sources)).to_list()
        asked = await (await self._messages.aggregate(questions)).to_list()
        return {
            "top_sources": [(d["_id"], d["title"], int(d["count"])) for d in cited],
            "top_questions": [(d["_id"], int(d["count"])) for d in asked],
            "unanswered": await self._messages.count_documents(unsourced),
        }

    async def get_or_create(
        self, key: ConsultationKey, owner_id: str, owner_role: Role = Role.USER
    ) -> Consultation:
        query = _key_query(key)
        for _ in range(3):
            try:
                async with _translated("open consultation"):
                    created = Consultation.new(key, owner_id, owner_role)
                    doc = await self._consultations.find_one_and_update(
                        query,
                        {"$setOnInsert": _document(created, query)},
                        upsert=True,
                        return_document=ReturnDocument.AFTER,
                    )
            except _Duplicate:
                continue  # two upserts raced; the other one created it: read it back
            if doc is not None:
                return _consultation(doc)
        existing = await self.get(key)
        if existing is None:
            raise StorageUnavailable("Could not open the consultation")
        return existing

    async def get(self, key: ConsultationKey) -> Consultation | None:
        async with _translated("read consultation"):
            doc = await self._consultations.find_one(_key_query(key))
        return _consultation(doc) if doc else None

    async def find(
        self,
        tenant_id: str | None,
        *,
        mode: Mode | None = None,
        operator_id: str | None = None,
        limit: int = 500,
    ) -> list[Consultation]:
        query: Document = {}
        if tenant_id is not None:
            query["tenantId"] = tenant_id
        if mode is not None:
            query.update(_conditions({"mode": mode}))
        if operator_id is not None:
            query["operator.id"] = operator_id
        if mode is Mode.WAITING:
            order = [("requeued", DESCENDING), ("waitingSince", ASCENDING)]
        else:
            order = [("createdAt", DESCENDING)]
        async with _translated("find consultations"):
            docs = await self._consultations.find(query).sort(order).limit(limit).to_list()
        return sorted_consultations([_consultation(doc) for doc in docs], mode)

    async def update(
        self,
        key: ConsultationKey,
        changes: Mapping[str, Any],
        *,
        expect: Mapping[str, Any] | None = None,
    ) -> Consultation | None:
        if not changes:
            raise ValueError("an update needs at least one change")
        query = {**_key_query(key), **_conditions(expect or {})}
        values = {_alias(Consultation, name): _plain(value) for name, value in changes.items()}
        async with _translated("update consultation"):
            doc = await self._consultations.find_one_and_update(
                query, {"$set": values}, return_document=ReturnDocument.AFTER
            )
        return _consultation(doc) if doc else None

    async def transfer(
        self, tenant_id: str, from_owner: str, to_owner: str, to_role: Role
    ) -> list[Consultation]:
        owned = {"tenantId": tenant_id, "ownerId": from_owner}
        async with _translated("find consultations"):
            docs = await self._consultations.find(owned, projection={"consultationId": 1}).to_list()
        ids = [doc["consultationId"] for doc in docs]
        if not ids:
            return []
        # Messages first: a retry after a failure between the two finds the consultations
        # still owned by the visitor and moves both again (each update is idempotent).
        written = {
            "tenantId": tenant_id,
            "consultationId": {"$in": ids},
            "role": Author.USER.value,
            "userId": from_owner,
        }
        async with _translated("move messages"):
            await self._messages.update_many(written, {"$set": {"userId": to_owner}})
            await self._consultations.update_many(
                {**owned, "consultationId": {"$in": ids}},
                {"$set": {"ownerId": to_owner, "ownerRole": to_role.value}},
            )
            moved = await self._consultations.find(
                {"tenantId": tenant_id, "consultationId": {"$in": ids}}
            ).to_list()
        return [_consultation(doc) for doc in moved]

    async def tenant_settings(self, tenant_id: str) -> TenantSettings:
        async with _translated("read tenant settings"):
            doc = await self._tenants.find_one({"_id": tenant_id})
        if doc is None:
            return TenantSettings(tenant_id=tenant_id)
        return TenantSettings.model_validate({**doc, "tenant_id": tenant_id})

    async def put_tenant_settings(self, settings: TenantSettings) -> TenantSettings:
        doc = {"_id": settings.tenant_id, **settings.model_dump(by_alias=True)}
        async with _translated("store tenant settings"):
            await self._tenants.replace_one({"_id": settings.tenant_id}, doc, upsert=True)
        return settings

    # -- the knowledge base: _id is "<tenant>/<article id>" (ids are the tenant's own) --------

    async def put_article(self, article: Article) -> Article:
        doc = _document(article, {"tenantId": article.tenant_id})
        doc["articleId"] = doc.pop("_id")
        doc["_id"] = _article_key(article.tenant_id, article.id)
        async with _translated("store article"):
            await self._articles.replace_one({"_id": doc["_id"]}, doc, upsert=True)
            await self._bump_revision(article.tenant_id)
        return article

    async def get_article(self, tenant_id: str, article_id: str) -> Article | None:
        async with _translated("read article"):
            doc = await self._articles.find_one({"_id": _article_key(tenant_id, article_id)})
        return _article(doc) if doc else None

    async def articles(self, tenant_id: str) -> list[Article]:
        async with _translated("read articles"):
            docs = await self._articles.find({"tenantId": tenant_id}).to_list()
        return sorted((_article(doc) for doc in docs), key=lambda a: a.id)

    async def delete_article(self, tenant_id: str, article_id: str) -> bool:
        async with _translated("delete article"):
            result = await self._articles.delete_one({"_id": _article_key(tenant_id, article_id)})
            if result.deleted_count:
                await self._bump_revision(tenant_id)
        return bool(result.deleted_count)

    async def knowledge_revision(self, tenant_id: str) -> int:
        async with _translated("read knowledge revision"):
            doc = await self._revisions.find_one({"tenantId": tenant_id})
        return int(doc["revision"]) if doc else 0

    async def _bump_revision(self, tenant_id: str) -> None:
        await self._revisions.update_one(
            {"tenantId": tenant_id}, {"$inc": {"revision": 1}}, upsert=True
        )

    async def append(self, message: Message) -> Appended:
        for attempt in range(MAX_SEQ_ATTEMPTS):
            seq = await self._last_seq(message.key) + 1
            try:
                async with _translated("store message"):
                    await self._messages.insert_one(_message_doc(message, seq))
                self._seq_floors.saw(message.key, seq)
            except _Duplicate as dup:
                if dup.index == CLIENT_ID_INDEX:
                    return Appended(await self._by_client_id(message), created=False)
                if dup.index == "_id_":  # a reply stored once, even if two instances try
                    return Appended(await self._by_id(message.id), created=False)
                if dup.index != SEQ_INDEX:
                    raise StorageUnavailable("The message conflicts with a stored one") from dup
                # Another writer took this seq; back off a little to spread retries.
                await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
                continue
            return Appended(message.model_copy(update={"seq": seq}), created=True)
        raise StorageUnavailable("Too much contention allocating a message sequence number")

    async def _by_client_id(self, message: Message) -> Message:
        query = {**_key_query(message.key), "clientMessageId": message.client_message_id}
        async with _translated("read message"):
            doc = await self._retried_among_newest(message)
            if doc is None:
                doc = await self._messages.find_one(query)
        if doc is None:  # the index said it exists: only a concurrent delete could do this
            raise StorageUnavailable("The retried message could not be read back")
        return _message(doc)

    async def _retried_among_newest(self, message: Message) -> Document | None:
        """A retried send is almost always among its consultation's newest messages: one
        short seq range, matched here. (A query on clientMessageId itself makes the test
        server scan the whole collection: it does not use the partial index.)"""
        newest = self._seq_floors.get(message.key)
        if not newest:
            return None
        window = {**_key_query(message.key), "seq": {"$gt": newest - RETRY_WINDOW}}
        cursor = self._messages.find(window, projection={"clientMessageId": 1})
        async for doc in cursor:
            if doc.get("clientMessageId") == message.client_message_id:
                return await self._messages.find_one({"_id": doc["_id"]})
        return None

    async def _by_id(self, message_id: str) -> Message:
        async with _translated("read message"):
            doc = await self._messages.find_one({"_id": message_id})
        if doc is None:
            raise StorageUnavailable("The stored message could not be read back")
        return _message(doc)

    async def recent(self, key: ConsultationKey, limit: int) -> list[Message]:
        if limit <= 0:
            return []
        last = await self._last_seq(key)
        if last == 0:
            return []
        return await self.after(key, max(0, last - limit), limit)

    async def after(self, key: ConsultationKey, after_seq: int, limit: int) -> list[Message]:
        if limit <= 0:
            return []
        # Bounded on both sides (seqs have no gaps): exactly the index range to read.
        query = {**_key_query(key), "seq": {"$gt": after_seq, "$lte": after_seq + limit}}
        async with _translated("read messages"):
            cursor = self._messages.find(query).sort("seq", ASCENDING).limit(limit)
            docs = await cursor.to_list()
        return [_message(doc) for doc in docs]

    async def _last_seq(self, key: ConsultationKey) -> int:
        floor = self._seq_floors.get(key)
        doc = await self._newest_seq(key, floor)
        if doc is None and floor:
            # Messages at or past the floor are gone: removed from the database by hand.
            self._seq_floors.forget(key)
            doc = await self._newest_seq(key, 0)
        if doc is None:
            return 0  # no message yet
        seq = int(doc["seq"])
        self._seq_floors.saw(key, seq)
        return seq

    async def _newest_seq(self, key: ConsultationKey, floor: int) -> Document | None:
        query = _key_query(key)
        if floor:
            query["seq"] = {"$gte": floor}
        async with _translated("read sequence"):
            return await self._messages.find_one(
                query, projection={"seq": 1}, sort=[("seq", DESCENDING)]
            )


class _Duplicate(Exception):
    def __init__(self, index: str | None) -> None:
        super().__init__(index)
        self.index = index


@asynccontextmanager
async def _translated(action: str) -> AsyncIterator[None]:
    """Translate driver errors where they occur: duplicates are ours to handle, the rest is
    an outage answered to the client as ``storage_unavailable``."""
    try:
        yield
    except DuplicateKeyError as exc:
        raise _Duplicate(_index_name(exc)) from exc
    except PyMongoError as exc:
        log.warning("MongoDB failed to %s: %s", action, short_reason(exc))
        raise StorageUnavailable() from exc


def describe_url(url: str) -> str:
    """Where a MongoDB URL points, for the log (never its credentials): ``MongoDB at h:p``."""
    try:
        nodes = uri_parser.parse_uri(url)["nodelist"]
    except (InvalidURI, ValueError):
        return "MongoDB"
    return "MongoDB at " + ",".join(f"{host}:{port}" for host, port in nodes)


def short_reason(exc: PyMongoError) -> str:
    """PyMongo's error without its topology dump: ``connection refused``,
    ``[Errno -2] Name or service not known`` …"""
    text = str(exc).split(" (configured timeouts")[0].split(", Timeout:")[0]
    text = re.sub(r"^[^\s:]+:\d+: ", "", text)  # the address: the caller names it
    text = re.sub(r"\[Errno 111\] Connect call failed \([^)]*\)", "connection refused", text)
    return text.strip() or type(exc).__name__


def _index_name(exc: DuplicateKeyError) -> str | None:
    details = exc.details or {}
    message = str(details.get("errmsg", exc))
    marker = "index: "
    if marker in message:
        return message.split(marker, 1)[1].split(" ", 1)[0]
    return None


def _period(field: str, since: datetime | None, until: datetime | None) -> Document:
    bounds: Document = {}
    if since is not None:
        bounds["$gte"] = since
    if until is not None:
        bounds["$lt"] = until
    return {field: bounds} if bounds else {}


async def _single(cursor: Any) -> Document:
    """The one document of a ``$group`` by None (none when nothing matched)."""
    found: list[Document] = await cursor.to_list(1)
    return found[0] if found else {}


def _key_query(key: ConsultationKey) -> Document:
    return {"tenantId": key.tenant_id, "consultationId": key.consultation_id}


# Documents are the records' own dumps (camelCase field names), so a new field needs no edit
# here. A message's ``id`` is its ``_id``; datetimes are stored as BSON dates.


def _document(record: Record, key_query: Document) -> Document:
    doc = record.model_dump(by_alias=True)
    doc.update(key_query)
    if "id" in doc:
        doc["_id"] = doc.pop("id")
    return doc


def _consultation(doc: Document) -> Consultation:
    return Consultation.model_validate(_aware_dates(doc))


def _article_key(tenant_id: str, article_id: str) -> str:
    return f"{len(tenant_id)}:{tenant_id}/{article_id}"


def _article(doc: Document) -> Article:
    fields = _aware_dates(doc)
    fields["tenant_id"] = doc["tenantId"]
    return Article.model_validate({**fields, "id": doc["articleId"]})


def _message_doc(message: Message, seq: int) -> Document:
    doc = _document(message, _key_query(message.key))
    doc["seq"] = seq
    if doc.get("clientMessageId") is None:
        del doc["clientMessageId"]  # the unique index covers only messages that have one
    return doc


def _message(doc: Document) -> Message:
    fields = _aware_dates(doc)
    fields["tenant_id"] = doc["tenantId"]  # excluded from dumps, so not read by its alias
    fields.setdefault("timestamp", fields.get("createdAt"))  # documents written before 0.2
    return Message.model_validate({**fields, "id": str(doc["_id"])})


def _alias(model: type[Record], name: str) -> str:
    if name not in model.model_fields:
        raise ValueError(f"{model.__name__} has no field {name!r}")
    return to_camel(name)


def _conditions(expect: Mapping[str, Any]) -> Document:
    """``{"mode": Mode.WAITING, "operator.id": "op"}`` as a MongoDB filter on the aliases.

    A document written before a field existed holds its default: expecting the default also
    matches a missing field."""
    query: Document = {}
    for path, wanted in expect.items():
        first, *rest = path.split(".")
        field = ".".join([_alias(Consultation, first), *(to_camel(part) for part in rest)])
        values = list(wanted.values) if isinstance(wanted, OneOf) else [wanted]
        default = None if rest else Consultation.model_fields[first].default
        if default is not None and default in values:
            values.append(None)
        plain = [_plain(v) for v in values]
        query[field] = plain[0] if len(plain) == 1 else {"$in": plain}
    return query


def _plain(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if dump is not None:
        return dump(by_alias=True)
    return value.value if hasattr(value, "value") else value


def _aware_dates(doc: Document) -> Document:
    return {k: _aware(v) if isinstance(v, datetime) else v for k, v in doc.items()}


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
