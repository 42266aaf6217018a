"""One model behind any OpenAI-compatible endpoint (OpenAI, OpenRouter, vLLM, Ollama …)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx2  # openai's HTTP stack: a stream that breaks mid-way raises its errors raw
import openai
from openai import AsyncOpenAI

from ..domain.ports import Delta, ReplyRequest
from ..errors import AssistantUnavailable, ReplyInterrupted

log = logging.getLogger(__name__)


def make_client(api_key: str, base_url: str | None, timeout_seconds: float) -> AsyncOpenAI:
    # The SDK retries twice and waits up to 600 s by default; the fallback chain is ours, and a
    # chat user cannot wait minutes, so: no SDK retries and our own timeout.
    return AsyncOpenAI(
        api_key=api_key,
        base_url=base_url,
        max_retries=0,
        timeout=openai.Timeout(timeout_seconds, connect=min(10.0, timeout_seconds)),
    )


class OpenAIModel:
    def __init__(
        self, client: AsyncOpenAI, model: str, *, first_token_timeout_seconds: float
    ) -> None:
        self._client = client
        self.model = model
        self._first_token_timeout = first_token_timeout_seconds

    async def stream(self, request: ReplyRequest) -> AsyncIterator[Delta]:
        messages: list[Any] = [{"role": "system", "content": request.system_prompt}]
        messages += [{"role": t.author.value, "content": t.content} for t in request.turns]
        received_any = False
        try:
            async with asyncio.timeout(self._first_token_timeout) as first_token_deadline:
                stream = await self._client.chat.completions.create(
                    model=self.model, messages=messages, stream=True
                )
                async with stream:  # closes the HTTP response however the loop ends
                    async for chunk in stream:
                        text = chunk.choices[0].delta.content if chunk.choices else None
                        if not text:
                            continue
                        if not received_any:
                            received_any = True
                            first_token_deadline.reschedule(None)
                        yield Delta(text=text, model=chunk.model or self.model)
        except (openai.OpenAIError, httpx2.HTTPError, TimeoutError, OSError) as exc:
            log.warning("model %s failed: %s: %s", self.model, type(exc).__name__, exc)
            if received_any:
                raise ReplyInterrupted() from exc
            raise AssistantUnavailable(f"Model {self.model} is unavailable") from exc

    async def close(self) -> None:
        return None  # the client is shared by every model of the chain; its owner closes it
