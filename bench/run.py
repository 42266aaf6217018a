"""Benchmark: our server against the Node socket.io v4 reference, same load, same machine.

Run with ``scripts/bench``. Loopback only, bounded in time (a few minutes). For each scenario
and server it reports server CPU per delivered message (from /proc), latency percentiles, the
highest sustained delivery rate and RSS per connection, writes ``bench/results/latest.json``
and ``latest.md``, and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes.openai_server import FakeOpenAI  # noqa: E402  (needs the sys.path line above)
from tests.servers import (  # noqa: E402  (needs the sys.path line above)
    RedisServer,
    free_port,
    http_json,
    wait_for_port,
)

BENCH = ROOT / "bench"
SECRET = "bench-secret-" + "x" * 64
TICK = os.sysconf("SC_CLK_TCK")
SCENARIOS = ("storm", "fanout", "bigroom", "ai", "ailight", "redis", "cluster")
# The "redis" scenario: ours alone on one Redis (as deployed with several instances), for the
# capacity model's per-unit costs in that mode: (loadgen scenario, its environment).
REDIS_RUNS = {
    "fanout": ("fanout", {"BENCH_RATES": "400", "BENCH_SECONDS": "8"}),
    "ai": ("ai", {}),
}
CLUSTER_INSTANCES = ("A", "B", "C")  # A and B hold every room's members; C holds none
CLUSTER_MODES = ("routed", "stock")


@dataclass
class Sampler:
    """Samples a process's CPU time and RSS every 50 ms."""

    pid: int
    samples: list[tuple[float, float, int]] = field(default_factory=list)  # (time, cpu s, rss kB)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Sampler:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                stat = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
                status = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            cpu = (int(stat[11]) + int(stat[12])) / TICK
            rss = next(
                int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")
            )
            self.samples.append((time.time(), cpu, rss))
            time.sleep(0.05)

    def cpu_between(self, start: float, end: float) -> float:
        def at(moment: float) -> float:
            before = [s for s in self.samples if s[0] <= moment]
            return before[-1][1] if before else self.samples[0][1]

        return at(end) - at(start)

    def rss_at(self, moment: float) -> int:
        before = [s for s in self.samples if s[0] <= moment]
        return before[-1][2] if before else self.samples[0][2]

    def max_rss_between(self, start: float, end: float) -> int:
        return max((s[2] for s in self.samples if start <= s[0] <= end), default=0)


def token() -> str:
    claims = {"sub": "bench", "role": "operator", "exp": datetime.now(UTC) + timedelta(hours=2)}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def server_pinning() -> list[str]:
    """The command prefix that keeps the single-threaded server under test on one CPU:
    unpinned, the scheduler moving it between cores moved CPU per delivery by up to ±15%
    between identical runs. The load generator and the fake provider may run anywhere:
    confined to the other core, the load generator became the bottleneck of the sustained
    rate, and the provider starved in the AI scenario."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or not shutil.which("taskset"):
        return []
    return ["taskset", "-c", str(cpus[0])]


PIN: list[str] = []  # the command prefix that pins a server (set by main)


def start_ours(
    port: int, fake_url: str, ai: bool, redis_url: str | None = None
) -> subprocess.Popen[bytes]:
    env = {
        **({"REDIS_URL": redis_url, "REDIS_PREFIX": "bench"} if redis_url else {}),
        "PATH": os.environ["PATH"],
        "PORT": str(port),
        "JWT_SECRET": SECRET,
        "OPENAI_API_KEY": "sk-bench",
        "OPENAI_BASE_URL": fake_url,
        "AI_MODELS": "stamp-20",  # 50 tokens/s, each token its emission time
        "AI_REPLIES": "on" if ai else "off",
        "RATE_LIMIT_MESSAGES": "100000000",
        "MAX_CONNECTIONS_PER_USER": "100000",
        "LOG_LEVEL": "WARNING",
        **{k: v for k, v in os.environ.items() if k.startswith("BENCH_SERVER_")},
    }
    env = {k.removeprefix("BENCH_SERVER_"): v for k, v in env.items()}
    log = (BENCH / "results").joinpath("server.log").open("ab")
    return subprocess.Popen(
        [*PIN, sys.executable, "-m", "server"], cwd=ROOT, env=env, stdout=log, stderr=log
    )


def start_reference(port: int, fake_url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*PIN, "node", str(BENCH / "reference_server.mjs"), str(port), fake_url],
        stdout=subprocess.DEVNULL,
    )


def run_loadgen(scenario: str, url: str, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    result = subprocess.run(
        ["node", str(BENCH / "loadgen.mjs"), scenario, url, token()],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    if result.returncode != 0:
        raise RuntimeError(f"loadgen {scenario} failed: {result.stderr[-2000:]}")
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def start_instance(mode: str, port: int, redis_url: str) -> subprocess.Popen[bytes]:
    """One instance of the cluster scenario: ours (routed fan-out, pure relay), or the
    baseline on python-socketio's stock AsyncRedisManager."""
    log = (BENCH / "results").joinpath(f"cluster-{mode}.log").open("ab")
    if mode == "stock":
        command = [sys.executable, str(BENCH / "stock_server.py"), str(port), redis_url]
        return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log)
    env = {
        "PATH": os.environ["PATH"],
        "PORT": str(port),
        "JWT_SECRET": SECRET,
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": "bench",
        "AI_REPLIES": "off",
        "STATUS_PUBLIC": "true",
        "RATE_LIMIT_MESSAGES": "100000000",
        "MAX_CONNECTIONS_PER_USER": "100000",
        "LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "server"], cwd=ROOT, env=env, stdout=log, stderr=log
    )


