"""Trace one sweep cell in virtual time: every decision of two KVGate arms, and where they part.

python benchmarks/results/experiments/cell_trace.py WORKLOAD SEED LOAD KV_RATIO [OUT.json]
e.g. ``multimodal 6 0.9 1.0`` (about 7 s). Prints the first decision at which approximate
(prefix_kv_aware) and precise (precise_kv) mode pick a different replica or outcome, with the
decisions around it: time, pick, outcome, matched tokens per replica, prompt tokens, queued
prefill tokens per replica, the predicted cost per shown candidate (ms) and the pick's
predicted TTFT (ms). Writes every decision of both arms to OUT.json (default
cell_trace.json).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from kvgate.bench.scenarios.sweep import Task, run_task
from kvgate.bench.scenarios.sweep_workloads import sweep_workloads
from kvgate.routing import ttft_scorer

ARMS = ("prefix_kv_aware", "precise_kv")
log: dict[str, list[tuple[Any, ...]]] = {}
_choose = ttft_scorer.TTFTScorer.choose


def _logged_choose(self: Any, candidates: Any, prompt_tokens: float, matched: Any,
                   best_match: float, **options: Any) -> Any:
    decision, pick = _choose(self, candidates, prompt_tokens, matched, best_match, **options)
    explanation = decision.explanation
    log.setdefault(self.name, []).append((
        round(self._clock(), 3), candidates[pick].id, explanation["outcome"],
        [round(m) for m in matched], round(prompt_tokens),
        [round(r.queued) for r in self.ledger.replicas],
        {k: v["predicted_cost_ms"] for k, v in explanation["candidates"].items()},
        explanation.get("predicted_ttft_ms")))
    return decision, pick


def main(argv: list[str]) -> None:
    ttft_scorer.TTFTScorer.choose = _logged_choose  # type: ignore[method-assign]
    names = [w.name for w in sweep_workloads(False)]
    workload, seed, load, kv_ratio = argv[0], int(argv[1]), float(argv[2]), float(argv[3])
    cells = run_task(Task(False, names.index(workload), seed, load, (kv_ratio,), ARMS))
    for arm, figures in cells[0]["arms"].items():
        print(arm, "p95", figures["ttft_ms"]["p95"], "hit rate", figures["hit_rate"],
              figures["route_outcomes"], figures["per_replica_requests"])
    with open(argv[4] if len(argv) > 4 else "cell_trace.json", "w") as out:
        json.dump(log, out)
    approximate, precise = log[ARMS[0]], log[ARMS[1]]
    for index, (a, p) in enumerate(zip(approximate, precise, strict=False)):
        if a[1:3] != p[1:3]:
            print("first divergence at decision", index)
            for k in range(max(0, index - 2), min(len(approximate), index + 6)):
                print("  approximate", approximate[k])
                print("  precise    ", precise[k])
            return
    print("no divergence in", min(len(approximate), len(precise)), "decisions")


if __name__ == "__main__":
    main(sys.argv[1:])
