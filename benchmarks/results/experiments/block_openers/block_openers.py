"""Where the overhead scenario's c=1 p99 came from: the first request of each interleaved block.

  python benchmarks/results/experiments/block_openers/block_openers.py OUT.json

The scenario's plain c=1 measure as it ran before 2026-12-06 02:30 UTC (blocks of 100, every
request timed: ``block_warmup=0``) over direct, KVGate, nginx, vllm-router and LiteLLM; then
KVGate's samples by their position in the block, where the slowest 1% sit, and the p99 without
each block's first request(s).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import statistics
import sys

from kvgate.bench.scenarios.overhead import BLOCKING_BODY
from kvgate.bench.scenarios.overhead_measure import FULL, client_pinned, latency_c1
from kvgate.bench.scenarios.overhead_targets import Targets, zero_upstream


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.99 * len(ordered))]


def main() -> None:
    sizes = dataclasses.replace(FULL, block_warmup=0)
    with contextlib.ExitStack() as stack:
        direct = zero_upstream(stack)
        targets = Targets(stack, direct.port)
        targets.running.append(direct)
        for name, start in (("kvgate", targets.kvgate), ("nginx", targets.nginx),
                            ("vllm-router", targets.vllm_router), ("litellm", targets.litellm)):
            targets.add(name, start, None)
        with client_pinned():
            c1 = latency_c1(list(targets.running), BLOCKING_BODY, sizes.requests_c1, sizes,
                            stream=False, failed={}, reconnects={})
    ms = [v * 1e3 for v in c1["kvgate"]]
    direct_p99 = p99(c1["direct"]) * 1e3
    by_position = [[v for i, v in enumerate(ms) if i % sizes.block == k]
                   for k in range(sizes.block)]
    slowest = sorted(i % sizes.block for i, v in enumerate(ms) if v >= p99(ms))
    without = {k: p99([v for i, v in enumerate(ms) if i % sizes.block >= k]) for k in (1, 3)}
    document = {
        "command": "python benchmarks/results/experiments/block_openers/block_openers.py "
                   + " ".join(sys.argv[1:]),
        "targets": [t.name for t in targets.running], "unavailable": targets.unavailable,
        "kvgate_p50_ms": round(statistics.median(ms), 4),
        "kvgate_p99_ms": round(p99(ms), 4), "direct_p99_ms": round(direct_p99, 4),
        "kvgate_added_p99_ms": round(p99(ms) - direct_p99, 4),
        "median_ms_by_position_in_block": [round(statistics.median(p), 4)
                                           for p in by_position[:8]],
        "positions_of_slowest_1pct": slowest,
        "kvgate_p99_ms_without_first_k": {str(k): round(v, 4) for k, v in without.items()},
    }
    with open(sys.argv[1], "w") as handle:
        json.dump(document, handle, indent=1)
    print(json.dumps(document, indent=1))


if __name__ == "__main__":
    main()
