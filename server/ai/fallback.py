"""A chain of assistants: on a failure before the first token, the next one is tried."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from ..domain.ports import Assistant, Delta, NoMetrics, ReplyMetrics, ReplyRequest
from ..errors import AssistantUnavailable, ReplyInterrupted


class FallbackAssistant:
    def __init__(
        self,
        chain: Sequence[Assistant],
        *,
        close: Callable[[], Awaitable[None]] | None = None,
        metrics: ReplyMetrics | None = None,
    ) -> None:
        if not chain:
            raise ValueError("the fallback chain needs at least one assistant")
        self._chain = list(chain)
        self._close = close  # what the chain shares (an HTTP client), closed after it
        self._metrics = metrics or NoMetrics()

    async def stream(self, request: ReplyRequest) -> AsyncIterator[Delta]:
        last_error: AssistantUnavailable | None = None
        for position, assistant in enumerate(self._chain, start=1):
            model = str(getattr(assistant, "model", type(assistant).__name__))
            try:
                async for delta in assistant.stream(request):
                    yield delta
                return
            except ReplyInterrupted:
                self._metrics.ai_error("reply_interrupted", model)
                raise  # text already reached the room: restarting on another model would repeat it
            except AssistantUnavailable as exc:
                self._metrics.ai_error(exc.code, model)
                if position < len(self._chain):
                    self._metrics.fallback_used(model)
                last_error = exc
        raise AssistantUnavailable(
            "No model of the fallback chain could answer"
            + (f" (last: {last_error.message})" if last_error else "")
        )

    async def close(self) -> None:
        for assistant in self._chain:
            await assistant.close()
        if self._close is not None:
            await self._close()
