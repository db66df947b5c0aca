"""Sweeps compared seed by seed: for each KVGate arm and seed, the geometric mean over the 60
cells of its TTFT p95 over the best non-KVGate arm's (round robin, least busy, v1), the cells
within 5%, and the three worst.

python benchmarks/results/experiments/per_seed.py LABEL=FILE[,FILE...] [LABEL=FILE...]
(several files under one label: sweeps of different seeds of the same code).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

Key = tuple[str, int, str, float, float]  # arm, seed, workload, KV/WS, load


def ratios(path: str) -> dict[Key, float]:
    document = json.loads(Path(path).read_text())
    roles = document["arm_roles"]
    out: dict[Key, float] = {}
    for cell in document["cells"]:
        arms, regime = cell["arms"], cell["regime"]
        p95 = {name: arm["ttft_ms"]["p95"] for name, arm in arms.items()}
        best = min(p95[name] for name in arms if roles.get(name) != "new")
        for name in arms:
            if roles.get(name) == "new":
                key = (name, cell["seed"], cell["workload"], regime["kv_ratio_target"],
                       regime["load_target"])
                out[key] = p95[name] / best
    return out


def main(specs: list[str]) -> None:
    for spec in specs:
        label, files = spec.split("=")
        data: dict[Key, float] = {}
        for path in files.split(","):
            data.update(ratios(path))
        for arm in ("prefix_kv_aware", "precise_kv"):
            for seed in sorted({key[1] for key in data}):
                cells = {key[2:]: r for key, r in data.items() if key[:2] == (arm, seed)}
                geomean = math.exp(sum(map(math.log, cells.values())) / len(cells))
                within = sum(r <= 1.05 for r in cells.values())
                worst = sorted(cells.items(), key=lambda item: -item[1])[:3]
                print(f"{label:6s} {arm:16s} seed {seed} geomean {geomean:.3f} "
                      f"within 5% {within}/{len(cells)} "
                      f"worst {[(cell, round(r, 2)) for cell, r in worst]}")


if __name__ == "__main__":
    main(sys.argv[1:])
