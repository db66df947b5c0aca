"""``realvllm``: routers in front of two real vLLM replicas (the CPU build, tiny local models).

What it says: with a real engine — vLLM's own scheduler, block pool, prefix cache, encoder and
KV-event publisher — which router makes the replicas reuse their KV cache, measured by the
replicas themselves (``vllm:prefix_cache_hits_total`` / ``vllm:prefix_cache_queries_total``)
and by the client (TTFT, throughput). What it does not say: anything about GPU latencies. The
models are tiny random-weight ones on two shared CPU cores, so absolute times are CPU times of
a toy model, and a cache hit saves far less wall time than on a GPU serving a 7B model.

Each replica runs on a core of its own, all its processes (``KVGATE_VLLM_CPU_BIND``: see
:func:`cpu_bind`). Cases, one fleet of 2 replicas each (KV capped so that one replica holds
about two thirds of the working set, i.e. a router must partition it to keep it cached):

- ``multimodal``: tiny-llava (576 vision tokens per image), 12 images each asked several
  different questions, shuffled;
- ``text``: tiny-llama, 8 shared documents (SGLang's generated-shared-prefix shape), several
  questions each, shuffled.

Routers, one at a time over the same replicas with the same requests, after every replica's
prefix, multimodal and encoder caches are reset (vLLM's dev endpoints): KVGate with
``round_robin``, ``least_busy``, ``prefix_kv_aware`` and ``precise_kv`` (a fresh `kvgate run`
per strategy), then vllm-router with ``cache_aware`` (PyPI ``vllm-router``, installed into
``benchmarks/.venvs/``; ``--no-peers`` leaves it out). KVGate serves the replicas' own model
name, so not even ``model`` differs between routers. Then the same requests and KVGate's arms
run on the simulator fitted to these replicas (``simfit``; :mod:`.realvllm_sim`), in virtual
time over several seeds, and each case reports real and simulated hit rates side by side
(``fitted_sim``): the differences, and whether both rank the arms alike. About 2 minutes on
two cores (1.8-1.9 minutes measured on 2026-12-06, 3.7-3.9 on 2026-12-05's busier machine),
most of it two fleet start-ups and the peer router (``--quick``: less; numbers not
meaningful).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast, get_args

from kvgate.bench.api import BenchResult, comparison_document, run_benchmark
from kvgate.bench.engine_counters import EngineCounters, read_counters
from kvgate.bench.loadgen import LoadSpec
from kvgate.bench.processes import local_gateway
from kvgate.bench.request import BenchRequest
from kvgate.bench.scenarios import ScenarioOptions
from kvgate.bench.scenarios.realvllm_cases import Case, cases, requests_for
from kvgate.bench.scenarios.realvllm_sim import SIM_SEEDS, fitted_sim_section, print_comparison
from kvgate.bench.workloads import (
    parameters,
)
from kvgate.testing.vllm import (
    ReplicaFleet,
    ReplicaOptions,
    VllmEnvironment,
    dump_config,
    gateway_config,
    prepare,
)
from kvgate.testing.vllm.replicas import CpuBind

#: How the replicas are pinned to cores (:class:`~kvgate.testing.vllm.ReplicaOptions`'s
#: ``cpu_bind``); ``KVGATE_VLLM_CPU_BIND=per_replica_threads`` reruns the setting of the runs
#: before 2026-12-06 17:30 UTC, where only each replica's worker threads were pinned.
CPU_BIND_ENV = "KVGATE_VLLM_CPU_BIND"


def cpu_bind() -> CpuBind:
    value = os.environ.get(CPU_BIND_ENV, "per_replica")
    if value not in get_args(CpuBind):
        raise ValueError(f"{CPU_BIND_ENV}={value!r}: expected one of "
                         f"{', '.join(get_args(CpuBind))}")
    return cast(CpuBind, value)


KVGATE_STRATEGIES = ("round_robin", "least_busy", "prefix_kv_aware", "precise_kv")
PEER = "vllm-router/cache_aware"


def _hit_rate(before: Sequence[EngineCounters], after: Sequence[EngineCounters],
              ) -> dict[str, Any]:
    """The replicas' own prefix-cache figures over one run (counter deltas)."""
    delta = [a.delta(b) for b, a in zip(before, after, strict=True)]
    queries = sum(d.prefix_cache_queries for d in delta)
    hits = sum(d.prefix_cache_hits for d in delta)
    requests = [int(d.requests) for d in delta]
    return {
        "prefix_cache_hit_rate": round(hits / queries, 4) if queries else None,
        "prefix_cache_hit_tokens": int(hits),
        "prompt_tokens": int(sum(d.prompt_tokens for d in delta)),
        "preemptions": int(sum(d.preemptions for d in delta)),
        "requests_per_replica": requests,
        # The replicas' own mean TTFT (their API server's arrival to first token): whether
        # one ran slower than the other on the shared cores.
        "engine_ttft_mean_ms_per_replica": [
            round(d.ttft_sum_s / d.ttft_count * 1000, 1) if d.ttft_count else None
            for d in delta],
        "engine_itl_mean_ms_per_replica": [
            round(d.itl_sum_s / d.itl_count * 1000, 2) if d.itl_count else None
            for d in delta],
    }


