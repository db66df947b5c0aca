"""``sweep``: KV-aware routing over regimes, in virtual time (issue 13's evidence).

A grid of cells: per-replica KV / working set in :data:`KV_RATIOS` x offered load in
:data:`LOADS` (fractions of the fleet's no-cache capacity) x the four workloads of
:mod:`~kvgate.bench.scenarios.sweep_workloads` (multimodal, multi-turn chat with think time,
shared-prefix fan-outs, a synthetic Mooncake-style trace) x seeds. In every cell each arm of
:data:`~kvgate.bench.scenarios.sweep_run.ARMS` (round_robin, least_busy, prefix_kv_aware_v1,
and the new scorer as prefix_kv_aware and precise_kv) routes the same requests onto a fresh
fleet of 4 simulated replicas (:mod:`kvgate.bench.virtual_fleet`); an arm whose strategy the
gateway's registry does not have is skipped, with a note. How a cell is sized (working set,
capacity, SLO): :mod:`~kvgate.bench.scenarios.sweep_sizing`; the figures per arm and the
comparisons and targets: :mod:`~kvgate.bench.scenarios.sweep_run`,
:mod:`~kvgate.bench.scenarios.sweep_report`.

Run: ``kvgate bench scenario sweep --out benchmarks/results/sweep.json --plots docs/img``
(all cores; ``--seeds N`` repeats every cell with seeds ``seed .. seed+N-1``; ``--quick``: 2 KV
ratios x 1 load on tiny workloads, under a minute, numbers not meaningful). Every figure is
the simulator's (engine model, simulated seconds), none a GPU's.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import kvgate.routing
from kvgate import __version__
from kvgate.bench.api import RESULT_FORMAT, host_info
from kvgate.bench.scenarios import ScenarioOptions
from kvgate.bench.scenarios.sweep_report import (
    comparisons,
    print_tables,
    summarize,
    target_summary,
    write_heat_maps,
)
from kvgate.bench.scenarios.sweep_run import ARMS, REPLICAS, Arm, PreparedWorkload, run_cell
from kvgate.bench.scenarios.sweep_sizing import SLO_FACTOR
from kvgate.bench.scenarios.sweep_workloads import TraceFile, sweep_workloads
from kvgate.bench.trace import load_trace
from kvgate.bench.workloads import parameters

COMMAND = "kvgate bench scenario sweep --out benchmarks/results/sweep.json --plots docs/img"

KV_RATIOS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
LOADS: tuple[float, ...] = (0.3, 0.6, 0.9)
QUICK_KV_RATIOS: tuple[float, ...] = (0.5, 2.0)
QUICK_LOADS: tuple[float, ...] = (0.6,)

DEFINITIONS = {
    "working_set": "mean over arrivals of the reusable KV blocks live at that arrival: "
                   "distinct full blocks in 2+ prompts, from first to last use",
    "kv_ratio": "usable KV blocks per replica / working set",
    "load": "offered requests/s / the fleet's no-cache capacity (cost model's marginal cost "
            "of every chunk in a full step; the front end as a second bottleneck); chat: "
            "users/s x turns per user (steady state)",
    "slo": f"TTFT <= {SLO_FACTOR:g} x the workload's mean TTFT on an idle replica with "
           "nothing cached",
    "goodput_per_s": "requests meeting the SLO / (first arrival to last finish)",
    "hit_rate": "engine prefix-cache hits / queries (tokens)",
    "busy_share": "time the engines spent in steps / (replicas x duration)",
    "refused": "requests the gateway or a replica refused, by kind; lost: neither finished "
               "nor refused (both must be 0)",
}


def command_line(options: ScenarioOptions) -> str:
    """The command that repeats this run (its seeds and size; output paths as committed)."""
    # A trace of one's own is not the committed sweep: its result goes where --out said.
    outputs = (COMMAND.removeprefix("kvgate bench scenario sweep ") if options.trace is None
               else f"--trace {options.trace} --trace-window {options.trace_window[0]}:"
                    f"{options.trace_window[1]} --out OUT.json")
    return " ".join(["kvgate bench scenario sweep", *(["--quick"] if options.quick else []),
                     f"--seed {options.seed}",
                     *([f"--seeds {options.seeds}"] if options.seeds > 1 else []), outputs])


def _trace_file(options: ScenarioOptions) -> TraceFile | None:
    """``--trace``'s window, read once here so that a bad file fails before any work."""
    if options.trace is None:
        return None
    first, count = options.trace_window
    trace = TraceFile(str(options.trace), first, count)
    entries = len(load_trace(options.trace))
    if first >= entries:
        raise ValueError(f"--trace-window starts at entry {first}; {options.trace} has "
                         f"{entries} entries")
    return trace


@dataclass(frozen=True, slots=True)
class Task:
    """One worker's share: every KV ratio of one (workload, seed, load)."""

    quick: bool
    workload_index: int
    seed: int
    load: float
    kv_ratios: tuple[float, ...]
    arms: tuple[str, ...]
    trace: TraceFile | None = None


