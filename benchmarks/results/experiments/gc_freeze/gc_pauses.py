"""GC pauses in the in-process gateway (routing_cost's setup: 64 deployments, ~8k-token
prompts), with and without the start-up heap frozen.

Usage: python gc_pauses.py STRATEGY plain|freeze   (prints one JSON line)
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import sys
import time
from typing import Any

from kvgate.api.collector import freeze_startup_heap
from kvgate.bench import routing_cost as rc

REQUESTS = 10_000
stats: collections.Counter[str] = collections.Counter()
started = {"ns": 0}


def on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        started["ns"] = time.perf_counter_ns()
        return
    took_ns = time.perf_counter_ns() - started["ns"]
    generation = info["generation"]
    stats[f"gen{generation}"] += 1
    stats["ns"] += took_ns
    stats[f"ns{generation}"] += took_ns
    stats["max_ns"] = max(stats["max_ns"], took_ns)


async def main(strategy: str, mode: str) -> None:
    app = rc.create_app(rc.gateway_settings(strategy, 64))
    prompts = rc.Prompts(rc.SYSTEM_TOKENS, rc.USER_TOKENS)
    route = app.gateway.routes[rc.MODEL]
    await rc.warm(route.strategy, route.deployments, prompts)
    bodies = [prompts.body(10_000 + i) for i in range(REQUESTS)]
    if mode == "freeze":
        freeze_startup_heap()
    gc.callbacks.append(on_gc)
    started_cpu_ns = time.thread_time_ns()
    for body in bodies:
        await rc._serve_one(app, body)
    cpu_ns = time.thread_time_ns() - started_cpu_ns
    gc.callbacks.remove(on_gc)
    await app.gateway.aclose()
    print(json.dumps({
        "strategy": strategy, "mode": mode, "requests": REQUESTS,
        "max_pause_ms": round(stats["max_ns"] / 1e6, 2),
        "cpu_us_per_request": round(cpu_ns / REQUESTS / 1e3, 1),
        "gc_us_per_request": round(stats["ns"] / REQUESTS / 1e3, 2),
        "collections": {str(g): stats[f"gen{g}"] for g in (0, 1, 2)},
        "full_pass_ms": round(stats["ns2"] / max(1, stats["gen2"]) / 1e6, 1),
    }))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
