"""MongoDB store on PyMongo's native async API (``AsyncMongoClient``).

Documents use the wire field names. ``seq`` is allocated optimistically: read the last seq,
insert seq + 1, and retry when the unique (tenantId, consultationId, seq) index says another
writer won. Unlike a counter that is incremented before the insert, this never leaves a gap when
an insert fails.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

from ..domain.models import (
    Author,
    Consultation,
    ConsultationKey,
    Message,
    MessageStatus,
    NewMessage,
    utcnow,
)
from ..domain.ports import Appended
from ..errors import StorageUnavailable

log = logging.getLogger(__name__)

MAX_SEQ_ATTEMPTS = 100
SEQ_INDEX = "tenant_consultation_seq"
CLIENT_ID_INDEX = "tenant_consultation_client_message"

Document = dict[str, Any]


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

    async def start(self) -> None:
        async with _translated("create indexes"):
            await self._consultations.create_index(
                [("tenantId", ASCENDING), ("consultationId", ASCENDING)],
                unique=True,
                name="tenant_consultation",
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

    async def get_or_create(self, key: ConsultationKey, owner_id: str) -> Consultation:
        query = _key_query(key)
        for _ in range(3):
            try:
                async with _translated("open consultation"):
                    doc = await self._consultations.find_one_and_update(
                        query,
                        {"$setOnInsert": {"ownerId": owner_id, "createdAt": utcnow()}},
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

    async def append(self, message: NewMessage) -> Appended:
        for attempt in range(MAX_SEQ_ATTEMPTS):
            seq = await self._last_seq(message.key) + 1
            try:
                async with _translated("store message"):
                    await self._messages.insert_one(_message_doc(message, seq))
            except _Duplicate as dup:
                if dup.index == CLIENT_ID_INDEX:
                    return Appended(await self._by_client_id(message), created=False)
                if dup.index != SEQ_INDEX:
                    raise StorageUnavailable("The message conflicts with a stored one") from dup
                # Another writer took this seq; back off a little to spread retries.
                await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
                continue
            return Appended(Message.stored(message, seq), created=True)
        raise StorageUnavailable("Too much contention allocating a message sequence number")

    async def _by_client_id(self, message: NewMessage) -> Message:
        query = {**_key_query(message.key), "clientMessageId": message.client_message_id}
        async with _translated("read message"):
            doc = await self._messages.find_one(query)
        if doc is None:  # the index said it exists: only a concurrent delete could do this
            raise StorageUnavailable("The retried message could not be read back")
        return _message(doc)

    async def recent(self, key: ConsultationKey, limit: int) -> list[Message]:
        if limit <= 0:
            return []
        async with _translated("read messages"):
            cursor = self._messages.find(_key_query(key)).sort("seq", DESCENDING).limit(limit)
            docs = await cursor.to_list()
        return [_message(doc) for doc in reversed(docs)]

    async def after(self, key: ConsultationKey, after_seq: int, limit: int) -> list[Message]:
        if limit <= 0:
            return []
        query = {**_key_query(key), "seq": {"$gt": after_seq}}
        async with _translated("read messages"):
            cursor = self._messages.find(query).sort("seq", ASCENDING).limit(limit)
            docs = await cursor.to_list()
        return [_message(doc) for doc in docs]

    async def _last_seq(self, key: ConsultationKey) -> int:
        async with _translated("read sequence"):
            doc = await self._messages.find_one(
                _key_query(key), projection={"seq": 1}, sort=[("seq", DESCENDING)]
            )
        return int(doc["seq"]) if doc else 0


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
        log.warning("MongoDB failed to %s: %s", action, exc)
        raise StorageUnavailable() from exc


def _index_name(exc: DuplicateKeyError) -> str | None:
    details = exc.details or {}
    message = str(details.get("errmsg", exc))
    marker = "index: "
    if marker in message:
        return message.split(marker, 1)[1].split(" ", 1)[0]
    return None


def _key_query(key: ConsultationKey) -> Document:
    return {"tenantId": key.tenant_id, "consultationId": key.consultation_id}


def _consultation(doc: Document) -> Consultation:
    return Consultation(
        key=ConsultationKey(doc["tenantId"], doc["consultationId"]),
        owner_id=doc["ownerId"],
        created_at=_aware(doc["createdAt"]),
    )


def _message_doc(message: NewMessage, seq: int) -> Document:
    doc: Document = {
        "_id": message.id,
        "tenantId": message.key.tenant_id,
        "consultationId": message.key.consultation_id,
        "seq": seq,
        "role": message.author.value,
        "userId": message.user_id,
        "content": message.content,
        "status": message.status.value,
        "createdAt": message.created_at,
        "model": message.model,
    }
    if message.client_message_id is not None:
        doc["clientMessageId"] = message.client_message_id
    return doc


def _message(doc: Document) -> Message:
    return Message(
        id=str(doc["_id"]),
        key=ConsultationKey(doc["tenantId"], doc["consultationId"]),
        seq=int(doc["seq"]),
        author=Author(doc["role"]),
        user_id=doc.get("userId"),
        content=doc["content"],
        created_at=_aware(doc["createdAt"]),
        status=MessageStatus(doc.get("status", MessageStatus.COMPLETE.value)),
        model=doc.get("model"),
        client_message_id=doc.get("clientMessageId"),
    )


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
