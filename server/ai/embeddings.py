"""Embeddings from an OpenAI-compatible ``/embeddings`` endpoint (the ``openai`` SDK): the
:class:`Embedder` port of ``domain/knowledge.py``, used when ``EMBEDDINGS_MODEL`` is set."""

from __future__ import annotations

import openai
from openai import AsyncOpenAI

from ..errors import AssistantUnavailable

BATCH = 64  # inputs per request


class OpenAIEmbedder:
    def __init__(self, client: AsyncOpenAI, model: str) -> None:
        self._client = client
        self.model = model

    async def embed(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), BATCH):
            try:
                answer = await self._client.embeddings.create(
                    model=self.model, input=texts[start : start + BATCH]
                )
            except openai.OpenAIError as exc:
                raise AssistantUnavailable(f"embeddings: {type(exc).__name__}") from exc
            ordered = sorted(answer.data, key=lambda item: item.index)
            vectors += [list(item.embedding) for item in ordered]
        return vectors

    async def close(self) -> None:
        await self._client.close()
