"""The assistant used when no LLM key is configured: a short, clearly labelled reply streamed
word by word, so the whole flow (thinking, chunks, stored message) is visible without a key."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from ..domain.models import Author
from ..domain.ports import Delta, ReplyRequest

MODEL_NAME = "offline"
QUOTE_LIMIT = 120


class OfflineAssistant:
    def __init__(self, word_delay_seconds: float = 0.04) -> None:
        self._delay = word_delay_seconds

    async def stream(self, request: ReplyRequest) -> AsyncIterator[Delta]:
        reply = compose_reply(request)
        if request.continue_from and reply.startswith(request.continue_from):
            reply = reply[len(request.continue_from) :]  # continue where the answer stopped
        for word in re.findall(r"\S+\s*|\s+", reply):
            if self._delay:
                await asyncio.sleep(self._delay)
            yield Delta(text=word, model=MODEL_NAME)

    async def close(self) -> None:
        return None


PASSAGE_LIMIT = 400


def compose_reply(request: ReplyRequest) -> str:
    if request.knowledge:
        return _from_knowledge(request)
    last = next((t.content for t in reversed(request.turns) if t.author is Author.USER), "")
    quoted = " ".join(last.split())
    if len(quoted) > QUOTE_LIMIT:
        quoted = quoted[: QUOTE_LIMIT - 1] + "…"
    return (
        f'[Offline assistant] I received your message: "{quoted}". '
        "This server has no language model configured, so this is an automatic reply. "
        "Set OPENAI_API_KEY to get real answers."
    )


def _from_knowledge(request: ReplyRequest) -> str:
    """The best passage, quoted with its source: grounding without a language model."""
    best = request.knowledge[0]
    text = " ".join(best.text.split())
    if len(text) > PASSAGE_LIMIT:
        text = text[: PASSAGE_LIMIT - 1] + "…"
    where = f" ({best.url})" if best.url else ""
    return (
        f"[Offline assistant] From “{best.title}”{where} [1]:\n\n> {text}\n\n"
        "This server has no language model configured, so this is the passage of the "
        "knowledge base that matches your question best."
    )
