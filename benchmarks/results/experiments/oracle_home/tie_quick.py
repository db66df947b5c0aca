"""One or more arms on the images-seeds case at 8, 24 and 50 questions, chosen seeds, with the
code first on PYTHONPATH (a tree with an experiment's diff applied):

  PYTHONPATH=<tree>/src:. python benchmarks/results/experiments/oracle_home/tie_quick.py \
      FIRST_SEED SEEDS ARM[,ARM...] OUT.json

Prints each arm's mean TTFT p95 and hit rate per question count and the per-seed p95s.
"""

from __future__ import annotations

import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor

from benchmarks.results.experiments.oracle_home import oracle


def main() -> None:
    first, count = int(sys.argv[1]), int(sys.argv[2])
    arms = sys.argv[3].split(",")
    seeds = range(first, first + count)
    jobs = [(q, s, arm) for q in (8, 24, 50) for s in seeds for arm in arms]
    with ProcessPoolExecutor(2) as pool:
        rows = list(pool.map(oracle.run_one, jobs))
    by = {(r["questions"], r["seed"], r["arm"]): r for r in rows}
    for q in (8, 24, 50):
        for arm in arms:
            p95s = [by[(q, s, arm)]["ttft_p95_ms"] for s in seeds]
            hits = [by[(q, s, arm)]["hit_rate"] for s in seeds]
            print(q, arm, round(statistics.mean(p95s), 1), round(statistics.mean(hits), 4),
                  [round(x) for x in p95s])
    with open(sys.argv[4], "w") as handle:
        json.dump(rows, handle)


if __name__ == "__main__":
    main()
