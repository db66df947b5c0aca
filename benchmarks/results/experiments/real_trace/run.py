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

import json
import sys
from pathlib import Path

from kvgate.bench.scenarios.sweep import Task, run_tasks
from kvgate.bench.scenarios.sweep_run import ARMS
from kvgate.bench.scenarios.sweep_workloads import TraceFile

SEED = 0


def main(trace: str, first: int, entries: int, out: str, kv_ratios: list[float], loads: list[float]
         ) -> None:
    # The sweep's own tasks on the window (what `kvgate bench scenario sweep --trace` runs),
    # on a grid of one's choosing.
    window = TraceFile(trace, first, entries)
    tasks = [Task(False, 0, SEED, load, tuple(kv_ratios), tuple(arm.name for arm in ARMS), window)
             for load in loads]
    cells = run_tasks(tasks, 2, None)
    Path(out).write_text(json.dumps({"trace": Path(trace).name, "first": first, "entries": entries,
                                     "seed": SEED, "cells": cells}, indent=1))
    for cell in cells:
        regime = cell["regime"]
        p95 = {name: arm["ttft_ms"]["p95"] for name, arm in cell["arms"].items()}
        print(f"kv/ws {regime['kv_ratio_target']:<4} load {regime['load_target']:.0%}: "
              + "  ".join(f"{name} {v:8.0f}" for name, v in p95.items()))


if __name__ == "__main__":
    window = sys.argv[2].split(":")
    main(sys.argv[1], int(window[0]), int(window[1]), sys.argv[3],
         [float(x) for x in (sys.argv[4] if len(sys.argv) > 4 else "0.25,0.5,1,2,4").split(",")],
         [float(x) for x in (sys.argv[5] if len(sys.argv) > 5 else "0.3,0.6,0.9").split(",")])