def redis_reads(mode: str, port: int) -> tuple[int, int]:
    """(messages, bytes) this instance has read from Redis since it started."""
    if mode == "stock":
        _, body = http_json(f"http://127.0.0.1:{port}/bench/stats")
        return body["messages_received"], body["bytes_received"]
    _, body = http_json(f"http://127.0.0.1:{port}/ws/status")
    return body["fanout"]["messages_received"], body["fanout"]["bytes_received"]


def measure_cluster(mode: str) -> list[dict[str, Any]]:
    """Three instances on one Redis; rooms whose members are all on A or on B; C has none.
    Per instance: CPU and what it read from Redis, per message broadcast."""
    redis = RedisServer()
    redis.start()
    ports = [free_port() for _ in CLUSTER_INSTANCES]
    processes = [start_instance(mode, port, redis.url) for port in ports]
    try:
        for port in ports:
            wait_for_port(port)
        time.sleep(1.0)
        samplers = [Sampler(process.pid).start() for process in processes]
        assert redis.process is not None
        redis_sampler = Sampler(redis.process.pid).start()
        urls = ",".join(f"http://127.0.0.1:{port}" for port in ports)
        loadgen = subprocess.Popen(
            ["node", str(BENCH / "loadgen.mjs"), "cluster", urls, token()],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert loadgen.stdout is not None
        before: list[tuple[int, int]] = []
        phases: list[dict[str, Any]] = []
        for line in loadgen.stdout:
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            if record.get("ready"):
                before = [redis_reads(mode, port) for port in ports]
            else:
                after = [redis_reads(mode, port) for port in ports]
                record["instances"] = instance_figures(record, samplers, before, after)
                start, end = record["start"] / 1000, record["end"] / 1000
                redis_cpu = redis_sampler.cpu_between(start, end)
                record["redisCpuUsPerBroadcast"] = round(redis_cpu * 1e6 / record["sent"], 1)
                phases.append(record)
        if loadgen.wait(timeout=300) != 0:
            raise RuntimeError(f"loadgen cluster ({mode}) failed")
        for sampler in [*samplers, redis_sampler]:
            sampler.stop()
        return phases
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=15)
        redis.stop()


