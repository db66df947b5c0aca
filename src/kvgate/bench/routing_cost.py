"""What KV-aware routing costs on the hot path, measured in-process (no HTTP, no engines).

The workload is the one ``prefix_kv_aware`` exists for: ~8k-token chat prompts made of a long
system prompt every request shares (7,168 tokens) and a user turn of its own (1,024 tokens),
so every deployment has served the shared part and none the rest: the index lookup walks the
whole shared run for every deployment, its worst realistic case. Four figures:

* ``fingerprint_us``: the prompt -> block-hash chain, for 8k- and 100k-token prompts, every
  message hashed, and with the shared system prompt already in ``prefix_kv_aware``'s memo;
* ``decision_us``: ``prepare`` + ``choose`` + ``on_dispatched`` (``whole_us``), and the same
  minus the fingerprint, against a warm memory index, at 64 and 256 deployments (each sample
  pairs a decision with a fingerprint of the same prompt, memo in the same state; the median
  of the differences). A steady state, not a growing queue: the router's clock moves
  ``DECISION_GAP_S`` per decision and each attempt is released (untimed) once
  ``IN_FLIGHT`` newer ones are dispatched;
* ``gateway``: the whole in-process gateway path (ASGI app, parse, cache, failover, zero-latency
  mock upstream) per request, ``round_robin`` against ``prefix_kv_aware`` at 64 deployments,
  CPU (``thread_time``) and wall p50, alternating the two strategies round by round;
* the machine's load average before and after, since other work inflates wall times, and its
  speed (``python_speed_us``: ``sum(range(1000))``) as each run starts and at the end, since
  the VMs this runs on change speed from hour to hour.

Run (from the repository root): python -m kvgate.bench.routing_cost [--repeat 3] [--quick]
Writes benchmarks/results/routing_cost.json; with ``--repeat`` every figure is the median of
the repeats, with its spread (min, max).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import time
from collections import deque
from collections.abc import Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from kvgate.api.app import KVGateApp, create_app
from kvgate.api.collector import freeze_startup_heap, set_collector
from kvgate.bench.api import python_speed_us
from kvgate.bench.text import filler
from kvgate.bench.virtual_fleet import (
    MAX_IMAGE_BYTES,
    VirtualClock,
    build_router,
    make_deployments,
)
from kvgate.config.schema import RoutingSettings, Settings
from kvgate.core.call import Call
from kvgate.core.deployment import Deployment
from kvgate.request.parse import parse_call
from kvgate.routing.base import RoutingStrategy
from kvgate.routing.fingerprint import MessageMemo, fingerprint

#: Relative to the working directory: run from the repository root.
OUT = Path("benchmarks/results/routing_cost.json")
SYSTEM_TOKENS = 7168
USER_TOKENS = 1024
MODEL = "fleet"
#: Each deployment's KV size, as a vLLM replica publishes it (about an 8B model's on one
#: 80 GB GPU): with it known, the decision prices evictions and KV waits, as on a real fleet.
KV_CAPACITY_TOKENS = 400_000
#: The decision loop's steady state: attempts in flight (the overhead scenario's c=32), the
#: router's clock between decisions (1,000 requests a second) and each answer's length.
#: NOTE: before 2026-12-07 no attempt was ever released and the clock stood still, so the
#: ledger's queues grew through the run and its 50 ms refresh never ran again.
IN_FLIGHT = 32
DECISION_GAP_S = 0.001
OUTPUT_TOKENS = 64


class Prompts:
    """Chat bodies: one shared system prompt, then a user turn per request number."""

    def __init__(self, system_tokens: int, user_tokens: int) -> None:
        self._system = filler(system_tokens, "routing_cost.system")
        self._user_tokens = user_tokens

    def body(self, number: int) -> bytes:
        user = filler(self._user_tokens, "routing_cost.user", number)
        return orjson.dumps({"model": MODEL, "max_tokens": 4, "messages": [
            {"role": "system", "content": self._system}, {"role": "user", "content": user}]})

    def call(self, number: int) -> Call:
        return parse_call(self.body(number), "chat", models=frozenset({MODEL}),
                          max_image_bytes=MAX_IMAGE_BYTES, received_s=0.0, request_id="r")


def _median_us(samples_ns: list[int]) -> float:
    return round(statistics.median(samples_ns) / 1000, 2)


def fingerprint_us(prompt_tokens: int, samples: int, *, seen_system: bool = False) -> float:
    """Median microseconds to fingerprint one ``prompt_tokens`` chat prompt: every message
    hashed (``seen_system=False``), or with the shared system prompt already in the memo that
    ``prefix_kv_aware`` keeps (its steady state)."""
    prompts = Prompts(prompt_tokens - USER_TOKENS, USER_TOKENS)
    block_chars = RoutingSettings().prefix.block_chars
    calls = [prompts.call(n) for n in range(samples)]
    memo = None
    if seen_system:
        memo = MessageMemo()
        fingerprint(prompts.call(-1), block_chars=block_chars, memo=memo)
    times_ns = []
    for call in calls:
        started_ns = time.perf_counter_ns()
        fingerprint(call, block_chars=block_chars, memo=memo)
        times_ns.append(time.perf_counter_ns() - started_ns)
    return _median_us(times_ns)


async def decision_us(replicas: int, samples: int) -> dict[str, float]:
    """prefix_kv_aware's decision at ``replicas`` deployments, with and without fingerprinting."""
    deployments = make_deployments(
        replicas, settings=[{"kv_capacity_tokens": KV_CAPACITY_TOKENS}] * replicas)
    routing = RoutingSettings(seed=0)
    clock = VirtualClock()
    strategy, _ = build_router("prefix_kv_aware", deployments, routing, clock)
    prompts = Prompts(SYSTEM_TOKENS, USER_TOKENS)
    block_chars = routing.prefix.block_chars
    in_flight: deque[tuple[Call, Deployment]] = deque()

    async def decide(call: Call) -> None:
        await strategy.prepare(call)
        decision = strategy.choose(call, deployments)
        strategy.on_dispatched(call, decision.deployment)
        in_flight.append((call, decision.deployment))

    def settle() -> None:
        """Untimed: the clock moves on and the oldest attempt beyond the window ends."""
        clock.now_s += DECISION_GAP_S
        while len(in_flight) > IN_FLIGHT:
            call, deployment = in_flight.popleft()
            strategy.on_released(call, deployment, OUTPUT_TOKENS)

    await warm(strategy, deployments, prompts)
    # The same memo state as the strategy's: the system prompt seen, each user turn new.
    memo = MessageMemo()
    fingerprint(prompts.call(-1), block_chars=block_chars, memo=memo)
    calls = [prompts.call(10_000 + n) for n in range(samples)]
    whole_ns, beyond_ns = [], []
    for call in calls:
        started_ns = time.perf_counter_ns()
        fingerprint(call, block_chars=block_chars, memo=memo)
        fingerprinted_ns = time.perf_counter_ns()
        await decide(call)
        ended_ns = time.perf_counter_ns()
        whole_ns.append(ended_ns - fingerprinted_ns)
        beyond_ns.append(ended_ns - fingerprinted_ns - (fingerprinted_ns - started_ns))
        settle()
    # (the strategy's own count: requests it sent and has not seen end)
    open_attempts = sum(d["waiting_requests"] + d["decoding_requests"]
                        for d in strategy.describe().values())
    return {"whole_us": _median_us(whole_ns), "beyond_fingerprint_us": _median_us(beyond_ns),
            "in_flight_at_end": open_attempts}


