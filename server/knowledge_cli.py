"""``python -m server knowledge import|export PATH --tenant T``: a tenant's knowledge base from
and to files, against the configured MongoDB.

Import reads Markdown (the first heading is the title; an ``<!-- url: … -->`` line gives the
URL), JSON (an object or a list of them) and JSON Lines (``{id?, title, content, url?, tags?}``
each), from a file or a folder (recursively). An article's id is its own, or made from the
file's path: importing again replaces, never duplicates. Export writes JSON Lines (``*.jsonl``)
or one Markdown file per article into a folder.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .ai.retrieval import Bm25Ranker
from .app import store_for
from .config import Settings
from .domain.knowledge import KnowledgeService, KnowledgeSettings
from .domain.models import Article
from .errors import AppError

MARKDOWN = {".md", ".markdown"}
URL_LINE = re.compile(r"^<!--\s*url:\s*(\S+)\s*-->\s*$", re.M)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def run(settings: Settings, action: str, path: str, tenant: str) -> int:
    if not settings.mongodb_url:
        print(
            "error: MONGODB_URL is not set: the knowledge base lives in MongoDB "
            "(the in-memory store would end with this command)",
            file=sys.stderr,
        )
        return 2
    where = Path(path)
    if action == "import":
        if not where.exists():
            print(f"error: {where} does not exist", file=sys.stderr)
            return 2
        return asyncio.run(_import(settings, list(_read(where)), where, tenant))
    articles = asyncio.run(_articles(settings, tenant))
    if articles is None:
        return 1
    _write(articles, where)
    print(f"exported {len(articles)} articles of tenant {tenant} to {where}")
    return 0


async def _import(
    settings: Settings, items: list[tuple[str, dict[str, Any]]], root: Path, tenant: str
) -> int:
    store = store_for(settings)
    service = KnowledgeService(
        store, Bm25Ranker(), KnowledgeSettings(max_chars=settings.knowledge_max_chars)
    )
    new = replaced = 0
    try:
        await store.start()
        for source, fields in items:
            try:
                article = service.validated(
                    tenant,
                    fields.get("id") or _id_of(source, root),
                    title=fields.get("title"),
                    content=fields.get("content"),
                    url=fields.get("url"),
                    tags=fields.get("tags"),
                )
            except AppError as exc:
                print(f"error: {source}: {exc.message}", file=sys.stderr)
                return 1
            existed = await store.get_article(tenant, article.id) is not None
            await store.put_article(article)
            new, replaced = (new, replaced + 1) if existed else (new + 1, replaced)
    except AppError as exc:
        print(f"error: {source}: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await store.close()
    print(
        f"imported {new + replaced} articles into tenant {tenant}: {new} new, {replaced} replaced"
    )
    return 0


async def _articles(settings: Settings, tenant: str) -> list[Article] | None:
    store = store_for(settings)
    try:
        await store.start()
        return await store.articles(tenant)
    except AppError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return None
    finally:
        await store.close()


def _read(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where it came from, its fields) for every article under ``path``."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        suffix = file.suffix.lower()
        label = str(file.relative_to(path)) if path.is_dir() else file.name
        if suffix in MARKDOWN:
            yield label, _markdown(file)
        elif suffix == ".json":
            items = json.loads(file.read_text("utf-8"))
            for n, item in enumerate(items if isinstance(items, list) else [items]):
                yield f"{label}#{n + 1}", _object(item, label)
        elif suffix == ".jsonl":
            lines = file.read_text("utf-8").splitlines()
            for n, line in enumerate(lines):
                if line.strip():
                    yield f"{label}#{n + 1}", _object(json.loads(line), label)


def _markdown(file: Path) -> dict[str, Any]:
    text = file.read_text("utf-8")
    heading = HEADING.search(text)
    url = URL_LINE.search(text)
    return {
        "title": heading.group(1) if heading else file.stem.replace("-", " ").replace("_", " "),
        "content": URL_LINE.sub("", text).strip(),
        "url": url.group(1) if url else None,
    }


def _object(item: Any, label: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise SystemExit(f"error: {label}: every item must be a JSON object")
    return item


def _id_of(source: str, root: Path) -> str:
    """A stable id from the file's path (and the item's number in a JSON file)."""
    base = source if source != root.name else root.stem
    stem = re.sub(r"\.(md|markdown|json|jsonl)(#|$)", r"\2", base, flags=re.I)
    slug = re.sub(r"[^A-Za-z0-9._:-]+", "-", stem).strip("-.").lower()
    return (slug or "article")[:128]


def _write(articles: list[Article], path: Path) -> None:
    if path.suffix.lower() == ".jsonl":
        kept = [{k: v for k, v in a.to_wire().items() if k != "updatedAt"} for a in articles]
        path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in kept))
        return
    path.mkdir(parents=True, exist_ok=True)
    for article in articles:
        (path / f"{article.id}.md").write_text(_as_markdown(article), "utf-8")


def _as_markdown(article: Article) -> str:
    heading = HEADING.search(article.content)
    text = (
        article.content
        if heading and heading.group(1) == article.title
        else (f"# {article.title}\n\n{article.content}")
    )
    if article.url:
        text = f"<!-- url: {article.url} -->\n{text}"
    return text.rstrip("\n") + "\n"
