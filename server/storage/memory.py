"""In-memory store: the embedded default. Single process, lost on restart."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from statistics import fmean
from typing import Any

from ..domain.models import (
    Article,
    Author,
    Consultation,
    ConsultationKey,
    Message,
    Mode,
    Role,
    TenantSettings,
    sorted_consultations,
)
from ..domain.ports import (
    COUNTED_ROLES,
    TOP_STATS,
    Appended,
    OneOf,
    Stats,
    normalized_question,
)


class MemoryStore:
    def __init__(self) -> None:
        self._consultations: dict[ConsultationKey, Consultation] = {}
        self._messages: dict[ConsultationKey, list[Message]] = {}
        self._by_client_id: dict[tuple[ConsultationKey, str], Message] = {}
        self._by_id: dict[str, Message] = {}
        self._articles: dict[tuple[str, str], Article] = {}
        self._revisions: dict[str, int] = {}
        self._settings: dict[str, TenantSettings] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def get_or_create(
        self, key: ConsultationKey, owner_id: str, owner_role: Role = Role.USER
    ) -> Consultation:
        existing = self._consultations.get(key)
        if existing is not None:
            return existing
        created = self._consultations[key] = Consultation.new(key, owner_id, owner_role)
        return created

    async def get(self, key: ConsultationKey) -> Consultation | None:
        return self._consultations.get(key)

    async def find(
        self,
        tenant_id: str | None,
        *,
        mode: Mode | None = None,
        operator_id: str | None = None,
        limit: int = 500,
    ) -> list[Consultation]:
        found = [
            c
            for c in self._consultations.values()
            if (tenant_id is None or c.tenant_id == tenant_id)
            and (mode is None or c.mode is mode)
            and (operator_id is None or (c.operator is not None and c.operator.id == operator_id))
        ]
        return sorted_consultations(found, mode)[:limit]

    async def update(
        self,
        key: ConsultationKey,
        changes: Mapping[str, Any],
        *,
        expect: Mapping[str, Any] | None = None,
    ) -> Consultation | None:
        unknown = set(changes) - set(Consultation.model_fields)
        if unknown or not changes:
            raise ValueError(f"not an update of Consultation fields: {sorted(changes)}")
        # No await between the check and the write: atomic on the event loop.
        current = self._consultations.get(key)
        if current is None or not _matches(current, expect or {}):
            return None
        updated = current.model_validate({**current.model_dump(), **changes})
        self._consultations[key] = updated
        return updated

    async def transfer(
        self, tenant_id: str, from_owner: str, to_owner: str, to_role: Role
    ) -> list[Consultation]:
        moved = []
        for key, consultation in list(self._consultations.items()):
            if key.tenant_id != tenant_id or consultation.owner_id != from_owner:
                continue
            update = {"owner_id": to_owner, "owner_role": to_role}
            moved.append(consultation.model_copy(update=update))
            self._consultations[key] = moved[-1]
            log = self._messages.get(key, [])
            for index, message in enumerate(log):
                if message.role is Author.USER and message.user_id == from_owner:
                    log[index] = message.model_copy(update={"user_id": to_owner})
                    self._by_id[message.id] = log[index]
                    if message.client_message_id is not None:
                        self._by_client_id[(key, message.client_message_id)] = log[index]
        return moved

    async def tenant_settings(self, tenant_id: str) -> TenantSettings:
        return self._settings.get(tenant_id) or TenantSettings(tenant_id=tenant_id)

    async def put_tenant_settings(self, settings: TenantSettings) -> TenantSettings:
        self._settings[settings.tenant_id] = settings
        return settings

    async def put_article(self, article: Article) -> Article:
        self._articles[(article.tenant_id, article.id)] = article
        self._revisions[article.tenant_id] = self._revisions.get(article.tenant_id, 0) + 1
        return article

    async def get_article(self, tenant_id: str, article_id: str) -> Article | None:
        return self._articles.get((tenant_id, article_id))

    async def articles(self, tenant_id: str) -> list[Article]:
        return sorted(
            (a for (tenant, _), a in self._articles.items() if tenant == tenant_id),
            key=lambda a: a.id,
        )

    async def delete_article(self, tenant_id: str, article_id: str) -> bool:
        if self._articles.pop((tenant_id, article_id), None) is None:
            return False
        self._revisions[tenant_id] = self._revisions.get(tenant_id, 0) + 1
        return True

    async def knowledge_revision(self, tenant_id: str) -> int:
        return self._revisions.get(tenant_id, 0)

    async def append(self, message: Message) -> Appended:
        # No await between reading and appending: atomic on the event loop.
        client_id = message.client_message_id
        if client_id is not None and (message.key, client_id) in self._by_client_id:
            return Appended(self._by_client_id[(message.key, client_id)], created=False)
        if message.id in self._by_id:  # a reply stored once, even if two instances try
            return Appended(self._by_id[message.id], created=False)
        log = self._messages.setdefault(message.key, [])
        stored = message.model_copy(update={"seq": len(log) + 1})
        log.append(stored)
        self._by_id[stored.id] = stored
        if client_id is not None:
            self._by_client_id[(message.key, client_id)] = stored
        return Appended(stored, created=True)

    async def recent(self, key: ConsultationKey, limit: int) -> list[Message]:
        log = self._messages.get(key, [])
        return list(log[-limit:]) if limit > 0 else []

    async def after(self, key: ConsultationKey, after_seq: int, limit: int) -> list[Message]:
        log = self._messages.get(key, [])
        start = max(after_seq, 0)  # seq n sits at index n - 1
        return list(log[start : start + limit])

    async def stats(self, tenant_id: str, since: datetime | None, until: datetime | None) -> Stats:
        def within(moment: datetime) -> bool:
            return (since is None or moment >= since) and (until is None or moment < until)

        created = [
            c
            for c in self._consultations.values()
            if c.tenant_id == tenant_id and within(c.created_at)
        ]
        messages = [
            m
            for key, log in self._messages.items()
            if key.tenant_id == tenant_id
            for m in log
            if m.role in COUNTED_ROLES and within(m.timestamp)
        ]
        responses = [m.response_ms for m in messages if m.response_ms is not None]
        scores = [c.rating.score for c in created if c.rating is not None]
        return Stats(
            consultations=len(created),
            messages=len(messages),
            avg_ai_response_ms=fmean(responses) if responses else None,
            resolved_without_operator_ratio=(
                sum(1 for c in created if c.handoffs == 0) / len(created) if created else None
            ),
            handoffs=sum(c.handoffs for c in created),
            avg_rating=fmean(scores) if scores else None,
            ratings=len(scores),
            **_knowledge_figures(messages),
        )


def _matches(consultation: Consultation, expect: Mapping[str, Any]) -> bool:
    for path, wanted in expect.items():
        value: Any = consultation
        for name in path.split("."):  # "operator.id": a field of a nested model
            value = getattr(value, name, None)
        if isinstance(wanted, OneOf):
            if value not in wanted.values:
                return False
        elif value != wanted:
            return False
    return True


def _knowledge_figures(messages: list[Message]) -> dict[str, Any]:
    cited: Counter[str] = Counter()
    titles: dict[str, str] = {}
    questions: Counter[str] = Counter()
    unanswered = 0
    for message in messages:
        if message.role is Author.USER:
            question = normalized_question(message.content)
            if question:
                questions[question] += 1
        elif message.role is Author.ASSISTANT:
            if not message.sources:
                unanswered += 1
            for source in message.sources or []:
                if source.cited:
                    cited[source.id] += 1
                    titles[source.id] = source.title
    return {
        "top_sources": [(i, titles[i], n) for i, n in _top(cited)],
        "top_questions": _top(questions),
        "unanswered": unanswered,
    }


def _top(counter: Counter[str]) -> list[tuple[str, int]]:
    """Most frequent first; ties in alphabetical order (as the MongoDB store sorts them)."""
    return sorted(counter.items(), key=lambda item: (-item[1], item[0]))[:TOP_STATS]
