"""Per-phase wall time of routing_cost's KV-aware decision (medians of 2,000, microseconds).

python phase.py [N ...] (default 64 256): ``fp`` the fingerprint alone (its own memo, as
routing_cost pairs it), ``prepare`` (fingerprint + index lookup + the strategy's state),
``choose``, ``dispatch`` (on_dispatched + the write-behind flush: index record, ledger),
``beyond`` = prepare + choose + dispatch - fp, per sample. Wall time on a shared VM: run arms
interleaved and read several runs.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

from kvgate.bench import routing_cost as rc
from kvgate.bench.virtual_fleet import VirtualClock, build_router, make_deployments
from kvgate.config.schema import RoutingSettings
from kvgate.routing.fingerprint import MessageMemo, fingerprint


async def main(replicas: int, samples: int) -> None:
    deployments = make_deployments(
        replicas, settings=[{"kv_capacity_tokens": rc.KV_CAPACITY_TOKENS}] * replicas)
    routing = RoutingSettings(seed=0)
    strategy, _ = build_router("prefix_kv_aware", deployments, routing, VirtualClock())
    prompts = rc.Prompts(rc.SYSTEM_TOKENS, rc.USER_TOKENS)
    await rc.warm(strategy, deployments, prompts)
    memo = MessageMemo()
    fingerprint(prompts.call(-1), block_chars=routing.prefix.block_chars, memo=memo)
    calls = [prompts.call(10_000 + k) for k in range(samples)]
    phases: dict[str, list[int]] = {"fp": [], "prepare": [], "choose": [], "dispatch": [],
                                    "beyond": []}
    clock = time.perf_counter_ns
    for call in calls:
        a = clock()
        fingerprint(call, block_chars=routing.prefix.block_chars, memo=memo)
        b = clock()
        await strategy.prepare(call)
        c = clock()
        decision = strategy.choose(call, deployments)
        d = clock()
        strategy.on_dispatched(call, decision.deployment)
        strategy.bookkeeping.flush()  # type: ignore[attr-defined]
        e = clock()
        for name, ns in (("fp", b - a), ("prepare", c - b), ("choose", d - c),
                         ("dispatch", e - d), ("beyond", e - c - (b - a))):
            phases[name].append(ns)
    print(replicas, {k: round(statistics.median(v) / 1e3, 2) for k, v in phases.items()})


if __name__ == "__main__":
    for n in map(int, sys.argv[1:] or ["64", "256"]):
        asyncio.run(main(n, 2000))