async def warm(strategy: RoutingStrategy, deployments: Sequence[Deployment],
               prompts: Prompts) -> None:
    """Every deployment has served the shared system prompt with two user turns of its own.

    NOTE: recorded directly rather than routed: with nothing in flight every request would
    follow the prefix to the one deployment that has it, and the lookup would be cheap. Under
    load the guard spills a hot prefix onto more and more replicas; this is where it ends.
    """
    for number in range(2 * len(deployments)):
        call = prompts.call(number)
        await strategy.prepare(call)
        deployment = deployments[number % len(deployments)]
        strategy.on_dispatched(call, deployment)
        strategy.on_released(call, deployment, OUTPUT_TOKENS)  # recorded, not in flight


def gateway_settings(strategy: str, replicas: int) -> Settings:
    return Settings.model_validate({
        "providers": {"mock": {"type": "mock"}},
        "models": [{"name": MODEL, "deployments": [
            {"provider": "mock", "model": MODEL, "id": f"replica-{i}",
             "kv_capacity_tokens": KV_CAPACITY_TOKENS} for i in range(replicas)]}],
        "routing": {"strategy": strategy, "health_check_interval_s": 0},
    })


async def _serve_one(app: KVGateApp, body: bytes) -> None:
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never leaves
        raise AssertionError("unreachable")

    status = 0

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "headers": [(b"content-type", b"application/json")]}
    await app(scope, receive, send)
    if status != 200:
        raise RuntimeError(f"gateway answered {status}")


