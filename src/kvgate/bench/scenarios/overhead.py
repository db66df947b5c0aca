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
    shared machine hits all of them alike; ``added`` = target percentile - direct percentile;
  * concurrency 32, non-streamed and streamed: wrk (one thread, 32 connections), rounds
    interleaved across targets, medians reported; and the hop's CPU time per request over its
    process tree, which other load on the machine does not inflate the way it does req/s;
  * resident memory of the hop when idle and after the load.
With two or more CPUs the hop runs on CPU 1 and the upstream, wrk and this client on CPU 0, so
the two sides do not steal each other's core. The hops are started by
:mod:`~kvgate.bench.scenarios.overhead_targets`; the summaries and the table are
:mod:`~kvgate.bench.scenarios.overhead_report`'s.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from kvgate import __version__
from kvgate.bench.api import RESULT_FORMAT, host_info, write_json
from kvgate.bench.peers import PeerUnavailable, ensure_debian_package
from kvgate.bench.processes import free_port, local_process
from kvgate.bench.rawhttp import (
    HttpFramingError,
    RawClient,
    ThroughputSample,
    can_pin,
    closed_loop_rps,
    cpu_s,
    pinned,
    request_bytes,
    rss_mb,
    run_wrk,
    wrk_path,
)
from kvgate.bench.scenarios import ScenarioOptions
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
    Target,
    Targets,
    client_cpu,
)

CHAT_PATH = "/v1/chat/completions"
BLOCKING_BODY = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                              "max_tokens": 8})
STREAM_BODY = orjson.dumps({"model": MODEL, "stream": True, "max_tokens": 8,
                            "messages": [{"role": "user", "content": "hi"}]})
#: A streamed response's first chunk that carries a content delta.
CONTENT_MARKER = b'"content"'
PEERS: tuple[str, ...] = ("nginx", "litellm", "vllm-router")
COMMAND = "kvgate bench scenario overhead"
RESULT_PATH = Path("benchmarks/results/overhead.json")


@dataclass(frozen=True, slots=True)
class Sizes:
    requests_c1: int
    stream_requests_c1: int
    #: Requests per target per interleaving block at concurrency 1.
    block: int
    warmup: int
    rounds_c32: int
    duration_c32_s: float
    connections: int = 32


FULL = Sizes(requests_c1=3000, stream_requests_c1=1500, block=100, warmup=200, rounds_c32=3,
             duration_c32_s=5.0)
QUICK = Sizes(requests_c1=100, stream_requests_c1=50, block=25, warmup=10, rounds_c32=1,
              duration_c32_s=1.0)


# -- measuring ---------------------------------------------------------------------------------


def _rotated(targets: list[Target], turn: int) -> list[Target]:
    shift = turn % len(targets)
    return targets[shift:] + targets[:shift]


def _drop(targets: list[Target], failed: dict[str, str], target: Target, what: str,
          exc: Exception) -> None:
    failed[target.name] = f"{what}: {type(exc).__name__}: {exc}"
    targets.remove(target)


