"""Capacity plan: how many instances, Redis shards, MongoDB writes and how much bandwidth a
load needs, from the per-unit costs ``scripts/bench`` measured on this machine.

Run with ``scripts/capacity`` (after ``scripts/bench``; without a results file it reads the run
that docs/capacity.md quotes); ``--help`` lists the load's knobs. Prints the costs it read, a
markdown table for 10k, 100k and 1M concurrent connections with the bottleneck at each size,
and the model's error on a measured point: the 3-instance cluster run, predicted from
single-instance figures. docs/capacity.md explains the model and its assumptions.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "latest.json"
QUOTED = ROOT / "docs" / "capacity-bench.json"  # the run docs/capacity.md quotes
SIZES = (10_000, 100_000, 1_000_000)
FANOUT_RATE = 400  # msg/s: the fan-out point every per-message cost is read at
FANOUT_RECIPIENTS = 19  # 50 rooms x 20 members: a message reaches the 19 others
BIGROOM_RECIPIENTS = 999


@dataclass(frozen=True)
class Costs:
    """Per-unit costs of one instance (one Python process on one core), from the benchmark."""

    message_us: float  # CPU per message received, validated, stored, broadcast (no Redis)
    delivery_us: float  # CPU per recipient of a broadcast
    redis_message_us: float  # extra CPU per message on Redis (coordination, publish, read-back)
    token_us: float  # CPU per streamed token delivered to one member, on Redis
    tokens_per_chunk: float  # tokens per aiChunk broadcast (coalescing)
    rss_per_connection_kb: float
    redis_us_per_stored: float  # Redis CPU per message (coordination, publish, one read), idle-ish
    redis_us_per_pubsub: float  # Redis CPU per pub/sub message (a publish or a read), saturated

    @classmethod
    def from_results(cls, results: dict[str, Any]) -> Costs:
        ours = results["results"]["ours"]
        on_redis = results["results"]["ours-redis"]
        # Cost of one message = message_us + delivery_us * recipients, fitted on the two room
        # sizes the benchmark measures (20 and 1000 members), both on one instance alone.
        small = _at_rate(ours["fanout"])["cpuUsPerDelivery"] * FANOUT_RECIPIENTS
        large = ours["bigroom"][0]["cpuUsPerDelivery"] * BIGROOM_RECIPIENTS
        delivery = (large - small) / (BIGROOM_RECIPIENTS - FANOUT_RECIPIENTS)
        message = small - delivery * FANOUT_RECIPIENTS
        # The same fan-out on one instance with Redis: what Redis mode adds per message.
        small_on_redis = _at_rate(on_redis["fanout"])["cpuUsPerDelivery"] * FANOUT_RECIPIENTS
        ai = on_redis["ai"][0]
        ceiling = results["results"]["redis-server"]["pubsub"][0]
        return cls(
            message_us=message,
            delivery_us=delivery,
            redis_message_us=max(0.0, small_on_redis - small),
            token_us=ai["cpuUsPerToken"],
            tokens_per_chunk=ai["tokens"] / max(ai["delivered"], 1),
            rss_per_connection_kb=ours["storm"][0]["rssPerConnectionKb"],
            redis_us_per_stored=_at_rate(on_redis["fanout"])["redisCpuUsPerMessage"],
            redis_us_per_pubsub=ceiling["cpuUsPerPubsubMessage"],
        )


def _at_rate(phases: list[dict[str, Any]]) -> dict[str, Any]:
    return next(p for p in phases if p["rate"] == FANOUT_RATE)


@dataclass(frozen=True)
class Check:
    """A busy instance of the 3-instance run (rooms of 10, all on A or B), predicted from
    single-instance figures and measured."""

    predicted_us: float  # with the Redis term from the single instance on Redis
    predicted_without_redis_us: float
    measured_us: float
    idle_cpu_us: float  # the instance with no member in those rooms
    idle_bytes: float

    @property
    def error(self) -> float:
        return (self.predicted_us - self.measured_us) / self.measured_us

    @property
    def error_without_redis(self) -> float:
        return (self.predicted_without_redis_us - self.measured_us) / self.measured_us


def check(costs: Costs, results: dict[str, Any]) -> Check:
    phase = results["results"]["routed"]["cluster"][0]
    busy = [i for i in phase["instances"] if i["instance"] != "C"]
    idle = next(i for i in phase["instances"] if i["instance"] == "C")
    share = 1 / len(busy)  # each busy instance holds this share of the rooms, and of the sends
    recipients = phase["expected"] / max(phase["sent"], 1)
    alone = costs.message_us + costs.delivery_us * recipients
    return Check(
        predicted_us=share * (alone + costs.redis_message_us),
        predicted_without_redis_us=share * alone,
        measured_us=sum(i["cpuUsPerBroadcast"] for i in busy) / len(busy),
        idle_cpu_us=idle["cpuUsPerBroadcast"],
        idle_bytes=idle["redisBytesPerBroadcast"],
    )


@dataclass(frozen=True)
class Load:
    room_size: int  # connections per consultation (patient, their devices, an operator)
    messages_per_minute: float  # messages one connection sends per minute, on average
    ai_share: float  # share of messages the assistant answers
    tokens_per_reply: int
    message_bytes: int  # one userMessage / aiMessage frame on the wire
    token_bytes: int  # an aiChunk frame's bytes per token
    cpu_budget: float  # share of a core one instance may use (headroom for bursts, failover)
    memory_gb: float  # memory per instance
    max_connections: int  # MAX_CONNECTIONS per instance
    redis_budget: float  # share of a core one Redis shard may use


@dataclass(frozen=True)
class Plan:
    connections: int
    messages: float  # user messages per second
    replies: float  # AI replies per second
    broadcasts: float  # room broadcasts per second (messages, replies, chunks)
    deliveries: float  # frames written to sockets per second
    instances: int
    by: str  # what decided the instance count
    redis_messages: float  # pub/sub messages per second (publishes + reads)
    redis_cores: float  # Redis CPU, in cores
    redis_shards: int
    mongo_writes: float
    egress_mbit: float
    bottleneck: str


def plan(connections: int, load: Load, costs: Costs) -> Plan:
    messages = connections * load.messages_per_minute / 60
    replies = messages * load.ai_share
    chunks = replies * load.tokens_per_reply / costs.tokens_per_chunk
    stored = messages + replies  # each is validated, stored once and broadcast once
    deliveries = stored * load.room_size + chunks * load.room_size
    tokens_delivered = replies * load.tokens_per_reply * load.room_size
    cpu_us = (
        stored * (costs.message_us + costs.redis_message_us)
        + stored * load.room_size * costs.delivery_us
        + tokens_delivered * costs.token_us
    )
    counts = {
        "CPU": math.ceil(cpu_us / 1e6 / load.cpu_budget),
        "connections": math.ceil(connections / load.max_connections),
        "memory": math.ceil(
            connections * costs.rss_per_connection_kb / 1024 / 1024 / load.memory_gb
        ),
    }
    by = max(counts, key=lambda k: counts[k])
    instances = max(2, counts[by])  # two at least: when one dies, the other serves
    broadcasts = stored + chunks
    # Routed fan-out: one publish per broadcast, one read per instance holding a member of the
    # room (at most room_size of them, as members land on instances independently).
    readers = min(load.room_size, instances)
    redis_messages = broadcasts * (1 + readers)
    # A stored message costs Redis its coordination, publish and first read (measured together);
    # every other read, and each chunk's publish and reads, costs one pub/sub message.
    redis_us = (
        stored * costs.redis_us_per_stored
        + (redis_messages - 2 * stored) * costs.redis_us_per_pubsub
    )
    redis_cores = redis_us / 1e6
    shards = max(1, math.ceil(redis_cores / load.redis_budget))
    egress = stored * load.room_size * load.message_bytes + tokens_delivered * load.token_bytes
    bottleneck = f"instance {by}"
    if shards > 1:
        bottleneck += f"; Redis pub/sub: {shards} shards (Redis Cluster, REDIS_MODE=cluster)"
    if stored > 20_000:
        bottleneck += "; MongoDB writes: a sharded cluster (shard key tenantId)"
    return Plan(
        connections=connections,
        messages=messages,
        replies=replies,
        broadcasts=broadcasts,
        deliveries=deliveries,
        instances=instances,
        by=by,
        redis_messages=redis_messages,
        redis_cores=redis_cores,
        redis_shards=shards,
        mongo_writes=stored,
        egress_mbit=egress * 8 / 1e6,
        bottleneck=bottleneck,
    )


def report(load: Load, costs: Costs, results: dict[str, Any], source: Path) -> str:
    meta = results["meta"]
    lines = [
        f"Per-unit costs from `{source.relative_to(ROOT)}` ({meta['date']}, {meta['machine']}): "
        f"{costs.message_us:.0f} µs per message and {costs.delivery_us:.1f} µs per recipient "
        f"on one instance; {costs.redis_message_us:.0f} µs more per message on Redis; "
        f"{costs.token_us:.1f} µs per token delivered (on Redis), "
        f"{costs.tokens_per_chunk:.2f} tokens per chunk; "
        f"{costs.rss_per_connection_kb:.0f} kB per connection; Redis "
        f"{costs.redis_us_per_stored:.0f} µs per stored message (coordination included) and "
        f"{costs.redis_us_per_pubsub:.2f} µs per further pub/sub message.",
        "",
        f"Load: rooms of {load.room_size} connections, {load.messages_per_minute:g} messages per "
        f"connection per minute, {load.ai_share:.0%} answered by the assistant with "
        f"{load.tokens_per_reply} tokens; an instance may use {load.cpu_budget:.0%} of a core, "
        f"{load.memory_gb:g} GB and {load.max_connections:,} connections; a Redis shard "
        f"{load.redis_budget:.0%} of a core.",
        "",
        "| connections | messages/s | AI replies/s | broadcasts/s | deliveries/s "
        "| instances (decided by) | Redis msgs/s | Redis cores | Redis shards "
        "| MongoDB writes/s | egress Mbit/s | bottleneck |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in SIZES:
        p = plan(size, load, costs)
        lines.append(
            f"| {size:,} | {p.messages:,.0f} | {p.replies:,.0f} | {p.broadcasts:,.0f} "
            f"| {p.deliveries:,.0f} | {p.instances:,} ({p.by}) | {p.redis_messages:,.0f} "
            f"| {p.redis_cores:.1f} | {p.redis_shards} | {p.mongo_writes:,.0f} "
            f"| {p.egress_mbit:,.0f} | {p.bottleneck} |"
        )
    c = check(costs, results)
    lines += [
        "",
        "Check against a measured point, the benchmark's 3-instance run (rooms of 10, each "
        "room's members on A or on B, sends spread evenly): a busy instance's CPU per "
        f"broadcast, predicted from single-instance figures, {c.predicted_us:.0f} µs; "
        f"measured {c.measured_us:.0f} µs; error {c.error:+.0%} "
        f"(without the Redis term: {c.predicted_without_redis_us:.0f} µs, "
        f"{c.error_without_redis:+.0%}). The instance with no member in those rooms spent "
        f"{c.idle_cpu_us:.1f} µs and read {c.idle_bytes:.0f} bytes per broadcast.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--room-size", type=int, default=3)
    parser.add_argument("--messages-per-minute", type=float, default=1.0)
    parser.add_argument("--ai-share", type=float, default=0.8)
    parser.add_argument("--tokens-per-reply", type=int, default=300)
    parser.add_argument("--message-bytes", type=int, default=400)
    parser.add_argument("--token-bytes", type=int, default=30)
    parser.add_argument("--cpu-budget", type=float, default=0.6)
    parser.add_argument("--memory-gb", type=float, default=2.0)
    parser.add_argument("--max-connections", type=int, default=10_000)
    parser.add_argument("--redis-budget", type=float, default=0.5)
    args = parser.parse_args()
    source = args.results or (RESULTS if RESULTS.exists() else QUOTED)
    results = json.loads(source.read_text())
    missing = {"ours", "ours-redis", "routed"} - set(results["results"])
    if missing:
        print(
            f"{source} lacks {', '.join(sorted(missing))}: run scripts/bench "
            "(at least --scenarios storm,fanout,bigroom,redis,cluster)",
            file=sys.stderr,
        )
        return 1
    costs = Costs.from_results(results)
    load = Load(
        room_size=args.room_size,
        messages_per_minute=args.messages_per_minute,
        ai_share=args.ai_share,
        tokens_per_reply=args.tokens_per_reply,
        message_bytes=args.message_bytes,
        token_bytes=args.token_bytes,
        cpu_budget=args.cpu_budget,
        memory_gb=args.memory_gb,
        max_connections=args.max_connections,
        redis_budget=args.redis_budget,
    )
    print(report(load, costs, results, source.resolve()), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