def redis_pubsub_ceiling(subscribers: int = 3, payload: int = 300) -> dict[str, Any]:
    """Redis alone at saturation: redis-benchmark publishes from 50 connections without
    pipelining (as instances do) to a channel with ``subscribers`` readers; Redis CPU per
    pub/sub message (a publish or a delivery). At the cluster run's low rate, Redis's per-wakeup
    overhead dominates; a shard's capacity is what it does when busy."""
    redis = RedisServer()
    redis.start()
    assert redis.process is not None
    readers = [
        subprocess.Popen(
            ["redis-cli", "-p", str(redis.port), "subscribe", "room"], stdout=subprocess.DEVNULL
        )
        for _ in range(subscribers)
    ]
    try:
        time.sleep(0.5)
        sampler = Sampler(redis.process.pid).start()
        time.sleep(0.2)
        count = 200_000
        started = time.time()
        subprocess.run(
            [
                *(
                    "redis-benchmark",
                    "-p",
                    str(redis.port),
                    "-n",
                    str(count),
                    "-c",
                    "50",
                    "-P",
                    "1",
                ),
                *("-q", "publish", "room", "x" * payload),
            ],
            check=True,
            capture_output=True,
        )
        ended = time.time()
        time.sleep(0.2)
        sampler.stop()
        cpu = sampler.cpu_between(started, ended)
        return {
            "subscribers": subscribers,
            "payloadBytes": payload,
            "publishesPerSecond": round(count / (ended - started)),
            "cpuUsPerPubsubMessage": round(cpu * 1e6 / (count * (1 + subscribers)), 2),
        }
    finally:
        for reader in readers:
            reader.kill()
        redis.stop()


def instance_figures(
    phase: dict[str, Any],
    samplers: list[Sampler],
    before: list[tuple[int, int]],
    after: list[tuple[int, int]],
) -> list[dict[str, Any]]:
    start, end, sent = phase["start"] / 1000, phase["end"] / 1000, max(phase["sent"], 1)
    figures = []
    for name, sampler, (m0, b0), (m1, b1) in zip(
        CLUSTER_INSTANCES, samplers, before, after, strict=True
    ):
        cpu = sampler.cpu_between(start, end)
        figures.append(
            {
                "instance": name,
                "cpuSeconds": round(cpu, 3),
                "cpuUsPerBroadcast": round(cpu * 1e6 / sent, 1),
                "redisMessagesPerBroadcast": round((m1 - m0) / sent, 3),
                "redisBytesPerBroadcast": round((b1 - b0) / sent, 1),
            }
        )
    return figures


