"""Long prompts, 64 deployments: round_robin and prefix_kv_aware from two source trees, side
by side in one run (the overhead scenario's long-prompt case, its client and sizes).

  python benchmarks/results/experiments/write_behind/ab.py BEFORE_SRC NEW_SRC OUT.json

Each tree is a ``src`` directory with its extensions built in place; each arm's gateway runs
with that tree first on PYTHONPATH. Arms interleave at c=1 (blocks of 100) and c=32 (wrk).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
from typing import Any

from kvgate.bench.scenarios.overhead_long import DEPLOYMENTS, long_body
from kvgate.bench.scenarios.overhead_measure import (
    FULL,
    client_pinned,
    latency_c1,
    throughput_c32,
)
from kvgate.bench.scenarios.overhead_targets import Targets, zero_upstream


def main() -> None:
    before_src, new_src, out = sys.argv[1:4]
    load_before = os.getloadavg()[0]
    with contextlib.ExitStack() as stack:
        direct = zero_upstream(stack)
        targets = Targets(stack, direct.port)
        targets.running.append(direct)
        for label, src in (("before", before_src), ("new", new_src)):
            os.environ["PYTHONPATH"] = src
            for strategy in ("round_robin", "prefix_kv_aware"):
                targets.add(f"{label}-{strategy}", targets.kvgate_routed(strategy, DEPLOYMENTS),
                            None)
        running = list(targets.running)
        failed: dict[str, str] = {}
        body = long_body()
        with client_pinned():
            c1 = latency_c1(running, body, FULL.requests_c1, FULL, stream=False, failed=failed,
                            reconnects={})
            c32 = throughput_c32(running, body, FULL, use_wrk=True, failed=failed)
    direct = statistics.median(c1["direct"])
    rows: dict[str, Any] = {}
    for name, samples in c1.items():
        ordered = sorted(samples)
        rounds = c32.get(name, [])
        rows[name] = {
            "p50_ms": round(statistics.median(samples) * 1e3, 4),
            "p99_ms": round(ordered[int(0.99 * len(ordered))] * 1e3, 4),
            "added_p50_us": round((statistics.median(samples) - direct) * 1e6, 1),
            "c32_rps": statistics.median(r["requests_per_s"] for r in rounds) if rounds else None,
            "cpu_us_per_request": (statistics.median(r["cpu_us_per_request"] for r in rounds)
                                   if rounds else None),
            "non_2xx": sum(r.get("non_2xx", 0) or 0 for r in rounds),
            "socket_errors": sum(r.get("socket_errors", 0) or 0 for r in rounds),
        }
    for label in ("before", "new"):
        rr, kv = rows[f"{label}-round_robin"], rows[f"{label}-prefix_kv_aware"]
        rows[f"{label}: prefix minus round_robin"] = {
            "added_p50_us": round(kv["added_p50_us"] - rr["added_p50_us"], 1),
            "cpu_ratio": round(kv["cpu_us_per_request"] / rr["cpu_us_per_request"], 3)}
    document = {"load_average_1m_before": load_before, "failed": failed, "rows": rows,
                "command": "python benchmarks/results/experiments/write_behind/ab.py "
                           + " ".join(sys.argv[1:])}
    with open(out, "w") as handle:
        json.dump(document, handle, indent=1)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