async def gateway_us(replicas: int, requests_per_round: int, rounds: int
                     ) -> dict[str, dict[str, float]]:
    """Per request through the in-process gateway: CPU and wall p50, per strategy."""
    strategies = ("round_robin", "prefix_kv_aware")
    apps = {name: create_app(gateway_settings(name, replicas)) for name in strategies}
    prompts = Prompts(SYSTEM_TOKENS, USER_TOKENS)
    for app in apps.values():
        route = app.gateway.routes[MODEL]
        await warm(route.strategy, route.deployments, prompts)
    # As the servers' start-up does (no lifespan runs here); main set the collector's
    # thresholds already, for every part of every run.
    freeze_startup_heap()
    cpu_ns: dict[str, list[float]] = {name: [] for name in strategies}
    wall_ns: dict[str, list[int]] = {name: [] for name in strategies}
    number = 10_000
    for round_number in range(rounds + 1):  # round 0 warms the index and the code paths
        for name in strategies:
            bodies = [prompts.body(number + n) for n in range(requests_per_round)]
            number += requests_per_round
            app = apps[name]
            walls = []
            started_cpu_ns = time.thread_time_ns()
            for body in bodies:
                started_ns = time.perf_counter_ns()
                await _serve_one(app, body)
                walls.append(time.perf_counter_ns() - started_ns)
            if round_number:
                cpu_ns[name].append((time.thread_time_ns() - started_cpu_ns)
                                    / requests_per_round)
                wall_ns[name].extend(walls)
    for app in apps.values():
        await app.gateway.aclose()
    out = {name: {"cpu_us": round(statistics.median(cpu_ns[name]) / 1000, 2),
                  "wall_p50_us": _median_us(wall_ns[name])} for name in strategies}
    rr, kv = out["round_robin"], out["prefix_kv_aware"]
    out["prefix_kv_aware_vs_round_robin"] = {
        "cpu_ratio": round(kv["cpu_us"] / rr["cpu_us"], 3),
        "added_wall_p50_us": round(kv["wall_p50_us"] - rr["wall_p50_us"], 2),
    }
    return out


def measure(quick: bool) -> dict[str, Any]:
    samples = 30 if quick else 300
    return {
        # The machine's speed as this run starts: figures of runs at different speeds are
        # compared through it (see python_speed_us).
        "python_speed_us": python_speed_us(),
        "fingerprint_us": {
            "8k": fingerprint_us(8192, samples),
            "100k": fingerprint_us(100_000, max(5, samples // 10)),
            "8k_system_prompt_seen": fingerprint_us(8192, samples, seen_system=True),
            "100k_system_prompt_seen": fingerprint_us(100_000, max(5, samples // 10),
                                                      seen_system=True),
        },
        "decision_us": {str(n): asyncio.run(decision_us(n, samples)) for n in (64, 256)},
        "gateway_64_deployments": asyncio.run(
            gateway_us(64, requests_per_round=20 if quick else 200, rounds=3 if quick else 5)),
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Same shape as one run, each number replaced by {median, min, max} over the runs."""
    first = runs[0]
    if isinstance(first, dict):
        return {key: summarize([run[key] for run in runs]) for key in first}
    values = [float(v) for v in runs]
    return {"median": round(statistics.median(values), 3), "min": min(values),
            "max": max(values)}


def main(argv: list[str] | None = None, emit: Callable[[str], None] = print) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="few samples: directions only")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    load_before = list(os.getloadavg())
    # NOTE: the collector's thresholds are the server's (the gateway's settings), for every
    # part of every run: set in gateway_us, they applied to the later runs' decisions only.
    set_collector(gateway_settings("round_robin", 64).server.gc_thresholds)
    gc_thresholds = list(gc.get_threshold())
    runs = []
    for repeat in range(args.repeat):
        runs.append(measure(args.quick))
        emit(f"run {repeat + 1}/{args.repeat}: {json.dumps(runs[-1])}")
    document = {
        "command": "python -m kvgate.bench.routing_cost"
                   + (f" --repeat {args.repeat}" if args.repeat != 3 else "")
                   + (" --quick" if args.quick else ""),
        "workload": {"system_tokens": SYSTEM_TOKENS, "user_tokens": USER_TOKENS,
                     "block_chars": RoutingSettings().prefix.block_chars},
        "host": {"cpus": os.cpu_count(), "gc_thresholds": gc_thresholds,
                 "load_before": load_before,
                 "load_after": list(os.getloadavg()),
                 "python_speed_us_after": python_speed_us()},
        "summary": summarize(runs),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    emit(json.dumps(document["summary"], indent=2))
    return document


if __name__ == "__main__":
    main()
