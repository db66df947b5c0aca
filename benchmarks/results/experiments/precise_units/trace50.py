"""Every routing decision of one images-seeds arm at 50 questions per image, logged.

Usage: python trace50.py SEED prefix_kv_aware|precise_kv
Prints the arm's figures and writes /tmp/trace_ARM_SEED.json: per decision its order, the
virtual time, the first links of the prompt (the second names the image), the pick, the
outcome, and per candidate its matched tokens, predicted cost, eviction and KV-wait prices.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from kvgate.bench.scenarios import images_seeds
from kvgate.core.deployment import Deployment, RouteDecision
from kvgate.routing.precise.strategy import PreciseKVAware
from kvgate.routing.prefix_kv_aware import PrefixKVAware

LOG: list[dict[str, Any]] = []
_KEPT = ("matched_tokens", "predicted_cost_ms", "eviction_ms", "kv_wait_ms")


def logged(cls: Any) -> None:
    original = cls.choose

    def choose(self: Any, call: Any, candidates: Sequence[Deployment]) -> RouteDecision:
        decision: RouteDecision = original(self, call, candidates)
        state = call.routing_state
        explanation = decision.explanation
        known = getattr(state, "known_tokens", None)
        LOG.append({
            "n": len(LOG), "t": round(self._scorer._clock(), 3),
            "links": [h % 100_000 for h in state.fingerprint.hashes[:6]],
            "to": decision.deployment.id, "outcome": explanation.get("outcome"),
            "known": [round(k) for k in known] if known else None,
            "candidates": {name: {k: v for k, v in entry.items() if k in _KEPT}
                           for name, entry in explanation["candidates"].items()},
        })
        return decision

    cls.choose = choose


if __name__ == "__main__":
    logged(PreciseKVAware)
    logged(PrefixKVAware)
    seed, arm = int(sys.argv[1]), sys.argv[2]
    row = images_seeds.run_one(50, seed, arm, False)
    print(json.dumps({k: row[k] for k in ("ttft_p95_ms", "hit_rate", "route_outcomes",
                                          "max_share")}))
    with open(f"/tmp/trace_{arm}_{seed}.json", "w") as out:
        json.dump(LOG, out)
