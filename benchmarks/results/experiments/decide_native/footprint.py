"""Does the size of KV-aware routing's tables set its CPU? The in-process gateway (as
routing_cost's: 64 mock deployments, ~8k-token prompts), round robin and prefix_kv_aware
alternating in rounds of 400 requests, 8 rounds after one of warm-up, medians; the variant
shrinks the fingerprint memo (``memo=LINKS``, default 65,536) or the affinity index's bound
(``tracked=BLOCKS``, default 1,000,000).

python footprint.py base|memo=4096|tracked=20000   (from the repository root)
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import time

from kvgate.api.app import create_app
from kvgate.api.collector import freeze_startup_heap
from kvgate.bench import routing_cost as rc
from kvgate.config.schema import Settings


def settings(name: str, variant: str) -> Settings:
    base = rc.gateway_settings(name, 64)
    if not variant.startswith("tracked="):
        return base
    document = base.model_dump()
    document["routing"]["prefix"]["max_tracked_blocks"] = int(variant.split("=")[1])
    return Settings.model_validate(document)


async def main(variant: str) -> None:
    gc.set_threshold(2000, 3, 10)
    strategies = ("round_robin", "prefix_kv_aware")
    apps = {name: create_app(settings(name, variant)) for name in strategies}
    if variant.startswith("memo="):
        strategy = apps["prefix_kv_aware"].gateway.routes[rc.MODEL].strategy
        strategy._memo.max_links = int(variant.split("=")[1])  # type: ignore[attr-defined]
    prompts = rc.Prompts(rc.SYSTEM_TOKENS, rc.USER_TOKENS)
    for app in apps.values():
        route = app.gateway.routes[rc.MODEL]
        await rc.warm(route.strategy, route.deployments, prompts)
    freeze_startup_heap()
    number, cpu_us = 10_000, {name: [] for name in strategies}  # type: ignore[var-annotated]
    for round_number in range(9):
        for name in strategies:
            bodies = [prompts.body(number + n) for n in range(400)]
            number += 400
            started = time.thread_time_ns()
            for body in bodies:
                await rc._serve_one(apps[name], body)
            if round_number:
                cpu_us[name].append((time.thread_time_ns() - started) / 400 / 1000)
    rr, kv = (statistics.median(cpu_us[name]) for name in strategies)
    print(f"{variant:16s} round robin {rr:6.1f} us, KV-aware {kv:6.1f} us, "
          f"ratio {kv / rr:5.3f}, extra {kv - rr:5.1f} us")
    for app in apps.values():
        await app.gateway.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "base"))
