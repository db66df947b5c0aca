"""Issue 13's sweep checks per seed: each seed's cells summarized and checked on their own.

python benchmarks/results/experiments/per_seed_checks.py LABEL=FILE[,FILE...] [...]
Prints, per label, arm and seed: the checks met (of those checked) and the geometric mean of
TTFT p95 over the best other arm.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from kvgate.bench.scenarios.sweep_report import comparisons, summarize, target_summary

CHECKS = ("ttft_p95", "goodput", "no_refusals", "vs_round_robin", "vs_best_baseline")


def main(specs: list[str]) -> None:
    for spec in specs:
        label, files = spec.split("=")
        documents = [json.loads(Path(path).read_text()) for path in files.split(",")]
        cells = [cell for document in documents for cell in document["cells"]]
        base = documents[0]
        for seed in sorted({cell["seed"] for cell in cells}):
            mine = [cell for cell in cells if cell["seed"] == seed]
            document = {**base, "cells": mine, "summary": summarize(mine)}
            rows = comparisons(document)
            checks = target_summary(rows)["per_check"]
            for arm in ("prefix_kv_aware", "precise_kv"):
                ratios = [row["ttft_p95_ratio"] for row in rows if row["arm"] == arm]
                geomean = math.exp(sum(map(math.log, ratios)) / len(ratios))
                met = ", ".join(f"{name} {checks[f'{arm}.{name}']['met']}/"
                                f"{checks[f'{arm}.{name}']['checked']}" for name in CHECKS)
                print(f"{label} seed {seed} {arm}: {met}; geomean {geomean:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