def latency_c1(targets: list[Target], body: bytes, total: int, sizes: Sizes, *,
               stream: bool, failed: dict[str, str], reconnects: dict[str, int],
               ) -> dict[str, list[float]]:
    """Seconds per request (streams: to the first content chunk) for each target, measured in
    interleaved blocks on one keep-alive connection each (reopened, untimed, when the server
    closed it while idle; counted in ``reconnects``)."""
    marker = CONTENT_MARKER if stream else None
    clients: dict[str, RawClient] = {}
    requests = {t.name: request_bytes(t.port, CHAT_PATH, body) for t in targets}
    samples: dict[str, list[float]] = {t.name: [] for t in targets}

    def measure(target: Target, count: int, keep: bool) -> None:
        client = clients.get(target.name)
        if client is None:
            client = clients[target.name] = RawClient(target.port)
        for _ in range(count):
            total_s, first_s = client.send(requests[target.name], marker)
            if keep:
                value = first_s if stream else total_s
                if value is None:
                    raise HttpFramingError("stream ended without a content chunk")
                samples[target.name].append(value)

    try:
        for turn in range(-1, max(1, total // sizes.block)):
            for target in _rotated(list(targets), max(turn, 0)):
                try:
                    measure(target, sizes.warmup if turn < 0 else sizes.block, keep=turn >= 0)
                except (OSError, ValueError) as exc:  # HttpFramingError is an OSError
                    _drop(targets, failed, target, "concurrency 1", exc)
    finally:
        for name, client in clients.items():
            reconnects[name] = reconnects.get(name, 0) + client.reconnects
            client.close()
    return {name: values for name, values in samples.items() if any(
        t.name == name for t in targets)}


def throughput_c32(targets: list[Target], body: bytes, sizes: Sizes, *, use_wrk: bool,
                   failed: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """Closed-loop rounds, interleaved across targets; each with the hop's CPU per request."""
    rounds: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
    for turn in range(sizes.rounds_c32):
        for target in _rotated(list(targets), turn):
            cpu_before_s = cpu_s(target.pid)
            try:
                sample = _closed_loop(target, body, sizes, use_wrk=use_wrk)
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                _drop(targets, failed, target, "concurrency 32", exc)
                continue
            used_s = cpu_s(target.pid) - cpu_before_s
            rounds[target.name].append({
                **asdict(sample),
                "cpu_us_per_request": (round(used_s / sample.requests * 1e6, 1)
                                       if sample.requests else None),
            })
    return {name: values for name, values in rounds.items() if values}


def _closed_loop(target: Target, body: bytes, sizes: Sizes, *, use_wrk: bool
                 ) -> ThroughputSample:
    if use_wrk:
        return run_wrk(target.process.url + CHAT_PATH, body, connections=sizes.connections,
                       duration_s=sizes.duration_c32_s, cpu=client_cpu())
    return closed_loop_rps(target.port, request_bytes(target.port, CHAT_PATH, body),
                           connections=sizes.connections, duration_s=sizes.duration_c32_s)


@contextlib.contextmanager
def _client_pinned() -> Iterator[None]:
    """This process (the c=1 client, the fallback c=32 generator) on the client CPU."""
    cpu = client_cpu()
    if cpu is None:
        yield
        return
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)


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
        up_port = free_port()
        upstream = stack.enter_context(local_process(
            pinned(client_cpu(), [sys.executable, "-m", "kvgate.bench.zero_upstream",
                                  "--port", str(up_port)]),
            f"http://127.0.0.1:{up_port}", ready_path="/v1/models"))
        targets = Targets(stack, up_port)
        targets.running.append(Target("direct", upstream, {"notes": "the zero upstream itself"}))
        targets.add("kvgate", targets.kvgate, console)
        if options.peers:
            targets.add("nginx", targets.nginx, console)
            targets.add("litellm", targets.litellm, console)
            targets.add("vllm-router", targets.vllm_router, console)
        running = list(targets.running)
        rss = {t.name: {"idle": rss_mb(t.pid)} for t in running}
        if console is not None:
            console.print(f"measuring {', '.join(t.name for t in running)} ...")
        with _client_pinned():
            c1 = latency_c1(running, BLOCKING_BODY, sizes.requests_c1, sizes, stream=False,
                            failed=failed, reconnects=reconnects)
            c1_stream = latency_c1(running, STREAM_BODY, sizes.stream_requests_c1, sizes,
                                   stream=True, failed=failed, reconnects=reconnects)
            c32 = throughput_c32(running, BLOCKING_BODY, sizes, use_wrk=use_wrk, failed=failed)
            c32_stream = throughput_c32(running, STREAM_BODY, sizes, use_wrk=use_wrk,
                                        failed=failed)
        for target in running:
            rss[target.name]["after_load"] = rss_mb(target.pid)
        facts = {t.name: t.facts for t in targets.running}
        unavailable = targets.unavailable
    document: dict[str, Any] = {
        "kvgate_bench": {"format": RESULT_FORMAT, "version": __version__},
        "scenario": "overhead",
        "quick": options.quick,
        "command": COMMAND + (" --quick" if options.quick else "")
                   + ("" if options.peers else " --no-peers"),
        "host": host_info(),
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
        "c1_stream_ttft_ms": with_added(c1_stream),
        "c32_blocking": summarise_c32(c32),
        "c32_stream": summarise_c32(c32_stream),
        "rss_mb": rss,
    }
    document["comparison"] = comparison(document)
    if console is not None:
        print_table(document, console)
    if not options.quick:
        path = write_json(RESULT_PATH, document)
        if console is not None:
            console.print(f"wrote {path}")
    return document
