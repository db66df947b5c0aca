"""How far one mode's hit rate moves with its tie-break alone, on the precise-seeds workloads.

python benchmarks/results/experiments/precise_tie_noise.py   (about 3 minutes)
Runs each workload seed 0-9 (fan-outs and steady) with approximate mode three times, its
scorer's tie rotation starting at 0, 1 and 2 (the same policy, other luck among equal-cost
replicas), and precise mode once (rotation 0); prints per seed the hit rates and TTFT p95,
and how often approximate beats itself. If a start other than 0 "wins" about half the seeds
by as much as precise does, a 9-of-10 hit-rate bar measures tie luck, not knowledge.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from kvgate.bench.scenarios import precise
from kvgate.bench.scenarios.precise_virtual import run_virtual_arm
from kvgate.routing import ttft_scorer

_init = ttft_scorer.TTFTScorer.__init__
ROTATION = {"start": 0}


def _init_with_rotation(self: Any, *args: Any, **kwargs: Any) -> None:
    _init(self, *args, **kwargs)
    self._rotation = ROTATION["start"]


def run(arm: str, setup: precise.Setup, seed: int, start: int) -> tuple[float, float]:
    ROTATION["start"] = start
    requests = precise.build_requests(setup, seed)
    result = run_virtual_arm(precise.ARMS[arm], requests, profile_name=precise.PROFILE,
                             replicas=setup.replicas, kv_blocks=setup.kv_blocks,
                             time_scale=setup.time_scale)
    return result["prefix_cache_hit_rate"], result["ttft_ms"]["p95"]


def main() -> None:
    ttft_scorer.TTFTScorer.__init__ = _init_with_rotation  # type: ignore[method-assign]
    for name, setup in (("fan-outs", precise.FULL),
                        ("steady", replace(precise.FULL, burst_share=0.0))):
        wins = {1: 0, 2: 0, "precise": 0}
        for seed in range(10):
            base = run("approximate", setup, seed, 0)
            others = {start: run("approximate", setup, seed, start) for start in (1, 2)}
            exact = run("precise", setup, seed, 0)
            for key, figures in (*others.items(), ("precise", exact)):
                wins[key] += figures[0] > base[0]
            print(f"{name} seed {seed}: approximate {base}, rotation 1 {others[1]}, "
                  f"rotation 2 {others[2]}, precise {exact}")
        print(f"{name}: seeds with a higher hit rate than approximate (rotation 0): "
              f"rotation 1 {wins[1]}/10, rotation 2 {wins[2]}/10, precise {wins['precise']}/10")


if __name__ == "__main__":
    main()
