"""Precise vs approximate routing over many seeds, in virtual time (deterministic, ~1 min).

The ``precise`` scenario's full run (``kvgate bench scenario precise``) measures one seed on
the HTTP fleet and in virtual time; this repeats only the virtual-time arms for several seeds,
with the scenario's fan-out workload and with steady Poisson arrivals, so a difference between
the policies can be told apart from the workload's seed-to-seed spread.

Run: kvgate bench scenario precise-seeds --out benchmarks/results/precise_seeds.json (10 seeds;
``--quick``: 2 seeds of the quick setup, seconds).
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from typing import Any

from kvgate.bench.scenarios import ScenarioOptions, precise
from kvgate.bench.scenarios.precise_virtual import run_virtual_arm

COMMAND = "kvgate bench scenario precise-seeds --out benchmarks/results/precise_seeds.json"


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


def run(options: ScenarioOptions) -> dict[str, Any]:
    setup, seeds = (precise.QUICK, range(2)) if options.quick else (precise.FULL, range(10))
    document: dict[str, Any] = {
        "command": COMMAND,
        "seeds": len(seeds),
        "fan_out": run_workload(setup, seeds),
        "steady": run_workload(replace(setup, burst_share=0.0), seeds),
    }
    if options.console is not None:
        for workload in ("fan_out", "steady"):
            for name, row in document[workload]["summary"].items():
                options.console.print(f"{workload:8} {name:20} "
                                      + "  ".join(f"{k} {v}" for k, v in row.items()))
    return document