def run_task(task: Task) -> list[dict[str, Any]]:
    spec = sweep_workloads(task.quick, task.trace)[task.workload_index]
    prepared = PreparedWorkload.build(spec, task.seed)
    arms = [arm for arm in ARMS if arm.name in task.arms]
    return [run_cell(prepared, kv_ratio, task.load, arms) for kv_ratio in task.kv_ratios]


def available_arms() -> tuple[list[Arm], list[str]]:
    """The arms whose strategy is registered, and the names of those that are not."""
    registered = kvgate.routing.STRATEGIES
    present = [arm for arm in ARMS if arm.name in registered]
    return present, [arm.name for arm in ARMS if arm.name not in registered]


def run_tasks(tasks: list[Task], jobs: int, console: Any) -> list[dict[str, Any]]:
    """Every task, on ``jobs`` processes (in this one when 1); cells in task order."""
    names = ([spec.name for spec in sweep_workloads(tasks[0].quick, tasks[0].trace)]
             if tasks else [])

    def progress(task: Task, cells: list[dict[str, Any]], started_s: float) -> None:
        if console is not None:
            console.print(f"  {names[task.workload_index]} load {task.load:.0%} seed "
                          f"{task.seed}: {len(cells)} cells, "
                          f"{time.perf_counter() - started_s:.0f} s")

    started_s = time.perf_counter()
    done: list[list[dict[str, Any]]] = []
    if jobs <= 1:
        for task in tasks:
            done.append(run_task(task))
            progress(task, done[-1], started_s)
        return [cell for cells in done for cell in cells]
    # NOTE: spawned, not forked: a worker starts clean of whatever the parent has running.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [pool.submit(run_task, task) for task in tasks]
        for task, future in zip(tasks, futures, strict=True):
            done.append(future.result())
            progress(task, done[-1], started_s)
    return [cell for cells in done for cell in cells]


def routing_sources_digest() -> str:
    """sha256 over the routing package's sources and the virtual fleet: results whose
    digests match came from the same strategies (the scorer under test changes often)."""
    from kvgate.bench import virtual_fleet

    package = Path(kvgate.routing.__file__).parent
    digest = hashlib.sha256()
    for path in [*sorted(package.rglob("*.py")), Path(virtual_fleet.__file__)]:
        digest.update(str(path.relative_to(package.parent)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _schedule(schedule: object) -> dict[str, Any]:
    fields = asdict(schedule) if is_dataclass(schedule) and not isinstance(schedule, type) else {}
    return {"kind": type(schedule).__name__, **fields}


def run(options: ScenarioOptions) -> dict[str, Any]:
    console = options.console
    started_s = time.perf_counter()
    arms, skipped = available_arms()
    if skipped and console is not None:
        console.print(f"[yellow]note[/]: not in the gateway's registry, skipped: "
                      f"{', '.join(skipped)}")
    trace = _trace_file(options)
    specs = sweep_workloads(options.quick, trace)
    kv_ratios, loads = (QUICK_KV_RATIOS, QUICK_LOADS) if options.quick else (KV_RATIOS, LOADS)
    seeds = range(options.seed, options.seed + max(1, options.seeds))
    tasks = [Task(options.quick, index, seed, load, kv_ratios, tuple(a.name for a in arms),
                  trace)
             for index in range(len(specs)) for seed in seeds for load in loads]
    jobs = min(len(tasks), os.cpu_count() or 1)
    if console is not None:
        console.print(f"[bold]sweep[/]: {len(specs)} workloads x {len(kv_ratios)} KV ratios x "
                      f"{len(loads)} loads x {len(seeds)} seed(s), {len(arms)} arms, "
                      f"{jobs} process(es)")
    cells = run_tasks(tasks, jobs, console)
    document: dict[str, Any] = {
        "kvgate_bench": {"format": RESULT_FORMAT, "version": __version__},
        "scenario": "sweep",
        "quick": options.quick,
        "host": host_info(),
        "source": "simulator (in-process engines, virtual clock) + the gateway's routing code",
        "command": command_line(options),
        "routing_sources_sha256": routing_sources_digest(),
        "replicas": REPLICAS,
        "grid": {"kv_ratios": list(kv_ratios), "loads": list(loads), "seeds": list(seeds)},
        "arms": [arm.name for arm in arms],
        "arm_roles": {arm.name: arm.role for arm in arms},
        "arms_skipped": skipped,
        "workloads": {spec.name: {"profile": spec.profile, "parameters": parameters(
            spec.workload), "arrivals": _schedule(spec.schedule), "note": spec.note}
            for spec in specs},
        "definitions": DEFINITIONS,
        "cells": cells,
    }
    document["summary"] = summarize(cells)
    document["comparisons"] = comparisons(document)
    document["targets"] = target_summary(document["comparisons"])
    if options.plots_dir is not None:
        paths = write_heat_maps(document, options.plots_dir)
        if console is not None:
            console.print("plots: " + ", ".join(str(p) for p in paths))
    document["wall_s"] = round(time.perf_counter() - started_s, 1)
    if console is not None:
        print_tables(document, console)
        console.print(f"wall time {document['wall_s']:.0f} s")
    return document