def measure(
    server: str,
    scenario: str,
    fake_url: str,
    redis: RedisServer | None = None,
    env: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    port = free_port()
    process = (
        start_reference(port, fake_url)
        if server == "reference"
        else start_ours(port, fake_url, scenario.startswith("ai"), redis and redis.url)
    )
    try:
        wait_for_port(port)
        time.sleep(1.0)
        sampler = Sampler(process.pid).start()
        redis_sampler = Sampler(redis.process.pid).start() if redis and redis.process else None
        time.sleep(0.5)
        phases = run_loadgen(scenario, f"http://127.0.0.1:{port}", env)
        time.sleep(0.2)
        sampler.stop()
        if redis_sampler is not None:
            redis_sampler.stop()
        for phase in phases:
            start, end = phase["start"] / 1000, phase["end"] / 1000
            cpu = sampler.cpu_between(start, end)
            phase["cpuSeconds"] = round(cpu, 3)
            if redis_sampler is not None and phase.get("sent"):
                redis_cpu = redis_sampler.cpu_between(start, end)
                phase["redisCpuUsPerMessage"] = round(redis_cpu * 1e6 / phase["sent"], 1)
            if phase.get("tokens"):
                phase["cpuUsPerToken"] = round(cpu * 1e6 / phase["tokens"], 1)
            if phase.get("delivered"):
                phase["cpuUsPerDelivery"] = round(cpu * 1e6 / phase["delivered"], 1)
                phase["deliveriesPerSecond"] = round(phase["delivered"] / max(end - start, 1e-9))
            if scenario == "storm":
                before = sampler.rss_at(start)
                peak = sampler.max_rss_between(start, end)
                phase["rssBeforeKb"], phase["rssPeakKb"] = before, peak
                phase["rssPerConnectionKb"] = round((peak - before) / phase["sockets"], 1)
                phase["rssAt1000Mb"] = round(peak / 1024, 1)
        return phases
    finally:
        process.terminate()
        process.wait(timeout=15)


def summarize(
    results: dict[str, dict[str, list[dict[str, Any]]]],
) -> list[tuple[str, str, Any, Any]]:
    rows: list[tuple[str, str, Any, Any]] = []

    def pick(server: str, scenario: str) -> list[dict[str, Any]]:
        return results.get(server, {}).get(scenario, [])

    def both(scenario: str, label: str, getter: Any, source: str | None = None) -> None:
        values = []
        # The cluster scenario compares routed fan-out with python-socketio's stock manager;
        # the redis one, ours on one Redis with ours alone.
        servers = {"cluster": ("routed", "stock"), "redis": ("ours-redis", "ours")}.get(
            scenario, ("ours", "reference")
        )
        for server in servers:
            try:
                values.append(getter(pick(server, source or scenario)))
            except (IndexError, KeyError, TypeError, ValueError, StopIteration):
                values.append(None)
        if values != [None, None]:
            rows.append((scenario, label, values[0], values[1]))

    def sustained(phases: list[dict[str, Any]]) -> Any:
        if not phases:
            return None
        ok = [
            p
            for p in phases
            if p["p99"] is not None and p["p99"] <= 200 and p["delivered"] >= 0.95 * p["expected"]
        ]
        return max(p["deliveriesPerSecond"] for p in ok) if ok else 0

    def at_rate(phases: list[dict[str, Any]], rate: int) -> dict[str, Any]:
        return next(p for p in phases if p["rate"] == rate)

    both("storm", "connect 1000 sockets (ms)", lambda p: p[0]["connectMs"])
    both("storm", "RSS per connection (kB)", lambda p: p[0]["rssPerConnectionKb"])
    both("storm", "RSS at 1000 connections (MB)", lambda p: p[0]["rssAt1000Mb"])
    both("fanout", "CPU µs per delivery @400 msg/s", lambda p: at_rate(p, 400)["cpuUsPerDelivery"])
    both("fanout", "p50 ms @400 msg/s", lambda p: round(at_rate(p, 400)["p50"], 1))
    both("fanout", "p99 ms @400 msg/s", lambda p: round(at_rate(p, 400)["p99"], 1))
    both("fanout", "max sustained deliveries/s (p99 ≤ 200 ms)", sustained)
    both("bigroom", "CPU µs per delivery", lambda p: p[0]["cpuUsPerDelivery"])
    both("bigroom", "p50 ms", lambda p: round(p[0]["p50"], 1))
    both("bigroom", "p99 ms", lambda p: round(p[0]["p99"], 1))
    per_delivery = lambda p: at_rate(p, 400)["cpuUsPerDelivery"]  # noqa: E731
    both("redis", "fanout CPU µs per delivery @400 msg/s", per_delivery, "fanout")
    both("redis", "fanout p99 ms @400 msg/s", lambda p: round(at_rate(p, 400)["p99"], 1), "fanout")
    both("redis", "ai CPU µs per token delivered", lambda p: p[0]["cpuUsPerToken"], "ai")
    both("redis", "ai relay latency per chunk, p99 ms", _ms("relayP99"), "ai")
    ceiling = results.get("redis-server", {}).get("pubsub")
    if ceiling:
        rows.append(
            (
                "redis",
                "Redis alone, saturated: publishes/s (3 subscribers, 300 B, 50 clients)",
                ceiling[0]["publishesPerSecond"],
                None,
            )
        )
        rows.append(
            (
                "redis",
                "Redis alone, saturated: CPU µs per pub/sub message",
                ceiling[0]["cpuUsPerPubsubMessage"],
                None,
            )
        )
    for name in CLUSTER_INSTANCES:

        def of(phases: list[dict[str, Any]], key: str, name: str = name) -> Any:
            return next(i for i in phases[0]["instances"] if i["instance"] == name)[key]

        holds = "one user, unrelated room" if name == "C" else "members of half the rooms"
        both(
            "cluster",
            f"{name} ({holds}): CPU µs per broadcast",
            lambda p: of(p, "cpuUsPerBroadcast"),
        )
        both(
            "cluster",
            f"{name}: bytes read from Redis per broadcast",
            lambda p: of(p, "redisBytesPerBroadcast"),
        )
    both("cluster", "Redis server: CPU µs per broadcast", lambda p: p[0]["redisCpuUsPerBroadcast"])
    both("cluster", "delivered / expected", lambda p: f"{p[0]['delivered']}/{p[0]['expected']}")
    for scenario in ("ai", "ailight"):
        both(scenario, "chunk events delivered", lambda p: p[0]["delivered"])
        both(scenario, "tokens delivered", lambda p: p[0]["tokens"])
        both(scenario, "CPU µs per token delivered", lambda p: p[0]["cpuUsPerToken"])
        both(scenario, "replies completed / expected", _completed)
        both(scenario, "relay latency per chunk (newest token), p50 ms", _ms("relayP50"))
        both(scenario, "relay latency per chunk (newest token), p99 ms", _ms("relayP99"))
        both(scenario, "oldest token in a chunk (coalescing hold), p50 ms", _ms("oldestP50"))
        both(scenario, "oldest token in a chunk (coalescing hold), p99 ms", _ms("oldestP99"))
    return rows


def _completed(phases: list[dict[str, Any]]) -> str:
    return f"{phases[0]['finished']}/{phases[0]['expected']}"


def _ms(key: str) -> Any:
    return lambda phases: round(phases[0][key], 1)


def markdown(rows: list[tuple[str, str, Any, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"Measured {meta['date']} on {meta['machine']}; `scripts/bench`. The baseline is the "
        "Node socket.io v4 reference, except in the redis rows (ours on one Redis, against ours "
        "without) and the cluster rows (routed fan-out over three instances, against "
        "python-socketio's stock AsyncRedisManager).",
        "",
        "| scenario | metric | ours | baseline | ours / baseline |",
        "|---|---|---|---|---|",
    ]
    for scenario, label, ours, reference in rows:
        ratio = ""
        if isinstance(ours, int | float) and isinstance(reference, int | float) and reference:
            ratio = f"{ours / reference:.2f}×"
        shown = ["" if value is None else value for value in (ours, reference)]
        lines.append(f"| {scenario} | {label} | {shown[0]} | {shown[1]} | {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenarios", "--scenario", default=",".join(SCENARIOS))
    parser.add_argument("--servers", default="ours,reference")
    args = parser.parse_args()
    PIN[:] = server_pinning()
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    fake = FakeOpenAI()
    fake_url = asyncio.run_coroutine_threadsafe(fake.start(), loop).result(10)

    (BENCH / "results").mkdir(exist_ok=True)
    # A run of some scenarios updates those in the results file and keeps the others.
    previous = BENCH / "results" / "latest.json"
    results: dict[str, dict[str, list[dict[str, Any]]]] = (
        json.loads(previous.read_text())["results"] if previous.exists() else {}
    )
    for scenario in args.scenarios.split(","):
        if scenario == "redis":
            for name, (loadgen_scenario, env) in REDIS_RUNS.items():
                print(f"==> {name} on ours with Redis", flush=True)
                redis = RedisServer()
                redis.start()
                try:
                    results.setdefault("ours-redis", {})[name] = measure(
                        "ours", loadgen_scenario, fake_url, redis, env
                    )
                finally:
                    redis.stop()
            print("==> Redis pub/sub ceiling (redis-benchmark)", flush=True)
            results.setdefault("redis-server", {})["pubsub"] = [redis_pubsub_ceiling()]
            continue
        if scenario == "cluster":
            for mode in CLUSTER_MODES:
                print(f"==> cluster, {mode} fan-out", flush=True)
                results.setdefault(mode, {})["cluster"] = measure_cluster(mode)
            continue
        for server in args.servers.split(","):
            print(f"==> {scenario} on {server}", flush=True)
            results.setdefault(server, {})[scenario] = measure(server, scenario, fake_url)
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        + subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip(),
    }
    rows = summarize(results)
    out = BENCH / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    table = markdown(rows, meta)
    (out / "latest.md").write_text(table)
    print("\n" + table)
    asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
