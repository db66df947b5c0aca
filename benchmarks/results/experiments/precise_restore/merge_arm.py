"""A sweep document with one arm's cells replaced by a sweep_arm.py run (the other arms
unchanged: the change under test touches that arm only), comparisons and targets recomputed.

python merge_arm.py SWEEP.json ARM_CELLS.json OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from kvgate.bench.scenarios.sweep_report import comparisons, summarize, target_summary


def _key(cell: dict[str, Any]) -> tuple[str, int, float, float]:
    regime = cell["regime"]
    return cell["workload"], cell["seed"], regime["kv_ratio_target"], regime["load_target"]


def main(sweep_path: str, arm_path: str, out: str) -> None:
    document = json.loads(Path(sweep_path).read_text())
    replaced = {_key(cell): cell["arms"] for cell in json.loads(Path(arm_path).read_text())}
    for cell in document["cells"]:
        cell["arms"].update(replaced[_key(cell)])
    document["command"] += f" (one arm's cells from {Path(arm_path).name})"
    document["summary"] = summarize(document["cells"])
    document["comparisons"] = comparisons(document)
    document["targets"] = target_summary(document["comparisons"])
    Path(out).write_text(json.dumps(document, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:4])
