"""How many of a ``tie_band_calibration/run.py`` output's arm-cells equal the committed sweep's
(``benchmarks/results/sweep.json``; ``wall_s`` left out). Run from the repository root:
python benchmarks/results/experiments/decision_arrays/same_as_sweep.py OUT.json
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _strip(arm: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in arm.items() if k != "wall_s"}


def main(path: str) -> None:
    with open(path) as f:
        new = json.load(f)
    with open("benchmarks/results/sweep.json") as f:
        cells = json.load(f)["cells"]
    old = {(c["workload"], c["seed"], json.dumps(c["regime"], sort_keys=True)): c
           for c in cells}
    same = different = 0
    for cell in new:
        committed = old[(cell["workload"], cell["seed"],
                         json.dumps(cell["regime"], sort_keys=True))]
        for arm, figures in cell["arms"].items():
            if _strip(committed["arms"][arm]) == _strip(figures):
                same += 1
            else:
                different += 1
    print(f"arm-cells identical to benchmarks/results/sweep.json: {same}, different: {different}")


if __name__ == "__main__":
    main(sys.argv[1])
