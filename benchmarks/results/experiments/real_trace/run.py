"""The sweep's arms on a real production trace: Mooncake's FAST'25 conversation trace.

The sweep's ``trace`` workload is synthetic (its shape drawn after the Mooncake trace); this
replays the real one: ``FAST25-release/traces/conversation_trace.jsonl`` of
github.com/kvcache-ai/Mooncake (12,031 requests sampled from one hour of Kimi's online
conversation traffic; hash ids per 512-token block; sha256 b8cbb061...08b9df). The file is not
committed here: pass its path. Its first ``ENTRIES`` requests, their own gaps scaled to each
cell's load, on the sweep's fleet (4 simulated Llama-3.1-8B/H100 replicas), KV per replica
sized to each KV/WS ratio, every arm on the same requests in virtual time, as
``kvgate bench scenario sweep`` does for its workloads (same sizing, SLO and figures). No
KVGate default was chosen on this trace.

python run.py TRACE.jsonl FIRST:ENTRIES OUT.json [KV_RATIOS] [LOADS]
e.g. ``run.py conversation_trace.jsonl 0:1024 out.json 0.25,0.5,1,2,4 0.3,0.6,0.9``: the
entries from line FIRST (a window of the hour; conversations begun before it start cold).
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from kvgate.bench.scenarios.sweep_run import ARMS, PreparedWorkload, run_cell
from kvgate.bench.scenarios.sweep_workloads import LLAMA, SweepWorkload, TraceTimes
from kvgate.bench.workloads import TraceReplayWorkload

SEED = 0


def _spec(path: str) -> SweepWorkload:
    return SweepWorkload("conversation", LLAMA, TraceReplayWorkload(path=path), TraceTimes(),
                         "Mooncake FAST'25 conversation trace (real), first entries")


def _cell(job: tuple[str, float, float]) -> dict[str, Any]:
    path, kv_ratio, load = job
    started_s = time.perf_counter()
    cell = run_cell(PreparedWorkload.build(_spec(path), SEED), kv_ratio, load, ARMS)
    cell["wall_s"] = round(time.perf_counter() - started_s, 1)
    return cell


def main(trace: str, first: int, entries: int, out: str, kv_ratios: list[float], loads: list[float]
         ) -> None:
    lines = Path(trace).read_text().splitlines()[first:first + entries]
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.write("\n".join(lines) + "\n")
        head = f.name
    jobs = [(head, kv, load) for kv, load in itertools.product(kv_ratios, loads)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        cells = list(pool.map(_cell, jobs))
    Path(out).write_text(json.dumps({"trace": Path(trace).name, "first": first, "entries": entries,
                                     "seed": SEED, "cells": cells}, indent=1))
    for cell in cells:
        regime = cell["regime"]
        p95 = {name: arm["ttft_ms"]["p95"] for name, arm in cell["arms"].items()}
        print(f"kv/ws {regime['kv_ratio_target']:<4} load {regime['load_target']:.0%}: "
              + "  ".join(f"{name} {v:8.0f}" for name, v in p95.items())
              + f"  ({cell['wall_s']} s)")


if __name__ == "__main__":
    window = sys.argv[2].split(":")
    main(sys.argv[1], int(window[0]), int(window[1]), sys.argv[3],
         [float(x) for x in (sys.argv[4] if len(sys.argv) > 4 else "0.25,0.5,1,2,4").split(",")],
         [float(x) for x in (sys.argv[5] if len(sys.argv) > 5 else "0.3,0.6,0.9").split(",")])
