"""Diagnostic: the workers benchmark's images case (kvgate.bench.routing_workers), RUNS runs with
WORKERS workers on the shared-memory index; prints each run's replica hit rate and its
non-hit decisions (time, image, replica), and writes them to diag_workers_WORKERS.json. With
the decision log (sitecustomize.py beside this file):

  KVGATE_DIAG_LOG=trace.jsonl PYTHONPATH=benchmarks/results/experiments/workers_trace \\
      python benchmarks/results/experiments/workers_trace/diag_workers.py RUNS WORKERS
  python benchmarks/results/experiments/workers_trace/show.py trace.jsonl
"""

from __future__ import annotations

import json
import sys
from typing import Any

import kvgate.bench.routing_workers as routing_workers
from kvgate.bench.scenarios.routing import cases
from kvgate.bench.sim_fleet import sim_fleet

captured: list[Any] = []
_run_benchmark = routing_workers.run_benchmark


def _spy(*args: Any, **kwargs: Any) -> Any:
    result = _run_benchmark(*args, **kwargs)
    captured.append(result.records)
    return result


def main() -> None:
    routing_workers.run_benchmark = _spy
    case = next(c for c in cases(False) if c.name == "images")
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    out = []
    with sim_fleet(case.fleet) as fleet:
        for run in range(runs):
            numbers = routing_workers.run_configuration(case, fleet, workers, "auto", 0)
            records = sorted(captured[-1], key=lambda r: r.start_s)
            cold = [(round(r.start_s, 3), r.tag, r.deployment, r.route_outcome,
                     None if r.ttft_s is None else round(r.ttft_s, 3))
                    for r in records if r.route_outcome != "hit"]
            print(run, numbers["replica_hit_rate"], numbers["route_outcomes"], flush=True)
            for decision in cold:
                print("   ", decision)
            out.append({"summary": numbers, "cold": cold})
    with open(f"diag_workers_{workers}.json", "w") as file:
        json.dump(out, file, indent=1)


if __name__ == "__main__":
    main()
