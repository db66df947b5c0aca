"""Where a KV-aware request's CPU goes in the in-process gateway (routing_cost's: 64 mock
deployments, ~8k-token prompts, one request at a time): each phase's own method wrapped with a
perf_counter_ns timer (about 0.3 us per wrapper), 4,000 requests after 300 of warm-up.

python phase.py [prefix_kv_aware|round_robin]   (from the repository root; PYTHONPATH picks
the tree)
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections.abc import Callable
from typing import Any

from kvgate.api.app import create_app
from kvgate.api.collector import freeze_startup_heap
from kvgate.bench.routing_cost import (
    MODEL,
    SYSTEM_TOKENS,
    USER_TOKENS,
    Prompts,
    _serve_one,
    gateway_settings,
    warm,
)
from kvgate.routing import prefix_kv_aware, ttft_ledger, ttft_scorer

REQUESTS = 4_000
spent_ns: dict[str, int] = {}


def wrap(owner: Any, attr: str, label: str) -> None:
    inner: Callable[..., Any] = getattr(owner, attr)

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter_ns()
        try:
            return inner(*args, **kwargs)
        finally:
            spent_ns[label] = spent_ns.get(label, 0) + time.perf_counter_ns() - started

    setattr(owner, attr, timed)


async def main(name: str) -> None:
    gc.set_threshold(2000, 3, 10)  # the server's collector thresholds
    app = create_app(gateway_settings(name, 64))
    prompts = Prompts(SYSTEM_TOKENS, USER_TOKENS)
    route = app.gateway.routes[MODEL]
    await warm(route.strategy, route.deployments, prompts)
    freeze_startup_heap()
    bodies = [prompts.body(10_000 + i) for i in range(300 + REQUESTS)]
    for body in bodies[:300]:
        await _serve_one(app, body)
    spent_ns.clear()
    started = time.thread_time_ns()
    for body in bodies[300:]:
        await _serve_one(app, body)
    print(name, f"CPU {(time.thread_time_ns() - started) / REQUESTS / 1000:.1f} us/request")
    for label, ns in spent_ns.items():
        print(f"  {label:20s} {ns / REQUESTS / 1000:6.2f} us")
    await app.gateway.aclose()


if __name__ == "__main__":
    wrap(ttft_scorer.TTFTScorer, "choose", "scorer.choose")
    if getattr(ttft_scorer, "native_decide", None) is not None:
        wrap(ttft_scorer, "native_decide", "native_decide")
    wrap(ttft_ledger.Ledger, "dispatched", "ledger.dispatched")
    wrap(ttft_ledger.Ledger, "released", "ledger.released")
    wrap(prefix_kv_aware.PrefixKVAware, "_record", "index record")
    wrap(prefix_kv_aware.PrefixKVAware, "_state", "match state")
    wrap(prefix_kv_aware, "fingerprint", "fingerprint")
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "prefix_kv_aware"))
