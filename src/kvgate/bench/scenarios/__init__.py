"""Benchmark scenarios by name: ``kvgate bench scenario NAME [--quick]``.

A scenario is a module with a ``run(options: ScenarioOptions) -> dict`` function that starts
what it measures, drives load through :mod:`kvgate.bench.api`, and returns a JSON-ready result
document (``--out`` writes it). Register it below; modules are imported only when chosen, so a
scenario's heavy imports (or a half-finished one) never slow or break the others.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class ScenarioOptions:
    """What the command line gives every scenario."""

    #: Tiny sizes: finishes in seconds, for smoke tests and CI; numbers are not meaningful.
    quick: bool = False
    seed: int = 0
    #: An already running gateway to measure, instead of the one the scenario would start.
    target: str | None = None
    #: Where to write PNG plots; None for none.
    plots_dir: Path | None = None
    #: A rich Console for progress and tables; None runs silently.
    console: Any = None
    #: Install and start the peer systems a scenario compares with (``--no-peers``: KVGate's
    #: side only, installing nothing).
    peers: bool = True
    #: How many seeds (``seed``, ``seed + 1``, ...) a scenario that repeats its runs uses.
    seeds: int = 1
    #: ``--trace``: a trace file (Mooncake JSONL) the sweep runs in place of its workloads,
    #: and ``--trace-window``'s (first entry, entries).
    trace: Path | None = None
    trace_window: tuple[int, int] = (0, 1024)
    #: ``--out``: where the command writes the result. Scenarios that keep a result file of
    #: their own under ``benchmarks/results/`` write it only without one (see own_result_path).
    out: Path | None = None

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ValueError("--seeds must be at least 1")

    def own_result_path(self, default: Path) -> Path | None:
        """Where a scenario writes its own result file: ``default`` for a full run without
        ``--out``; None for a quick run (numbers not meaningful) or one given ``--out`` (an
        experiment's run must not overwrite the committed result)."""
        return None if self.quick or self.out is not None else default


class Scenario(Protocol):
    def __call__(self, options: ScenarioOptions) -> dict[str, Any]:
        """Run the scenario; return its result document (JSON-ready)."""
        ...


@dataclass(frozen=True, slots=True)
class ScenarioEntry:
    module: str
    description: str


SCENARIOS: Mapping[str, ScenarioEntry] = MappingProxyType({
    "demo": ScenarioEntry(
        "kvgate.bench.scenarios.demo",
        "start `kvgate run` (built-in demo, mock providers) and load-test it; under a minute",
    ),
    "overhead": ScenarioEntry(
        "kvgate.bench.scenarios.overhead",
        "one hop over a zero-latency upstream: direct, nginx, KVGate, LiteLLM, vllm-router; "
        "c=1 and c=32, streamed and not; about 8 minutes (peers install on first run)",
    ),
    "peers": ScenarioEntry(
        "kvgate.bench.scenarios.peers",
        "routing workloads through vllm-router and sglang-router beside KVGate's strategies "
        "on one `kvgate sim` fleet: TTFT p95, throughput, replica prefix-cache hit rate; "
        "about 25 minutes",
    ),
    "precise": ScenarioEntry(
        "kvgate.bench.scenarios.precise",
        "precise_kv vs prefix_kv_aware on `kvgate sim --kv-events` under memory pressure "
        "(working set 3x KV); about 3 minutes",
    ),
    "images-seeds": ScenarioEntry(
        "kvgate.bench.scenarios.images_seeds",
        "the seed's images on 2 replicas (KV 55% of the images) with 8/24/50 questions per "
        "image over 10 seeds, in virtual time, every routing arm; about 4 minutes",
    ),
    "precise-seeds": ScenarioEntry(
        "kvgate.bench.scenarios.precise_seeds",
        "the precise scenario's policies in virtual time over 10 seeds (fan-out and steady "
        "arrivals), so a difference can be told from seed-to-seed spread; about 2.5 minutes",
    ),
    "routing": ScenarioEntry(
        "kvgate.bench.scenarios.routing",
        "prefix_kv_aware vs round_robin and least_busy on `kvgate sim` fleets and on the "
        "engine model in virtual time (images on 2 replicas, multi-turn chat on 4); ~6 minutes",
    ),
    "sweep": ScenarioEntry(
        "kvgate.bench.scenarios.sweep",
        "KV-aware routing over regimes in virtual time: KV/working set 0.25-4 x load 30-90% "
        "x 4 workloads, every strategy arm; heat maps and targets; ~15-25 minutes on 2 cores",
    ),
    "offload": ScenarioEntry(
        "kvgate.bench.scenarios.offload",
        "one simulated replica under memory pressure (working set 2.5x its KV), CPU offload "
        "tier off vs on; in-process, about 3 minutes",
    ),
    "scale": ScenarioEntry(
        "kvgate.bench.scenarios.scale",
        "the gateway's strategies routing 8, 64 and 256 in-process simulated replicas: hit "
        "rate, TTFT p95, load spread, router microseconds and index memory; a few minutes",
    ),
    "realvllm": ScenarioEntry(
        "kvgate.bench.scenarios.realvllm",
        "KVGate's strategies and vllm-router's cache_aware in front of 2 real vLLM replicas "
        "(CPU build, tiny models; images and shared documents), then KVGate's arms on the "
        "simulator fitted to them (simfit), hit rates side by side; about 4 minutes",
    ),
    "simfit": ScenarioEntry(
        "kvgate.bench.scenarios.simfit",
        "one real vLLM CPU replica of each tiny model probed alone (prefill vs length, decode "
        "vs batch and context, images, KV blocks), fitted to the simulator's cost model (the "
        "cpu-tiny-* profiles); about 3 minutes",
    ),
})


def load_scenario(name: str) -> Scenario:
    entry = SCENARIOS.get(name)
    if entry is None:
        raise ValueError(f"unknown scenario {name!r} (known: {', '.join(sorted(SCENARIOS))})")
    run: Scenario = importlib.import_module(entry.module).run
    return run
