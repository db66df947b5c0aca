"""Compare two sweep_arm.py results cell by cell: the arm's TTFT p95 and hit rate.

python compare_arm.py BEFORE.json AFTER.json
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

Key = tuple[str, int, float, float]


def load(path: str) -> dict[Key, dict[str, Any]]:
    out = {}
    for cell in json.loads(Path(path).read_text()):
        ((_, figures),) = cell["arms"].items()
        regime = cell["regime"]
        out[(cell["workload"], cell["seed"], regime["kv_ratio_target"],
             regime["load_target"])] = figures
    return out


def main(before_path: str, after_path: str) -> None:
    before, after = load(before_path), load(after_path)
    same = 0
    moved = []
    per_workload: dict[str, list[float]] = {}
    for key in sorted(before):
        b, a = before[key], after[key]
        ratio = a["ttft_ms"]["p95"] / b["ttft_ms"]["p95"]
        per_workload.setdefault(key[0], []).append(math.log(ratio))
        if a["ttft_ms"]["p95"] == b["ttft_ms"]["p95"] and a["hit_rate"] == b["hit_rate"]:
            same += 1
            continue
        moved.append(f"{key[0]:14s} seed {key[1]} kv/ws {key[2]:<4} load {key[3]:.0%}: p95 "
                     f"{b['ttft_ms']['p95']:9.1f} -> {a['ttft_ms']['p95']:9.1f} ms "
                     f"({ratio:.3f}x), hit {b['hit_rate']:.4f} -> {a['hit_rate']:.4f}, "
                     f"refused/lost {a['refused']}/{a['lost']}")
    print(f"{len(before)} cells: {same} identical, {len(moved)} moved")
    print("\n".join(moved))
    for workload, logs in per_workload.items():
        print(f"{workload}: geometric mean of p95 after/before "
              f"{math.exp(sum(logs) / len(logs)):.3f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
