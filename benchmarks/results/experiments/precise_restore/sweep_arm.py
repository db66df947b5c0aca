"""One arm of the sweep over every cell of the given seeds (virtual time; the other arms are
not rerun, for a change that touches one arm). ~5 min for precise_kv over 4 seeds, 2 cores.

PYTHONPATH=<tree>/src python sweep_arm.py ARM SEEDS OUT.json   (SEEDS: e.g. 3,4,5,6)
"""

from __future__ import annotations

import json
import sys

from kvgate.bench.scenarios.sweep import KV_RATIOS, LOADS, Task, run_tasks
from kvgate.bench.scenarios.sweep_workloads import sweep_workloads


def main(arm: str, seeds: list[int], out: str) -> None:
    tasks = [Task(False, index, seed, load, KV_RATIOS, (arm,))
             for index in range(len(sweep_workloads(False))) for seed in seeds for load in LOADS]
    cells = run_tasks(tasks, 2, None)
    with open(out, "w") as f:
        json.dump(cells, f)
    print("cells", len(cells))


if __name__ == "__main__":
    main(sys.argv[1], [int(s) for s in sys.argv[2].split(",")], sys.argv[3])
