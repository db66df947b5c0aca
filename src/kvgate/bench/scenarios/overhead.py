"""``overhead``: what one proxy hop adds, for KVGate and its peers, in one run.

Every target sits in front of the same zero-latency upstream
(``python -m kvgate.bench.zero_upstream``): ``direct`` (no hop, the baseline), nginx as a bare
reverse proxy (Debian package; upstream keep-alive), KVGate (one worker, exact cache off so
every request goes upstream), LiteLLM's proxy (one worker, no database) and vllm-router (Rust).
Peers are installed on first use (see :mod:`kvgate.bench.peers`); one that cannot be installed
or started is recorded under ``unavailable`` with the exact error and the run goes on.
``--no-peers`` measures only ``direct`` and KVGate, installing nothing.

Measured, per target:
  * concurrency 1, non-streamed and streamed (time to the first content chunk): a raw
    keep-alive socket client, the targets interleaved in blocks of 100 requests so drift on a
    shared machine hits all of them alike, each block opened by one untimed request (see
    :mod:`~kvgate.bench.scenarios.overhead_measure`); ``added`` = target percentile - direct
    percentile;
  * concurrency 32, non-streamed and streamed: wrk (one thread, 32 connections), rounds
    interleaved across targets, medians reported; and the hop's CPU time per request over its
    process tree, which other load on the machine does not inflate the way it does req/s;
  * resident memory of the hop when idle and after the load.
With two or more CPUs the hop runs on CPU 1 and the upstream, wrk and this client on CPU 0, so
the two sides do not steal each other's core. The hops are started by
:mod:`~kvgate.bench.scenarios.overhead_targets`; the summaries and the table are
:mod:`~kvgate.bench.scenarios.overhead_report`'s; the measuring loops
:mod:`~kvgate.bench.scenarios.overhead_measure`'s.

Then, in the same run, the long-prompt case (:mod:`~kvgate.bench.scenarios.overhead_long`,
under the result's ``long_prompt`` key): ~8k-token prompts, KVGate over 64 deployments with
round_robin and with prefix_kv_aware, next to ``direct``, nginx and vllm-router.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from kvgate import __version__
from kvgate.bench.api import RESULT_FORMAT, host_info, write_json
from kvgate.bench.peers import PeerUnavailable, ensure_debian_package
from kvgate.bench.rawhttp import can_pin, rss_mb, wrk_path
from kvgate.bench.scenarios import ScenarioOptions
from kvgate.bench.scenarios.overhead_long import measure_long, print_long_table
from kvgate.bench.scenarios.overhead_measure import (
    FULL,
    QUICK,
    Sizes,
    client_pinned,
    latency_c1,
    throughput_c32,
)
from kvgate.bench.scenarios.overhead_report import (
    comparison,
    print_table,
    summarise_c32,
    with_added,
)
from kvgate.bench.scenarios.overhead_targets import (
    CLIENT_CPU,
    HOP_CPU,
    MODEL,
    Targets,
    zero_upstream,
)

__all__ = ["FULL", "QUICK", "Sizes", "run"]

BLOCKING_BODY = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                              "max_tokens": 8})
STREAM_BODY = orjson.dumps({"model": MODEL, "stream": True, "max_tokens": 8,
                            "messages": [{"role": "user", "content": "hi"}]})
PEERS: tuple[str, ...] = ("nginx", "litellm", "vllm-router")
COMMAND = "kvgate bench scenario overhead"
RESULT_PATH = Path("benchmarks/results/overhead.json")


def run(options: ScenarioOptions) -> dict[str, Any]:
    if options.target is not None:
        raise ValueError("the overhead scenario starts every hop itself in front of its own "
                         "zero-latency upstream; it does not take --target")
    sizes = QUICK if options.quick else FULL
    console = options.console
    load_before = round(os.getloadavg()[0], 2)
    use_wrk = wrk_path() is not None
    if not use_wrk and options.peers:
        with contextlib.suppress(PeerUnavailable):
            ensure_debian_package("wrk", "wrk")
            use_wrk = wrk_path() is not None
    failed: dict[str, str] = {}
    reconnects: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        direct = zero_upstream(stack)
        targets = Targets(stack, direct.port)
        targets.running.append(direct)
        targets.add("kvgate", targets.kvgate, console)
        if options.peers:
            targets.add("nginx", targets.nginx, console)
            targets.add("litellm", targets.litellm, console)
            targets.add("vllm-router", targets.vllm_router, console)
        running = list(targets.running)
        rss = {t.name: {"idle": rss_mb(t.pid)} for t in running}
        if console is not None:
            console.print(f"measuring {', '.join(t.name for t in running)} ...")
        with client_pinned():
            openers: dict[str, list[float]] = {}
            c1 = latency_c1(running, BLOCKING_BODY, sizes.requests_c1, sizes, stream=False,
                            openers=openers,
                            failed=failed, reconnects=reconnects)
            c1_stream = latency_c1(running, STREAM_BODY, sizes.stream_requests_c1, sizes,
                                   stream=True, failed=failed, reconnects=reconnects)
            c32 = throughput_c32(running, BLOCKING_BODY, sizes, use_wrk=use_wrk, failed=failed)
            c32_stream = throughput_c32(running, STREAM_BODY, sizes, use_wrk=use_wrk,
                                        failed=failed)
        for target in running:
            rss[target.name]["after_load"] = rss_mb(target.pid)
        facts = {t.name: t.facts for t in targets.running}
        unavailable = dict(targets.unavailable)
        long = measure_long(targets, running, sizes, use_wrk=use_wrk, console=console)
    document: dict[str, Any] = {
        "kvgate_bench": {"format": RESULT_FORMAT, "version": __version__},
        "scenario": "overhead",
        "quick": options.quick,
        "command": COMMAND + (" --quick" if options.quick else "")
                   + ("" if options.peers else " --no-peers"),
        "host": host_info(speed=True),
        "load_average_1m": {"before": load_before, "after": round(os.getloadavg()[0], 2)},
        "pinning": ({"hop_cpu": HOP_CPU, "upstream_and_client_cpu": CLIENT_CPU}
                    if can_pin() else None),
        "sizes": asdict(sizes),
        "load_generator": "wrk -t1" if use_wrk else "python-asyncio (wrk not installed)",
        "peers": options.peers,
        "targets": facts,
        "unavailable": unavailable,
        "failed": failed,
        "c1_idle_reconnects": reconnects,
        "c1_blocking_ms": with_added(c1),
        # The same with each block's untimed opening request counted, as runs before
        # 2026-12-06 02:17 UTC measured (overhead_measure's note).
        "c1_blocking_with_openers_ms": with_added(
            {name: values + openers.get(name, []) for name, values in c1.items()}),
        "c1_stream_ttft_ms": with_added(c1_stream),
        "c32_blocking": summarise_c32(c32),
        "c32_stream": summarise_c32(c32_stream),
        "rss_mb": rss,
    }
    document["comparison"] = comparison(document)
    # The long-prompt case (KV-aware routing on the hot path) under its own key, so readers of
    # the plain case's keys above see the same shape as before.
    document["long_prompt"] = long
    if console is not None:
        print_table(document, console)
        print_long_table(long, console)
    if (own := options.own_result_path(RESULT_PATH)) is not None:
        path = write_json(own, document)
        if console is not None:
            console.print(f"wrote {path}")
    return document
