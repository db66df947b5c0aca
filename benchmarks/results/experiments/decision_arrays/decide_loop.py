"""routing_cost's decision (prepare + choose + on_dispatched and its write-behind flush; 256
deployments, ~8k-token prompts, warm memory index, virtual clock) repeated, for its
instructions under callgrind: ``count_decide.sh`` runs it for 0 and 1,000 decisions after the
same 200 and the same 1,200 parsed bodies; the difference over 1,000 is one decision
(fingerprint included).

python decide_loop.py REPLICAS DECISIONS
"""

from __future__ import annotations

import asyncio
import sys

from kvgate.bench import routing_cost as rc
from kvgate.bench.virtual_fleet import VirtualClock, build_router, make_deployments
from kvgate.config.schema import RoutingSettings


async def main(replicas: int, decisions: int) -> None:
    deployments = make_deployments(
        replicas, settings=[{"kv_capacity_tokens": rc.KV_CAPACITY_TOKENS}] * replicas)
    strategy, _ = build_router("prefix_kv_aware", deployments, RoutingSettings(seed=0),
                               VirtualClock())
    prompts = rc.Prompts(rc.SYSTEM_TOKENS, rc.USER_TOKENS)
    await rc.warm(strategy, deployments, prompts)
    calls = [prompts.call(10_000 + k) for k in range(1200)]  # the same for every count
    for call in calls[:200 + decisions]:
        await strategy.prepare(call)
        decision = strategy.choose(call, deployments)
        strategy.on_dispatched(call, decision.deployment)
        strategy.bookkeeping.flush()  # type: ignore[attr-defined]


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
