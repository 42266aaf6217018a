"""One model behind any OpenAI-compatible endpoint (OpenAI, OpenRouter, vLLM, Ollama …)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx2  # openai's HTTP stack: a stream that breaks mid-way raises its errors raw
import openai
from openai import AsyncOpenAI, DefaultAioHttpClient

from ..domain.ports import Delta, ReplyRequest
from ..errors import AssistantUnavailable, ReplyInterrupted

log = logging.getLogger(__name__)


def make_client(api_key: str, base_url: str | None, timeout_seconds: float) -> AsyncOpenAI:
    # The SDK retries twice and waits up to 600 s by default; the fallback chain is ours, and a
    # chat user cannot wait minutes, so: no SDK retries and our own timeout.
    timeout = openai.Timeout(timeout_seconds, connect=min(10.0, timeout_seconds))
    return AsyncOpenAI(
        api_key=api_key,
        base_url=base_url,
        max_retries=0,
        timeout=timeout,
        # The SDK's aiohttp transport (aiohttp is already ours): reading a token stream through
        # it costs about half the CPU of the default httpcore/anyio stack.
        http_client=DefaultAioHttpClient(timeout=timeout),
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
        if request.continue_from:
            # The answer so far as the start of the assistant's message: OpenAI-compatible
            # servers continue a final assistant message (vLLM, Ollama, Mistral, DeepSeek…).
            messages.append({"role": "assistant", "content": request.continue_from})
        received_any = False
        try:
            async with asyncio.timeout(self._first_token_timeout) as first_token_deadline:
                # The SDK still sends the request (auth, base URL, timeouts, HTTP errors as
                # APIStatusError); the SSE lines are decoded here: building the SDK's pydantic
                # chunk objects was ~30% of the server's CPU with 100 concurrent streams.
                completions = self._client.chat.completions.with_streaming_response
                async with completions.create(
                    model=self.model, messages=messages, stream=True
                ) as response:
                    decoder = SseDecoder()
                    async for line in response.iter_lines():
                        data = decoder.feed(line)
                        if data is None:
                            continue
                        event = _json_event(data)
                        if event is _DONE:
                            break
                        text = _delta_text(event)
                        if not text:
                            continue
                        if not received_any:
                            received_any = True
                            first_token_deadline.reschedule(None)
                        yield Delta(text=text, model=_model_of(event) or self.model)
        except (openai.OpenAIError, httpx2.HTTPError, TimeoutError, OSError, ValueError) as exc:
            log.warning("model %s failed: %s: %s", self.model, type(exc).__name__, exc)
            if received_any:
                raise ReplyInterrupted() from exc
            raise AssistantUnavailable(f"Model {self.model} is unavailable") from exc

    async def close(self) -> None:
        return None  # the client is shared by every model of the chain; its owner closes it


_DONE: Any = object()


class SseDecoder:
    """Server-sent events, line by line (the WHATWG event-stream rules that matter here): an
    event's ``data:`` lines are joined with newlines and the event is complete at the blank
    line that ends it; comments (``:``) and other fields are ignored."""

    def __init__(self) -> None:
        self._data: list[str] | None = None

    def feed(self, line: str) -> str | None:
        """Take one line (without its line break); return an event's data when it ends."""
        if not line:
            data, self._data = self._data, None
            return "\n".join(data) if data is not None else None
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if name == "data":
            if self._data is None:
                self._data = []
            self._data.append(value.removeprefix(" "))
        return None


def _json_event(data: str) -> Any:
    """The JSON of an event's data, ``_DONE`` at the end."""
    if data.strip() == "[DONE]":
        return _DONE
    event = json.loads(data)
    if isinstance(event, dict) and "error" in event:
        raise ValueError(f"the provider sent an error event: {event['error']}")
    return event


def _delta_text(event: Any) -> str | None:
    if not isinstance(event, dict):
        return None
    choices = event.get("choices")
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        return None
    delta = choices[0].get("delta")
    text = delta.get("content") if isinstance(delta, dict) else None
    return text if isinstance(text, str) else None


def _model_of(event: Any) -> str | None:
    model = event.get("model") if isinstance(event, dict) else None
    return model if isinstance(model, str) and model else None
