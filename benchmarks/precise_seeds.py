"""Precise vs approximate routing over many seeds, in virtual time (deterministic, ~1 min).

The ``precise`` scenario's full run (``kvgate bench scenario precise``) measures one seed on
the HTTP fleet and in virtual time; this repeats only the virtual-time arms for several seeds,
with the scenario's fan-out workload and with steady Poisson arrivals, so a difference between
the policies can be told apart from the workload's seed-to-seed spread.

Run: python benchmarks/precise_seeds.py [--seeds 10]
Writes benchmarks/results/precise_seeds.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from kvgate.bench.scenarios import precise
from kvgate.bench.scenarios.precise_virtual import run_virtual_arm

OUT = Path(__file__).parent / "results" / "precise_seeds.json"


def run_workload(setup: precise.Setup, seeds: range) -> dict[str, Any]:
    per_seed: dict[str, list[dict[str, Any]]] = {name: [] for name in precise.ARMS}
    for seed in seeds:
        requests = precise.build_requests(setup, seed)
        for name, arm in precise.ARMS.items():
            result = run_virtual_arm(arm, requests, profile_name=precise.PROFILE,
                                     replicas=setup.replicas, kv_blocks=setup.kv_blocks,
                                     time_scale=setup.time_scale)
            per_seed[name].append({"seed": seed, "hit_rate": result["prefix_cache_hit_rate"],
                                   "ttft_p95_ms": result["ttft_ms"]["p95"]})
    summary: dict[str, Any] = {}
    for name, rows in per_seed.items():
        summary[name] = {
            "hit_rate_mean": round(statistics.fmean(r["hit_rate"] for r in rows), 4),
            "ttft_p95_ms_mean": round(statistics.fmean(r["ttft_p95_ms"] for r in rows), 1),
        }
    base = per_seed["approximate"]
    for name in precise.ARMS:
        if name == "approximate":
            continue
        rows = per_seed[name]
        summary[name]["seeds_higher_hit_rate"] = sum(
            r["hit_rate"] > b["hit_rate"] for r, b in zip(rows, base, strict=True))
        summary[name]["seeds_lower_ttft_p95"] = sum(
            r["ttft_p95_ms"] < b["ttft_p95_ms"] for r, b in zip(rows, base, strict=True))
    return {"setup": {"burst_share": setup.burst_share, "burst_size": setup.burst_size},
            "summary": summary, "per_seed": per_seed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    seeds = range(args.seeds)
    document = {
        "seeds": args.seeds,
        "fan_out": run_workload(precise.FULL, seeds),
        "steady": run_workload(replace(precise.FULL, burst_share=0.0), seeds),
    }
    for workload in ("fan_out", "steady"):
        for name, row in document[workload]["summary"].items():
            print(f"{workload:8} {name:20} " + "  ".join(f"{k} {v}" for k, v in row.items()))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
