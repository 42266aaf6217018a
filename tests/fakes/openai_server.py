"""A small OpenAI-compatible HTTP server that streams real SSE ``chat.completion.chunk`` frames.

It stands in for the paid LLM API only; the server under test talks to it through the real
``openai`` SDK. The model name chooses the behaviour:

- ``fail-<status>``: answer that HTTP status with an OpenAI-style error body;
- ``drop-after-<n>``: stream ``n`` content chunks, then cut the connection;
- ``hang``: accept the request and never answer;
- ``stall-after-<n>``: stream ``n`` content chunks, then send nothing more;
- ``slow-<ms>``: a normal reply with ``ms`` milliseconds between tokens;
- ``stamp-<ms>``: as slow, but each token is its own emission time (epoch ms), so a client
  can measure the relay's latency from provider to screen (the benchmark does);
- ``nocontinue-<any of these>``: as the rest, but a continuation request fails (HTTP 500);
- anything else: a normal reply with ``token_delay`` between tokens.

A request whose last message is the assistant's is a continuation: the rest of the reply that
starts with that text is streamed.

A normal reply is ``reply_for(messages)``: it echoes the last user message, so tests know the
exact text to expect.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.servers import serve


def reply_for(messages: list[dict[str, Any]]) -> str:
    last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    return f"Echo: {last_user} (context {len(messages)} messages)"


SYNONYMS = {"cost": "price", "costs": "price", "fee": "price", "expensive": "price"}
STOP = {"the", "a", "an", "is", "of", "how", "much", "does", "it", "do", "what", "to", "in"}


def embed(text: str) -> list[float]:
    vector = [0.0] * 64
    for word in re.findall(r"[a-z]+", text.lower()):
        if word in STOP:
            continue
        meaning = SYNONYMS.get(word, word)
        vector[int(hashlib.sha256(meaning.encode()).hexdigest(), 16) % 64] += 1.0
    return vector


def tokens_of(text: str) -> list[str]:
    return re.findall(r"\S+\s*|\s+", text)


@dataclass
class FakeOpenAI:
    token_delay: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    embedding_requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        served = await self._stack.enter_async_context(serve(app))  # "hang" handlers never end
        self.url = f"{served.url}/v1"
        return self.url

    async def stop(self) -> None:
        await self._stack.aclose()

    def requests_for(self, model: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["model"] == model]

    async def _embeddings(self, request: web.Request) -> web.Response:
        """Deterministic "meanings": words hashed into 64 dimensions, with a few synonyms
        sharing one (cost, price, fee…), so a question can match a passage in other words."""
        body = await request.json()
        self.embedding_requests.append(body)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [
            {"object": "embedding", "index": n, "embedding": embed(text)}
            for n, text in enumerate(inputs)
        ]
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": 0, "total_tokens": 0},
            }
        )

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        model = str(body.get("model", ""))
        messages = body["messages"]
        continuing = bool(messages) and messages[-1]["role"] == "assistant"
        if model.startswith("nocontinue-"):  # answers, but fails to continue an answer
            if continuing:
                return web.json_response({"error": {"message": "no prefill"}}, status=500)
            model = model.removeprefix("nocontinue-")
        if match := re.fullmatch(r"fail-(\d{3})", model):
            status = int(match.group(1))
            return web.json_response(
                {"error": {"message": f"fake failure {status}", "type": "server_error"}},
                status=status,
            )
        if model == "hang":
            await asyncio.sleep(3600)
        if not body.get("stream"):
            return web.json_response({"error": {"message": "only stream=True"}}, status=400)
        delay = self.token_delay
        if match := re.fullmatch(r"(slow|stamp)-(\d+)", model):
            delay = int(match.group(2)) / 1000
        drop_after = stall_after = None
        if match := re.fullmatch(r"drop-after-(\d+)", model):
            drop_after = int(match.group(1))
        if match := re.fullmatch(r"stall-after-(\d+)", model):
            stall_after = int(match.group(1))
        if continuing:
            # A continuation: the answer so far is the start of the assistant's message; the
            # rest of the same reply follows (as providers that honour a prefix do).
            so_far = messages[-1]["content"]
            full = reply_for(messages[:-1])
            tokens = tokens_of(full[len(so_far) :] if full.startswith(so_far) else " (continued)")
        else:
            tokens = tokens_of(reply_for(messages))
        return await self._stream(
            request,
            model,
            tokens,
            delay=delay,
            drop_after=drop_after,
            stall_after=stall_after,
            stamp=model.startswith("stamp-"),
        )

    async def _stream(
        self,
        request: web.Request,
        model: str,
        tokens: list[str],
        *,
        delay: float,
        drop_after: int | None,
        stall_after: int | None = None,
        stamp: bool = False,
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        created = int(time.time())

        async def send(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        with contextlib.suppress(ConnectionResetError):  # the caller went away (killed)
            await send({"role": "assistant", "content": ""})
            for index, token in enumerate(tokens):
                if drop_after is not None and index == drop_after:
                    assert request.transport is not None
                    request.transport.abort()  # the provider dies mid-stream
                    return response
                if stall_after is not None and index == stall_after:
                    await asyncio.sleep(3600)  # the provider goes silent mid-stream
                if delay:
                    await asyncio.sleep(delay)
                await send({"content": f"{time.time() * 1000:.3f} " if stamp else token})
            await send({}, finish="stop")
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        return response
