"""GC cost per request in `kvgate run` under closed-loop load, round robin and prefix_kv_aware
side by side, at one setting of `server.gc_thresholds`.

The overhead scenario's long-prompt setup (KVGate over N deployments of the zero upstream, wrk
posting a new user turn per request), sized by the environment: DEPS deployments (64), SYS and
USR characters of system prompt and user turn (28,000 / 4,000), CONN connections (32), DUR
seconds per round (4), ROUNDS rounds (2), THRESHOLDS "a,b,c" (the server's default if unset).
The gateways load `site/sitecustomize.py`, which times every collection.

Run from the repository root:
  THRESHOLDS=700,10,10 DEPS=16 SYS=8000 USR=2000 \
    python benchmarks/results/experiments/gc_thresholds/gc_load.py

Prints one JSON line: per arm and round, [CPU us/request, [GC us/request young, middle, full,
passes young, middle, full, longest young-or-middle pass ms], req/s].
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from kvgate.bench.rawhttp import cpu_s
from kvgate.bench.scenarios import overhead_long as ol
from kvgate.bench.scenarios import overhead_measure as om
from kvgate.bench.scenarios import overhead_targets as ot

HERE = Path(__file__).resolve().parent
ol.DEPLOYMENTS = int(os.environ.get("DEPS", 64))
ol.SYSTEM_CHARS = int(os.environ.get("SYS", 28_000))
ol.USER_CHARS = int(os.environ.get("USR", 4_000))
THRESHOLDS = os.environ.get("THRESHOLDS")
_config = ot.kvgate_config


def config(upstream_port: int, **kwargs: Any) -> dict[str, Any]:
    out = _config(upstream_port, **kwargs)
    if THRESHOLDS:
        out["server"]["gc_thresholds"] = [int(x) for x in THRESHOLDS.split(",")]
    return out


def stats(stats_dir: str, pid: int) -> dict[str, Any]:
    time.sleep(0.6)  # the next dump
    return json.loads(Path(stats_dir, f"gc_{pid}.json").read_text())  # type: ignore[no-any-return]


def main() -> None:
    ot.kvgate_config = config
    stats_dir = tempfile.mkdtemp(prefix="gc-load-")
    os.environ["GC_STATS_DIR"] = stats_dir
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(HERE / "site"), *filter(None, [os.environ.get("PYTHONPATH")])])
    sizes = om.Sizes(requests_c1=0, stream_requests_c1=0, block=1, warmup=0, rounds_c32=1,
                     duration_c32_s=float(os.environ.get("DUR", 4)),
                     connections=int(os.environ.get("CONN", 32)))
    result: dict[str, list[Any]] = {}
    with contextlib.ExitStack() as stack:
        upstream = ot.zero_upstream(stack)
        targets = ot.Targets(stack, upstream.port)
        for strategy in ol.STRATEGIES:
            targets.add(f"kvgate-{strategy}", targets.kvgate_routed(strategy, ol.DEPLOYMENTS),
                        None)
        body = ol.long_body()
        for _ in range(int(os.environ.get("ROUNDS", 2))):
            for target in targets.running:
                before, cpu_before_s = stats(stats_dir, target.pid), cpu_s(target.pid)
                sample = om._closed_loop(target, body, sizes, use_wrk=True)
                cpu_after_s, after = cpu_s(target.pid), stats(stats_dir, target.pid)
                n = sample.requests
                gc_row = [round((after["totals"][g][1] - before["totals"][g][1]) / n * 1e6, 2)
                          for g in "012"]
                gc_row += [after["totals"][g][0] - before["totals"][g][0] for g in "012"]
                gc_row.append(round(after["longest_s"] * 1e3, 2))
                result.setdefault(target.name, []).append(
                    [round((cpu_after_s - cpu_before_s) / n * 1e6, 1), gc_row,
                     round(n / sizes.duration_c32_s)])
                result.setdefault("thresholds", [after["thresholds"]])
    print(THRESHOLDS or "default", json.dumps(result))


if __name__ == "__main__":
    main()
