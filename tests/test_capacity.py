"""The capacity model (bench/capacity.py) recovers the costs a benchmark run implies, and its
plan follows from them by the arithmetic docs/capacity.md states."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from bench.capacity import QUOTED, ROOT, Costs, Load, check, plan

MESSAGE_US, DELIVERY_US, REDIS_EXTRA_US = 300.0, 7.0, 250.0


def synthetic_results() -> dict[str, Any]:
    """A results file as scripts/bench writes it, for a server whose true costs are known."""

    def per_delivery(recipients: int, extra: float = 0.0) -> float:
        return (MESSAGE_US + extra + DELIVERY_US * recipients) / recipients

    cluster_instance = {
        "cpuUsPerBroadcast": 0.5 * (MESSAGE_US + REDIS_EXTRA_US + DELIVERY_US * 9),
        "redisMessagesPerBroadcast": 0.5,
        "redisBytesPerBroadcast": 150.0,
    }
    return {
        "meta": {"date": "2026-12-02", "machine": "test"},
        "results": {
            "ours": {
                "fanout": [{"rate": 400, "cpuUsPerDelivery": per_delivery(19)}],
                "bigroom": [{"cpuUsPerDelivery": per_delivery(999)}],
                "storm": [{"rssPerConnectionKb": 32.0}],
            },
            "ours-redis": {
                "fanout": [
                    {
                        "rate": 400,
                        "cpuUsPerDelivery": per_delivery(19, REDIS_EXTRA_US),
                        "redisCpuUsPerMessage": 40.0,
                    }
                ],
                "ai": [{"cpuUsPerToken": 20.0, "tokens": 1000, "delivered": 500}],
            },
            "redis-server": {"pubsub": [{"cpuUsPerPubsubMessage": 2.0}]},
            "routed": {
                "cluster": [
                    {
                        "sent": 1000,
                        "expected": 9000,
                        "redisCpuUsPerBroadcast": 20.0,
                        "instances": [
                            {"instance": "A", **cluster_instance},
                            {"instance": "B", **cluster_instance},
                            {
                                "instance": "C",
                                "cpuUsPerBroadcast": 0.0,
                                "redisMessagesPerBroadcast": 0.0,
                                "redisBytesPerBroadcast": 0.0,
                            },
                        ],
                    }
                ]
            },
        },
    }


def test_costs_are_recovered_from_a_benchmark_run() -> None:
    costs = Costs.from_results(synthetic_results())
    assert costs.message_us == pytest.approx(MESSAGE_US)
    assert costs.delivery_us == pytest.approx(DELIVERY_US)
    assert costs.redis_message_us == pytest.approx(REDIS_EXTRA_US)
    assert costs.tokens_per_chunk == pytest.approx(2.0)
    assert (costs.redis_us_per_stored, costs.redis_us_per_pubsub) == (40.0, 2.0)


def test_the_check_predicts_a_consistent_cluster_run_exactly() -> None:
    results = synthetic_results()
    result = check(Costs.from_results(results), results)
    assert result.error == pytest.approx(0.0)
    assert result.error_without_redis < -0.3  # leaving Redis out underestimates


def test_the_plan_is_the_stated_arithmetic() -> None:
    costs = Costs.from_results(synthetic_results())
    load = Load(
        room_size=3,
        messages_per_minute=6,
        ai_share=0.5,
        tokens_per_reply=100,
        message_bytes=400,
        token_bytes=30,
        cpu_budget=0.5,
        memory_gb=2,
        max_connections=10_000,
        redis_budget=0.5,
    )
    p = plan(60_000, load, costs)
    assert (p.messages, p.replies) == (6000, 3000)
    stored, chunks, tokens = 9000, 3000 * 100 / 2, 3000 * 100 * 3
    cpu_seconds = (stored * (300 + 250) + stored * 3 * 7 + tokens * 20) / 1e6
    assert p.instances == int(-(-cpu_seconds // 0.5)) and p.by == "CPU"
    assert p.broadcasts == stored + chunks
    assert p.redis_messages == (stored + chunks) * (1 + 3)
    redis_us = stored * 40 + ((stored + chunks) * 4 - 2 * stored) * 2
    assert p.redis_cores == pytest.approx(redis_us / 1e6)
    assert p.redis_shards == -(-redis_us // 500_000)  # half a core each
    assert p.mongo_writes == stored
    assert p.egress_mbit == pytest.approx((stored * 3 * 400 + tokens * 30) * 8 / 1e6)
    assert plan(1_000, load, costs).instances == 2  # never fewer than two


def test_scripts_capacity_prints_a_plan_from_the_quoted_run() -> None:
    output = subprocess.run(
        [sys.executable, "bench/capacity.py", "--results", str(QUOTED)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "| 1,000,000 |" in output and "error" in output
    assert json.loads(QUOTED.read_text())["results"]["routed"]
