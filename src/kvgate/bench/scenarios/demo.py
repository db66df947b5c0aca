"""``demo``: what bare ``kvgate bench`` does.

Starts ``kvgate run`` with its built-in demo config (model ``demo`` on two mock deployments,
20 ms TTFT, 400 tokens/s) on a free loopback port, so it never clashes with a gateway already on
:8080, and drives the multi-round chat workload at it in closed loop, streaming. With
``--target`` it measures that gateway instead. Takes about 15 s (``--quick``: about 3 s).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from kvgate.bench.api import run_benchmark
from kvgate.bench.loadgen import LoadSpec
from kvgate.bench.processes import local_gateway
from kvgate.bench.scenarios import ScenarioOptions
from kvgate.bench.workloads import MultiRoundChatWorkload, WorkloadOptions, parameters

CONCURRENCY = 32
QUICK_CONCURRENCY = 8
NUM_REQUESTS = 2400
QUICK_NUM_REQUESTS = 80


@contextlib.contextmanager
def _target(options: ScenarioOptions) -> Iterator[str]:
    if options.target is not None:
        yield options.target.rstrip("/")
        return
    with local_gateway() as gateway:
        yield gateway.url


def run(options: ScenarioOptions) -> dict[str, Any]:
    workload = MultiRoundChatWorkload(num_users=64, num_rounds=8, user_history_tokens=500)
    workload_options = WorkloadOptions(
        model="demo", seed=options.seed, stream=True,
        num_requests=QUICK_NUM_REQUESTS if options.quick else NUM_REQUESTS,
    )
    requests = workload.build(workload_options)
    load = LoadSpec(mode="closed", concurrency=QUICK_CONCURRENCY if options.quick else CONCURRENCY,
                    request_timeout_s=30.0)
    meta = {"scenario": "demo", "quick": options.quick,
            "workload": {"name": workload.name, "parameters": parameters(workload),
                         "options": parameters(workload_options)}}
    console = options.console
    with _target(options) as target:
        if console is not None:
            console.print(f"[bold]kvgate bench demo[/]: {len(requests)} multi-turn chat requests, "
                          f"{load.concurrency} concurrent, streaming, against {target}")
        result = run_benchmark(target, requests, load, label="demo", console=console, meta=meta)
    if console is not None:
        from kvgate.bench.report import print_summary

        print_summary(result.summary, console, title="kvgate bench demo")
    if options.plots_dir is not None:
        from kvgate.bench.plots import write_plots

        paths = write_plots(result.records, options.plots_dir, label="demo", prefix="demo")
        if console is not None:
            console.print("plots: " + ", ".join(str(p) for p in paths))
    return result.document()
