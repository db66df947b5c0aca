"""Routing quality with several gateway workers: the routing scenario's fleet runs, prefix_kv_aware
only, behind ``kvgate run --workers N`` with the affinity index per worker or shared.

Each case of :mod:`kvgate.bench.scenarios.routing` (images on 2 replicas, multi-turn chat on 4)
starts its ``kvgate sim`` fleet once; each configuration then gets a fresh gateway, emptied
replica caches and the same requests (same seed). Reported per configuration: routing affinity
(share of repeat requests sent where their prefix was last served) and the replicas' own
prefix-cache hit rate, as the routing scenario defines them.

Run from the repository root (about 5 minutes):
  python -m kvgate.bench.routing_workers [--repeats 2] [--seed 0] [--quick]
Writes benchmarks/results/workers_routing.json. ``--index-cost`` instead times one request's
match + record on each index in-process (a shared system prompt, then per-prompt links) and
writes benchmarks/results/workers_index_cost.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from kvgate.bench.api import host_info, run_benchmark
from kvgate.bench.loadgen import LoadSpec
from kvgate.bench.processes import local_gateway
from kvgate.bench.scenarios.routing import (
    RoutingCase,
    cases,
    figures,
    modelled,
    prefix_settings,
)
from kvgate.bench.sim_fleet import RunningFleet, gateway_config, sim_fleet
from kvgate.routing.affinity import AffinityIndex, MemoryAffinityIndex
from kvgate.routing.affinity_shm import SharedMemoryAffinityIndex
from kvgate.routing.shm_table import AffinityTable

STRATEGY = "prefix_kv_aware"
#: (label, gateway workers, routing.affinity_backend)
CONFIGURATIONS: tuple[tuple[str, int, str], ...] = (
    ("1 worker", 1, "auto"),
    ("2 workers, memory index per worker", 2, "memory"),
    ("2 workers, shared-memory index", 2, "auto"),
)


def run_configuration(case: RoutingCase, fleet: RunningFleet, workers: int, backend: str,
                      seed: int) -> dict[str, Any]:
    scale = case.fleet.time_scale
    prefix = prefix_settings(scale)
    config = gateway_config(fleet, [STRATEGY], prefix)
    config["routing"]["affinity_backend"] = backend
    load = LoadSpec(mode="closed", concurrency=case.concurrency, request_timeout_s=120.0,
                    seed=seed, think_s=case.think_s / scale)
    with tempfile.TemporaryDirectory(prefix="kvgate-workers-") as tmp:
        path = Path(tmp) / "gateway.yaml"
        path.write_text(json.dumps(config))  # JSON is YAML
        with local_gateway(path, extra_args=["--workers", str(workers)]) as gateway:
            fleet.flush()
            before = fleet.counters()
            result = run_benchmark(gateway.url, case.workload.build(
                case.workload_options(STRATEGY, seed)), load, label=f"{case.name}/{workers}")
            engine = [after.delta(earlier)
                      for earlier, after in zip(before, fleet.counters(), strict=True)]
    numbers = figures(modelled(result.records, scale), engine, case=case,
                      duration_s=result.load.wall_s * scale, replica_ids=fleet.deployment_ids,
                      route_outcomes=result.summary["route_outcomes"])
    return {key: numbers[key] for key in (
        "requests", "errors", "error_kinds", "affinity", "replica_hit_rate", "route_outcomes",
        "max_share", "requests_per_s", "ttft_ms")} | {"wall_s": round(result.load.wall_s, 3)}


def summary(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("affinity", "replica_hit_rate"):
        values = [float(r[key]) for r in runs if r[key] is not None]
        out[key] = {"mean": round(statistics.fmean(values), 4), "min": min(values),
                    "max": max(values)} if values else None
    return out


def index_cost_us(index: AffinityIndex, num_links: int, num_deployments: int,
                  samples: int = 400) -> float:
    """Median CPU of one request's ``match`` + ``record``: prompts of ``num_links`` links whose
    first quarter (a system prompt) every deployment holds, the rest each prompt's own."""
    rng = random.Random(1)
    system = [rng.getrandbits(64) for _ in range(num_links // 4)]
    ids = [f"d{i}" for i in range(num_deployments)]
    prompts = [system + [rng.getrandbits(64) for _ in range(num_links - len(system))]
               for _ in range(200)]
    for i, prompt in enumerate(prompts):
        index.record(ids[i % num_deployments], prompt)
    timings_s = []
    for k in range(samples):
        prompt = prompts[k % len(prompts)]
        started_s = time.perf_counter()
        _finish(index.match(prompt, ids))
        index.record(ids[k % num_deployments], prompt)
        timings_s.append(time.perf_counter() - started_s)
    return round(statistics.median(timings_s) * 1e6, 1)


def _finish(coroutine: Coroutine[Any, Any, list[int]]) -> list[int]:
    """Run a coroutine that never suspends (both indexes' ``match``) without an event loop,
    whose per-call start-up would dwarf what is measured."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: list[int] = done.value
        return result
    coroutine.close()
    raise RuntimeError("match suspended: time it on an event loop instead")


def index_costs() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for num_links, num_deployments in ((47, 4), (128, 64), (128, 256)):
        memory = MemoryAffinityIndex(max_blocks_per_deployment=1_000_000 // num_deployments,
                                     ttl_s=300)
        shared = SharedMemoryAffinityIndex(AffinityTable.private(1_000_000, num_deployments),
                                           namespace="m",
                                           ttl_s=300)
        out[f"{num_links}_links_{num_deployments}_deployments"] = {
            "memory_us": index_cost_us(memory, num_links, num_deployments),
            "shared_memory_us": index_cost_us(shared, num_links, num_deployments)}
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (not meaningful)")
    parser.add_argument("--case", action="append", choices=["images", "chat"],
                        help="only these cases (default: both)")
    parser.add_argument("--index-cost", action="store_true",
                        help="only time the indexes in-process (seconds)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    command = "python -m kvgate.bench.routing_workers " + " ".join(
        sys.argv[1:] if argv is None else argv)
    if args.index_cost:
        out = args.out or "benchmarks/results/workers_index_cost.json"
        costs = {"benchmark": "workers_index_cost", "command": command, "host": host_info(),
                 "source": "measured on this machine (no GPU): median of 400 requests",
                 "costs": index_costs()}
        Path(out).write_text(json.dumps(costs, indent=2) + "\n")
        print(json.dumps(costs["costs"]), f"wrote {out}")
        return
    args.out = args.out or "benchmarks/results/workers_routing.json"
    document: dict[str, Any] = {
        "benchmark": "workers_routing",
        "source": "measured on this machine (no GPU): kvgate sim fleets behind kvgate run",
        "command": command,
        "host": host_info(), "seed": args.seed, "strategy": STRATEGY, "cases": {},
    }
    for case in cases(args.quick):
        if args.case and case.name not in args.case:
            continue
        section: dict[str, Any] = {"title": case.title, "configurations": {}}
        with sim_fleet(case.fleet) as fleet:
            for label, workers, backend in CONFIGURATIONS:
                runs = []
                for repeat in range(args.repeats):
                    runs.append(run_configuration(case, fleet, workers, backend, args.seed))
                    print(f"{case.name} / {label} / run {repeat + 1}: affinity "
                          f"{runs[-1]['affinity']}, replica hit rate "
                          f"{runs[-1]['replica_hit_rate']}, errors {runs[-1]['errors']}",
                          flush=True)
                section["configurations"][label] = {
                    "workers": workers, "routing.affinity_backend": backend,
                    "summary": summary(runs), "runs": runs}
        document["cases"][case.name] = section
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
