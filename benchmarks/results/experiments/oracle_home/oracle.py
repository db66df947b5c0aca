"""How far routing alone can take the seed's images setup: a placement oracle beside the arms.

``oracle_home`` knows what no router knows in advance: every request's image, and that the 12
images split 6 / 6 fit the two replicas' KV (each holds 55% of the images' KV). It gives each
image a home on its first request, alternating replicas (so the opening burst's cold prefills
are split evenly and no image is ever computed twice), and sends every later request for that
image home, whatever the queues. Not a proven optimum (a router could copy a hot image while
the other replica idles), but the placement every KV-aware arm aims at: if round robin's TTFT
p95 over the oracle's stays under 1.8x at 8 questions per image, the cold burst bounds every
router there, not the scorer.

  python benchmarks/results/experiments/oracle_home/oracle.py OUT.json [SEEDS [FIRST_SEED]]

Virtual time (simulator figures); the images-seeds scenario's case, seeds 1..SEEDS (10), at
8, 24 and 50 questions per image; round robin and prefix_kv_aware rerun in the same run.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from kvgate.bench.scenarios.images_seeds import QUESTIONS
from kvgate.bench.scenarios.routing import figures, image_case
from kvgate.bench.workloads import MultimodalWorkload
from kvgate.config.schema import RoutingSettings
from kvgate.core.call import Call
from kvgate.core.deployment import Deployment, RouteDecision
from kvgate.routing import STRATEGIES, StrategyEntry
from kvgate.routing.base import StrategyDefaults

ARMS = ("round_robin", "prefix_kv_aware", "oracle_home")


class OracleHome(StrategyDefaults):
    name = "oracle_home"

    def __init__(self, deployments: Sequence[Deployment]) -> None:
        self._deployments = list(deployments)
        self._home: dict[bytes | None, Deployment] = {}

    def choose(self, call: Call, candidates: Sequence[Deployment]) -> RouteDecision:
        key = call.image_digests[0] if call.image_digests else None
        outcome = "hit"
        home = self._home.get(key)
        if home is None:
            home = self._home[key] = self._deployments[len(self._home) % len(self._deployments)]
            outcome = "cold"
        pick = home if home in candidates else candidates[0]
        return RouteDecision(pick, {"strategy": self.name, "outcome": outcome})

    def on_dispatched(self, call: Call, deployment: Deployment) -> None:
        return None


STRATEGIES["oracle_home"] = StrategyEntry(lambda deployments, _, __: OracleHome(deployments))


def run_one(job: tuple[int, int, str]) -> dict[str, Any]:
    from kvgate.bench.scenarios.routing_virtual import run_virtual

    questions, seed, arm = job
    STRATEGIES["oracle_home"] = StrategyEntry(lambda deployments, _, __: OracleHome(deployments))
    case = image_case(False)
    assert isinstance(case.workload, MultimodalWorkload)
    case = dataclasses.replace(case, workload=dataclasses.replace(
        case.workload, questions_per_image=questions))
    run = run_virtual(case.workload.build(case.workload_options(arm, seed)), strategy=arm,
                      profile_name=case.fleet.profile, replicas=case.fleet.replicas,
                      kv_blocks=case.fleet.kv_blocks, concurrency=case.concurrency,
                      think_s=case.think_s, seed=seed, routing=RoutingSettings(seed=seed))
    numbers = figures(run.records, run.engine, case=case, duration_s=run.simulated_s,
                      replica_ids=run.deployment_ids, route_outcomes=run.route_outcomes)
    return {"questions": questions, "seed": seed, "arm": arm,
            "ttft_p95_ms": numbers["ttft_ms"]["p95"], "hit_rate": numbers["replica_hit_rate"],
            "errors": numbers["errors"], "requests": numbers["requests"]}


def main() -> None:
    out = sys.argv[1]
    first = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    seeds = list(range(first, first + (int(sys.argv[2]) if len(sys.argv) > 2 else 10)))
    jobs = [(q, s, arm) for q in QUESTIONS for s in seeds for arm in ARMS]
    with ProcessPoolExecutor(2) as pool:
        rows = list(pool.map(run_one, jobs))
    by = {(r["questions"], r["seed"], r["arm"]): r for r in rows}
    summary: dict[str, Any] = {}
    for q in QUESTIONS:
        rr_over = {arm: [by[(q, s, "round_robin")]["ttft_p95_ms"] / by[(q, s, arm)]["ttft_p95_ms"]
                         for s in seeds] for arm in ("prefix_kv_aware", "oracle_home")}
        summary[str(q)] = {
            "mean_p95_ms": {arm: round(statistics.mean(by[(q, s, arm)]["ttft_p95_ms"]
                                                       for s in seeds), 1) for arm in ARMS},
            "mean_hit_rate": {arm: round(statistics.mean(by[(q, s, arm)]["hit_rate"]
                                                         for s in seeds), 4) for arm in ARMS},
            "rr_over_arm_p95_range": {arm: [round(min(v), 2), round(max(v), 2)]
                                      for arm, v in rr_over.items()},
            "seeds_at_1_8x": {arm: sum(x >= 1.8 for x in v) for arm, v in rr_over.items()},
            "errors": {arm: sum(by[(q, s, arm)]["errors"] for s in seeds) for arm in ARMS},
        }
    document = {"command": "python benchmarks/results/experiments/oracle_home/oracle.py "
                           + " ".join(sys.argv[1:]),
                "source": "simulator (virtual time)", "summary": summary, "rows": rows}
    with open(out, "w") as handle:
        json.dump(document, handle, indent=1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
