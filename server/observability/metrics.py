"""Prometheus metrics (``GET /metrics``): the domain's metrics ports (``EventMetrics``,
``MessageMetrics``, ``ReplyMetrics``, ``HandoffMetrics``) counted with prometheus-client, plus
figures read live at scrape time (connections, replies in flight, fan-out counters). One
registry per app, so several apps in one process (tests) never share counters."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "chat"

# Time to first token and whole replies: from a fast local model to a slow, long answer.
REPLY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120)
WAIT_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 3600)


@dataclass(frozen=True)
class Live:
    """Figures owned elsewhere, read at each scrape (never copied into a counter)."""

    gauges: Mapping[str, tuple[str, Callable[[], float]]]
    counters: Mapping[str, tuple[str, Callable[[], float]]]


class LiveCollector(Collector):
    def __init__(self, live: Live) -> None:
        self._live = live

    def collect(self) -> Iterator[Metric]:
        for name, (help_text, read) in self._live.gauges.items():
            yield GaugeMetricFamily(f"{PREFIX}_{name}", help_text, value=read())
        for name, (help_text, read) in self._live.counters.items():
            yield CounterMetricFamily(f"{PREFIX}_{name}", help_text, value=read())


class PrometheusMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._events = Counter(
            f"{PREFIX}_events",
            "Client events answered, by event and outcome (ok or error code)",
            ["event", "outcome"],
            registry=r,
        )
        self._stored = Counter(
            f"{PREFIX}_messages_stored", "Messages stored, by role", ["role"], registry=r
        )
        self._first_token = Histogram(
            f"{PREFIX}_ai_first_token_seconds",
            "Time from a reply's start to its first token",
            ["model"],
            buckets=REPLY_BUCKETS,
            registry=r,
        )
        self._reply = Histogram(
            f"{PREFIX}_ai_reply_seconds",
            "Whole replies, start to stored, by model and status",
            ["model", "status"],
            buckets=REPLY_BUCKETS,
            registry=r,
        )
        self._grounded = Counter(
            f"{PREFIX}_ai_replies_grounded",
            "Stored replies by their knowledge-base sources: cited, uncited (given, none "
            "cited) or none (no article matched: a gap in the knowledge base)",
            ["grounding"],
            registry=r,
        )
        self._ai_errors = Counter(
            f"{PREFIX}_ai_errors",
            "Model failures, by error code and model",
            ["code", "model"],
            registry=r,
        )
        self._fallbacks = Counter(
            f"{PREFIX}_ai_fallbacks",
            "Times the next model of the chain was asked, by the model that failed",
            ["model"],
            registry=r,
        )
        self._rejected = Counter(
            f"{PREFIX}_rejected",
            "Messages and connections refused by a policy, by reason",
            ["reason"],
            registry=r,
        )
        self._handoffs = Counter(
            f"{PREFIX}_handoffs",
            "Operator handoff steps (requested, accepted, released, closed, timed_out, requeued)",
            ["step"],
            registry=r,
        )
        self._queue_length = Gauge(
            f"{PREFIX}_operator_queue_length",
            "Consultations waiting for an operator, by tenant (as this instance last published it)",
            ["tenant"],
            registry=r,
        )
        self._queue_wait = Histogram(
            f"{PREFIX}_operator_queue_wait_seconds",
            "How long accepted consultations waited",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self._ratings = Counter(
            f"{PREFIX}_ratings", "Consultation ratings, by score", ["score"], registry=r
        )

    def watch(self, live: Live) -> None:
        self.registry.register(LiveCollector(live))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # -- the domain's metrics ports --------------------------------------------------------------

    def event_handled(self, event: str, outcome: str) -> None:
        self._events.labels(event, outcome).inc()

    def message_stored(self, role: str) -> None:
        self._stored.labels(role).inc()

    def reply_finished(
        self, model: str | None, status: str, first_token_seconds: float | None, seconds: float
    ) -> None:
        label = model or "none"
        if first_token_seconds is not None:
            self._first_token.labels(label).observe(first_token_seconds)
        self._reply.labels(label, status).observe(seconds)

    def ai_error(self, code: str, model: str | None) -> None:
        self._ai_errors.labels(code, model or "none").inc()

    def fallback_used(self, failed_model: str) -> None:
        self._fallbacks.labels(failed_model).inc()

    def reply_grounded(self, grounding: str) -> None:
        self._grounded.labels(grounding).inc()

    def rejected(self, reason: str) -> None:
        self._rejected.labels(reason).inc()

    def handoff(self, step: str) -> None:
        self._handoffs.labels(step).inc()

    def queue_waited(self, seconds: float) -> None:
        self._queue_wait.observe(max(0.0, seconds))

    def queue_length(self, tenant_id: str, length: int) -> None:
        self._queue_length.labels(tenant_id).set(length)

    def rated(self, score: int) -> None:
        self._ratings.labels(str(score)).inc()
