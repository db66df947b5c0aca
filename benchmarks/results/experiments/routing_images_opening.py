"""The routing scenario's images case in virtual time, routing v2 against the first scorer:
TTFT of the opening burst (the first 50 requests by start) and of the rest.

python benchmarks/results/experiments/routing_images_opening.py   (about 3 s)
"""

from __future__ import annotations

from kvgate.bench.scenarios.routing import image_case
from kvgate.bench.scenarios.routing_virtual import run_virtual

OPENING = 50


def main() -> None:
    case = image_case(False)
    for strategy in ("prefix_kv_aware", "prefix_kv_aware_v1"):
        run = run_virtual(case.workload.build(case.workload_options(strategy, 0)),
                          strategy=strategy, profile_name=case.fleet.profile,
                          replicas=case.fleet.replicas, kv_blocks=case.fleet.kv_blocks,
                          concurrency=case.concurrency, think_s=case.think_s, seed=0)
        records = sorted(run.records, key=lambda r: r.start_s)
        every = sorted(r.ttft_s for r in records if r.ttft_s is not None)
        rest = sorted(r.ttft_s for r in records[OPENING:] if r.ttft_s is not None)
        opening = [r.ttft_s for r in records[:OPENING] if r.ttft_s is not None]
        print(f"{strategy}: p95 {1000 * every[int(0.95 * len(every))]:.0f} ms; opening "
              f"{OPENING} mean {1000 * sum(opening) / len(opening):.0f} ms; the rest p50 "
              f"{1000 * rest[len(rest) // 2]:.0f}, p95 {1000 * rest[int(0.95 * len(rest))]:.0f}"
              f", max {1000 * rest[-1]:.0f} ms; {run.route_outcomes}")


if __name__ == "__main__":
    main()
