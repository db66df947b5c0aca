"""Trace one seed of ``precise-seeds``: every decision of approximate and precise mode.

python benchmarks/results/experiments/precise_trace.py SEED [steady]
(about 3 s). Runs the seed's fan-out (or steady) workload through both KVGate arms in
virtual time, prints each arm's hit rate, TTFT p95 and outcomes, then for the 12 most
requested prompts (groups) how many of their requests each arm sent to each replica and how
many were not hits (cold or spill): where a popular prompt is spread over several replicas,
its copies compete for the fleet's KV.
"""

from __future__ import annotations

import collections
import sys
from dataclasses import replace
from typing import Any

from kvgate.bench.scenarios import precise
from kvgate.bench.scenarios.precise_virtual import run_virtual_arm
from kvgate.routing import ttft_scorer

ARMS = {"approximate": "prefix_kv_aware", "precise": "precise_kv"}
log: dict[str, list[tuple[int, str]]] = collections.defaultdict(list)
_choose = ttft_scorer.TTFTScorer.choose


def _logged_choose(self: Any, candidates: Any, prompt_tokens: float, matched: Any,
                   best_match: float, **options: Any) -> Any:
    decision, pick = _choose(self, candidates, prompt_tokens, matched, best_match, **options)
    log[self.name].append((pick, decision.explanation["outcome"]))
    return decision, pick


def main(argv: list[str]) -> None:
    ttft_scorer.TTFTScorer.choose = _logged_choose  # type: ignore[method-assign]
    seed = int(argv[0])
    setup = precise.FULL
    if len(argv) > 1 and argv[1] == "steady":
        setup = replace(setup, burst_share=0.0)
    requests = precise.build_requests(setup, seed)
    for arm in ARMS:
        result = run_virtual_arm(precise.ARMS[arm], requests, profile_name=precise.PROFILE,
                                 replicas=setup.replicas, kv_blocks=setup.kv_blocks,
                                 time_scale=setup.time_scale)
        print(arm, "hit rate", result["prefix_cache_hit_rate"], "p95",
              result["ttft_ms"]["p95"], result["route_outcomes"])
    groups = [request.tag for request in requests]
    popular = collections.Counter(groups).most_common(12)
    for arm, strategy in ARMS.items():
        per_group: dict[str, collections.Counter[int]] = collections.defaultdict(
            collections.Counter)
        missed: collections.Counter[str] = collections.Counter()
        for group, (pick, outcome) in zip(groups, log[strategy], strict=True):
            per_group[group][pick] += 1
            missed[group] += outcome != "hit"
        spread = sum(len(replicas) > 1 for replicas in per_group.values())
        print(f"{arm}: prompts on more than one replica {spread} of {len(per_group)}")
        for group, count in popular:
            print(f"  {group:8} requests {count:3} not hits {missed[group]:3} "
                  f"per replica {dict(sorted(per_group[group].items()))}")


if __name__ == "__main__":
    main(sys.argv[1:])