def _warm_up(fleet: ReplicaFleet, requests: Sequence[BenchRequest]) -> None:
    """One request per replica first: the first request of a fresh vLLM process pays for
    one-time set-up (seconds), which must not land in any router's figures."""
    for replica in fleet.replicas:
        request = urllib.request.Request(
            replica.url + requests[0].path, data=requests[0].body, method="POST",
            headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as response:
            response.read()


def _measure(label: str, target: str, requests: Sequence[BenchRequest], case: Case,
             fleet: ReplicaFleet, console: Any) -> tuple[BenchResult, dict[str, Any]]:
    for replica in fleet.replicas:
        replica.reset_caches()
    urls = [replica.url for replica in fleet.replicas]
    before = read_counters(urls, timeout_s=5.0)
    load = LoadSpec(mode="closed", concurrency=case.concurrency, request_timeout_s=300.0)
    result = run_benchmark(target, requests, load, label=label, console=console,
                           meta={"case": case.name})
    after = read_counters(urls, timeout_s=5.0)
    return result, _hit_rate(before, after)


@contextlib.contextmanager
def _kvgate(fleet: ReplicaFleet, served: str, strategy: str) -> Iterator[str]:
    config = gateway_config(fleet, {served: strategy}, request_timeout_s=300.0,
                            routing={"health_check_interval_s": 0})
    with tempfile.TemporaryDirectory(prefix="kvgate-realvllm-") as tmp:
        path = Path(tmp) / "gateway.yaml"
        path.write_text(dump_config(config))
        with local_gateway(path, ready_timeout_s=60.0) as gateway:
            yield gateway.url


def _measure_peer(fleet: ReplicaFleet, requests: Sequence[BenchRequest], case: Case,
                  console: Any, unavailable: dict[str, str],
                  ) -> tuple[BenchResult, dict[str, Any]] | None:
    """vllm-router with ``cache_aware`` over the fleet, measured; None if it could not be
    installed or started (the exact error goes into ``unavailable``)."""
    from kvgate.bench.peers import (
        PEER_PACKAGES,
        PeerInstaller,
        PeerUnavailable,
        default_venvs_dir,
        vllm_router,
    )

    try:
        install = PeerInstaller(default_venvs_dir()).ensure(PEER_PACKAGES["vllm-router"])
        with vllm_router(install, [r.url for r in fleet.replicas], "cache_aware") as router:
            return _measure(PEER, router.url, requests, case, fleet, console)
    except PeerUnavailable as exc:
        unavailable[PEER] = str(exc)
        return None


def run_case(case: Case, env: VllmEnvironment, options: ScenarioOptions,
             unavailable: dict[str, str]) -> dict[str, Any]:
    console = options.console
    model = env.models[case.model]
    served = model.spec.name
    requests = requests_for(case, served, options.seed)
    replica_options = ReplicaOptions(kv_cache_tokens=case.kv_cache_tokens, dev_mode=True,
                                     cpu_bind=cpu_bind())
    results: list[BenchResult] = []
    engine: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    with ReplicaFleet(env.venv, model, 2, replica_options) as fleet:
        fleet_info = {
            "startup_s": [r.startup_s for r in fleet.replicas],
            "rss_gib": [round(r.rss_bytes() / 2**30, 2) for r in fleet.replicas],
            "kv_cache_tokens": case.kv_cache_tokens,
            "kv_cache_bytes": replica_options.kv_cache_bytes(model),
            "block_size": replica_options.block_size,
            "cpu_bind": replica_options.cpu_bind,
            # Each replica's processes' cores, as the kernel reports them once it is up.
            "cores": [sorted(set().union(*r.affinities())) for r in fleet.replicas],
        }
        if console is not None:
            console.print(f"[bold]{case.name}[/]: 2 x {served} up in "
                          f"{time.monotonic() - started:.0f} s; {len(requests)} requests, "
                          f"{case.concurrency} concurrent, streaming")
        _warm_up(fleet, requests)
        for strategy in KVGATE_STRATEGIES:
            with _kvgate(fleet, served, strategy) as url:
                result, engine[strategy] = _measure(strategy, url, requests, case, fleet,
                                                    console)
            results.append(result)
        measured = (_measure_peer(fleet, requests, case, console, unavailable)
                    if options.peers else None)
        if measured is not None:
            results.append(measured[0])
            engine[PEER] = measured[1]
        fleet_info["rss_gib_end"] = [round(r.rss_bytes() / 2**30, 2) for r in fleet.replicas]
    document = comparison_document(f"realvllm/{case.name}", results, quick=options.quick,
                                   include_records=False)
    for result in results:
        numbers = document["comparison"][result.label]
        numbers.update(engine[result.label])
        numbers["ttft_p95_ms"] = (result.summary.get("ttft_ms") or {}).get("p95")
        numbers["ttft_p50_ms_by_deployment"] = _ttft_p50_by_deployment(result)
    document["fleet"] = fleet_info
    document["fitted_sim"] = fitted_sim_section(
        requests, model_kind=case.model, kv_cache_tokens=case.kv_cache_tokens,
        concurrency=case.concurrency, seeds=range(SIM_SEEDS),
        real={label: n.get("prefix_cache_hit_rate")
              for label, n in document["comparison"].items()},
        real_itl_ms={label: n["engine_itl_mean_ms_per_replica"]
                     for label, n in document["comparison"].items()})
    document["model"] = {"name": served, "path": str(model.path), **model.info,
                         "image_tokens": model.spec.image_tokens,
                         "spec": asdict(model.spec)}
    document["workload"] = {"name": case.workload.name,
                            "parameters": parameters(case.workload),
                            "num_requests": len(requests), "concurrency": case.concurrency}
    return document


def _ttft_p50_by_deployment(result: BenchResult) -> dict[str, float]:
    """Client TTFT p50 per replica (KVGate names the deployment in a header): whether one
    replica ran slower than the other, which load-aware routers react to."""
    by_deployment: dict[str, list[float]] = {}
    for record in result.records:
        if record.deployment and record.ttft_s is not None:
            by_deployment.setdefault(record.deployment, []).append(record.ttft_s)
    return {name: round(statistics.median(ttfts) * 1000, 1)
            for name, ttfts in sorted(by_deployment.items())}


def print_table(document: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    table = Table(title=document["scenario"])
    for column in ("router", "ok", "TTFT p50 ms", "TTFT p95 ms", "req/s", "out tok/s",
                   "engine hit rate", "per replica"):
        table.add_column(column, justify="left" if column == "router" else "right")
    for label, n in document["comparison"].items():
        rate = n.get("prefix_cache_hit_rate")
        table.add_row(label, str(n["ok"]), _fmt(n["ttft_p50_ms"]), _fmt(n["ttft_p95_ms"]),
                      _fmt(n["requests_per_s"], 2), _fmt(n["output_tokens_per_s"]),
                      "-" if rate is None else f"{rate:.0%}",
                      "/".join(str(x) for x in n.get("requests_per_replica", ())))
    console.print(table)


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def run(options: ScenarioOptions) -> dict[str, Any]:
    if options.target is not None:
        raise ValueError("realvllm starts its own replicas and routers; --target is not used")
    console = options.console
    started = time.monotonic()
    env = prepare(("vision", "text"),
                  log=None if console is None else (lambda m: console.print(f"[dim]{m}")))
    unavailable: dict[str, str] = {}
    documents = {}
    for case in cases(options.quick):
        documents[case.name] = run_case(case, env, options, unavailable)
        if console is not None:
            print_table(documents[case.name], console)
            print_comparison(case.name, documents[case.name]["fitted_sim"], console)
    return {
        "scenario": "realvllm",
        "quick": options.quick,
        "seed": options.seed,
        "engine": {"vllm": env.venv.versions, "venv": str(env.venv.path),
                   "venv_first_setup_s": env.venv.marker.get("setup_s"),
                   "prepare_s": env.timings_s},
        "cases": documents,
        "unavailable": unavailable,
        "wall_s": round(time.monotonic() - started, 1),
    }



