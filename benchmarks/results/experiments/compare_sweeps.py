"""Compare sweep results cell by cell: TTFT p95 over the best other arm per KVGate arm.

python benchmarks/results/experiments/compare_sweeps.py BEFORE.json [AFTER.json]
Prints, per arm and file: the geometric mean of the 60 cells' ratios, the cells within 5%,
the goodput / 1.8x round robin / 1.3x best baseline checks met, the four worst cells; with
two files, the approximate arm's cells whose ratio moved by more than 10%.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

Cell = tuple[str, float, float, str]


def load(path: str) -> dict[Cell, dict[str, Any]]:
    document = json.loads(Path(path).read_text())
    return {(c["workload"], c["kv_ratio"], c["load"], c["arm"]): c
            for c in document["comparisons"]}


def checks_met(cells: dict[Cell, dict[str, Any]], arm: str, check: str) -> int:
    return sum(bool(c["checks"].get(check)) for k, c in cells.items() if k[3] == arm)


def main(paths: list[str]) -> None:
    loaded = [load(p) for p in paths]
    for arm in ("prefix_kv_aware", "precise_kv"):
        for path, cells in zip(paths, loaded, strict=True):
            ratios = {k[:3]: c["ttft_p95_ratio"] for k, c in cells.items() if k[3] == arm}
            geomean = math.exp(sum(map(math.log, ratios.values())) / len(ratios))
            within = sum(r <= 1.05 for r in ratios.values())
            worst = sorted(ratios.items(), key=lambda item: -item[1])[:4]
            print(f"{arm:16s} {path.split('/')[-1]:50s} geomean {geomean:.3f} "
                  f"within 5% {within}/{len(ratios)} "
                  f"goodput {checks_met(cells, arm, 'goodput')} "
                  f"1.8x rr {checks_met(cells, arm, 'vs_round_robin')} "
                  f"1.3x best {checks_met(cells, arm, 'vs_best_baseline')} "
                  f"worst {[(cell, round(r, 2)) for cell, r in worst]}")
    if len(loaded) == 2:
        before, after = loaded
        print("approximate-mode cells whose ratio moved by more than 10%:")
        for key, cell in before.items():
            if key[3] != "prefix_kv_aware" or key not in after:
                continue
            old, new = cell["ttft_p95_ratio"], after[key]["ttft_p95_ratio"]
            if abs(math.log(new / old)) > math.log(1.1):
                print(f"  {key[:3]}: {old:.3f} -> {new:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
