"""Sweep cells on tuning seeds with a routing variant patched in (see variant.py).

python run.py VARIANT SEEDS ARMS OUT, e.g. ``python run.py tie0 0,1 prefix_kv_aware,precise_kv
tie0_s01.json`` (~5 min on 2 cores for two arms; ~9 min for all five): every workload, load
and KV ratio of the sweep (``kvgate.bench.scenarios.sweep``'s tasks), virtual time, the
variant applied in each worker process. OUT is a list of the sweep's cells.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
KV_RATIOS = (0.25, 0.5, 1.0, 2.0, 4.0)
LOADS = (0.3, 0.6, 0.9)


def init(variant_name: str) -> None:
    os.environ["KVG_VARIANT"] = variant_name
    sys.path.insert(0, HERE)
    import variant  # noqa: F401  (patches the scorer on import)


def work(args: tuple[int, int, float, tuple[str, ...]]) -> list[dict[str, Any]]:
    from kvgate.bench.scenarios.sweep import Task, run_task

    workload, seed, load, arms = args
    return run_task(Task(False, workload, seed, load, KV_RATIOS, arms))


if __name__ == "__main__":
    name, seeds_arg, arms_arg, out = sys.argv[1:5]
    seeds = [int(s) for s in seeds_arg.split(",")]
    arms = tuple(arms_arg.split(","))
    tasks = [(w, s, load, arms) for s in seeds for w in range(4) for load in LOADS]
    started = time.time()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=context, initializer=init,
                             initargs=(name,)) as pool:
        cells = [cell for done in pool.map(work, tasks) for cell in done]
    with open(out, "w") as f:
        json.dump(cells, f)
    print(name, "done", len(cells), "cells", round(time.time() - started), "s")
