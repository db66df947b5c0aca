"""python cmp.py BASE.json [VARIANT.json ...]: issue 13's sweep checks per seed (of the cells
in the files), each variant's KVGate arms put in place of BASE's (the other arms are BASE's,
which the variants do not change); geometric mean of TTFT p95 over the best other arm, per
workload."""

from __future__ import annotations

import copy
import json
import math
import sys
from typing import Any

from kvgate.bench.scenarios.sweep_report import comparisons, summarize, target_summary

CHECKS = ("ttft_p95", "goodput", "vs_round_robin", "vs_best_baseline")
ROLES = {"round_robin": "baseline", "least_busy": "baseline",
         "prefix_kv_aware_v1": "kvgate_v1", "prefix_kv_aware": "new", "precise_kv": "new"}


def key(cell: dict[str, Any]) -> tuple[Any, ...]:
    regime = cell["regime"]
    return cell["workload"], cell["seed"], regime["kv_ratio_target"], regime["load_target"]


def report(label: str, cells: list[dict[str, Any]]) -> None:
    for seed in sorted({c["seed"] for c in cells}):
        mine = [c for c in cells if c["seed"] == seed]
        rows = comparisons({"arm_roles": ROLES, "replicas": 4, "summary": summarize(mine)})
        checks = target_summary(rows)["per_check"]
        for arm in ("prefix_kv_aware", "precise_kv"):
            logs: dict[str, list[float]] = {}
            for row in rows:
                if row["arm"] == arm:
                    logs.setdefault(row["workload"], []).append(math.log(row["ttft_p95_ratio"]))
            every = [v for values in logs.values() for v in values]
            per_workload = " ".join(f"{w[:5]} {math.exp(sum(v) / len(v)):.3f}"
                                    for w, v in logs.items())
            met = " ".join(f"{n} {checks[f'{arm}.{n}']['met']}/{checks[f'{arm}.{n}']['checked']}"
                           for n in CHECKS)
            print(f"{label:22s} seed {seed} {arm[:8]:8s}: {met}; "
                  f"geo {math.exp(sum(every) / len(every)):.3f} [{per_workload}]")


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        base = json.load(f)
    report("base", base)
    by_key = {key(c): c for c in base}
    for path in sys.argv[2:]:
        with open(path) as f:
            variant_cells = json.load(f)
        merged = []
        for cell in variant_cells:
            whole = copy.deepcopy(by_key[key(cell)])
            whole["arms"].update(cell["arms"])
            merged.append(whole)
        report(path.split("/")[-1].removesuffix("_s01.json").removesuffix(".json"), merged)
