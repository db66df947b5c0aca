"""Tables and the sweep's checks for run.py's results, one window of the trace at a time.

python report.py OUT.json [OUT.json ...]
Per cell: each arm's TTFT p95 (ms) and replica hit rate, the new scorer's p95 over the best
other arm's (the sweep's comparison), refusals and losses; then the sweep's checks per arm.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kvgate.bench.scenarios.sweep_report import comparisons, summarize, target_summary
from kvgate.bench.scenarios.sweep_run import ARMS, REPLICAS

SHORT = {"round_robin": "rr", "least_busy": "lb", "prefix_kv_aware_v1": "v1",
         "prefix_kv_aware": "new", "precise_kv": "precise"}


def _figure(arm: dict[str, float]) -> str:
    return f"{arm['ttft_p95_ms']:,.0f} ({arm['hit_rate']:.2f})"


def main(paths: list[str]) -> None:
    for path in paths:
        result = json.loads(Path(path).read_text())
        document = {"cells": result["cells"], "replicas": REPLICAS,
                    "arm_roles": {arm.name: arm.role for arm in ARMS}}
        document["summary"] = summarize(document["cells"])
        rows = comparisons(document)
        print(f"## {result['trace']} entries {result.get('first', 0)}-"
              f"{result.get('first', 0) + result['entries'] - 1}")
        print("| KV/WS | load | " + " | ".join(f"{SHORT[a.name]} p95 ms (hit)" for a in ARMS)
              + " | new / precise over best other (which) |")
        print("|---" * (len(ARMS) + 3) + "|")
        by_cell: dict[tuple[float, float], dict[str, float]] = {}
        for row in rows:
            by_cell.setdefault((row["kv_ratio"], row["load"]), {})[row["arm"]] = row
        for summary in document["summary"]:
            arms = summary["arms"]
            cell = by_cell[(summary["kv_ratio"], summary["load"])]
            errors = sum(a["refused"] + a["lost"] for a in arms.values())
            ratios = " / ".join(f"{cell[name]['ttft_p95_ratio']:.2f}"
                                for name in ("prefix_kv_aware", "precise_kv"))
            best = SHORT[cell["prefix_kv_aware"]["best_ttft_arm"]]
            print(f"| {summary['kv_ratio']:g} | {summary['load']:.0%} | "
                  + " | ".join(_figure(arms[a.name]) for a in ARMS)
                  + f" | {ratios} ({best}){'  ERRORS ' + str(errors) if errors else ''} |")
        targets = target_summary(rows)
        print("checks met / checked:", {k: f"{v['met']}/{v['checked']}"
                                        for k, v in targets["per_check"].items()})
        for failed in targets["failed"]:
            print("  not met:", failed)
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
