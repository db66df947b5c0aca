"""``precise``: precise routing from KV events vs approximate affinity, under memory pressure.

For each arm a fresh simulated fleet (``kvgate sim --kv-events``: replicas of
``llama-3.1-8b-h100`` with a small KV pool each) and a fresh gateway in front of it, then the
same open-loop workload: ``num_groups`` shared system prompts with Zipf popularity, each
request one of them plus a unique question, arriving as a Poisson stream in which 5% of the
arrivals are fan-outs (24 requests on one prompt at once: an agent's parallel calls, a batch
over one document). The prompts' working set is about three times the fleet's total KV
capacity, so replicas keep evicting and affinity learned from routing history goes stale.

Why the fan-outs: with steady single arrivals, approximate affinity never names more than one
replica per prefix, so stale entries send a prompt back to the replica that evicted it, where
it is recomputed as it would be anywhere else (a static partition of the prompts, which keeps
its hit rate; the virtual-time steady run is reported alongside for that). A fan-out overflows
the load guard and leaves the prefix recorded on several replicas; once some of them evict it,
approximate picks among them by load while precise knows which one still holds it. Arms:

- ``approximate``: ``prefix_kv_aware`` (fingerprint + affinity index with TTL + load guard);
- ``precise``: ``precise_kv`` with the replicas' tokenizer (``kvgate-sim:<profile>``): exact
  block hashes matched against each replica's KV events;
- ``precise_events_only``: ``precise_kv`` without a tokenizer (affinity on the replicas'
  eviction clock).

The hit rate is the replicas' own (``vllm:prefix_cache_hits_total`` /
``vllm:prefix_cache_queries_total``, read before and after each arm); TTFT is the client's.
The same arms also run first on the engine model in virtual time (``precise_virtual``):
deterministic, free of this host's CPU contention. About 4 minutes (``--quick``: about 45 s,
numbers not meaningful).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from kvgate.bench.api import BenchResult, comparison_document, run_benchmark
from kvgate.bench.engine_counters import read_counters
from kvgate.bench.loadgen import LoadSpec
from kvgate.bench.processes import free_port, local_gateway
from kvgate.bench.request import BenchRequest
from kvgate.bench.scenarios import ScenarioOptions
from kvgate.bench.sim_fleet import running_replicas
from kvgate.bench.text import filler, seeded_rng
from kvgate.bench.workloads.base import WorkloadOptions, chat_request
from kvgate.sim.profiles import get_profile
from kvgate.sim.settings import ReplicaSettings

MODEL = "fleet"
PROFILE = "llama-3.1-8b-h100"
ARMS: dict[str, dict[str, Any]] = {
    "approximate": {"strategy": "prefix_kv_aware"},
    "precise": {"strategy": "precise_kv", "tokenizer": f"kvgate-sim:{PROFILE}"},
    "precise_events_only": {"strategy": "precise_kv"},
}


@dataclass(frozen=True, slots=True)
class Setup:
    replicas: int = 4
    kv_blocks: int = 500  # per replica: 499 usable x 16 tokens
    #: Below 1 the modelled GPU is slower than real time, so latency is the model's (cache
    #: hits, queueing) rather than this small host's CPU, which the fleet shares.
    time_scale: float = 0.5
    num_groups: int = 48
    prefix_tokens: int = 2000
    question_tokens: int = 48
    output_tokens: int = 24
    zipf_s: float = 0.8
    num_requests: int = 900
    #: Mean request rate (wall seconds on the fleet).
    rate_per_s: float = 18.0
    #: Share of arrivals that are a fan-out: ``burst_size`` requests on one prefix at once
    #: (an agent's parallel calls, a batch over one document). 0 = plain Poisson arrivals.
    burst_share: float = 0.05
    burst_size: int = 24
    burst_gap_s: float = 0.004

    @property
    def capacity_tokens(self) -> int:
        return self.replicas * (self.kv_blocks - 1) * get_profile(PROFILE).block_size

    @property
    def working_set_tokens(self) -> int:
        return self.num_groups * self.prefix_tokens


FULL = Setup()
QUICK = Setup(replicas=2, kv_blocks=200, num_groups=12, prefix_tokens=800, num_requests=120,
              rate_per_s=20.0, time_scale=2.0, burst_size=8)


def build_requests(setup: Setup, seed: int) -> list[BenchRequest]:
    """Zipf-popular shared prefixes, each request with its own question, arriving as a Poisson
    stream of single requests and fan-outs (``at_s``, wall seconds); deterministic."""
    options = WorkloadOptions(model=MODEL, seed=seed, stream=True, ignore_eos=True)
    rng = seeded_rng("precise.order", seed)
    weights = [1.0 / (rank + 1) ** setup.zipf_s for rank in range(setup.num_groups)]
    prefixes = [filler(setup.prefix_tokens, "precise.prefix", seed, g)
                for g in range(setup.num_groups)]
    # Arrival events are rarer than requests by the mean event size, so the request rate
    # stays rate_per_s whatever the burst settings.
    mean_event_size = 1 + setup.burst_share * (setup.burst_size - 1)
    event_rate_per_s = setup.rate_per_s / mean_event_size
    arrivals: list[tuple[float, int]] = []
    now_s = 0.0
    while len(arrivals) < setup.num_requests:
        group = rng.choices(range(setup.num_groups), weights)[0]
        size = setup.burst_size if rng.random() < setup.burst_share else 1
        arrivals.extend((now_s + i * setup.burst_gap_s, group) for i in range(size))
        now_s += rng.expovariate(event_rate_per_s)
    arrivals = sorted(arrivals[: setup.num_requests])
    requests = []
    for index, (at_s, group) in enumerate(arrivals):
        question = filler(setup.question_tokens, "precise.question", seed, index)
        messages = [{"role": "system", "content": prefixes[group]},
                    {"role": "user", "content": question}]
        request = chat_request(options, messages, setup.output_tokens,
                               prompt_tokens_hint=setup.prefix_tokens + setup.question_tokens,
                               tag=f"group{group}")
        requests.append(replace(request, at_s=at_s))
    return requests


@contextlib.contextmanager
def _fleet(setup: Setup) -> Iterator[Sequence[ReplicaSettings]]:
    replicas = [
        ReplicaSettings(index=i, port=free_port(), profile=PROFILE, kv_blocks=setup.kv_blocks,
                        time_scale=setup.time_scale,
                        kv_events_endpoint=f"tcp://127.0.0.1:{free_port()}",
                        kv_events_replay_endpoint=f"tcp://127.0.0.1:{free_port()}")
        for i in range(setup.replicas)
    ]
    with running_replicas(replicas) as running:
        yield running


def gateway_config(replicas: Sequence[ReplicaSettings], arm: dict[str, Any]) -> dict[str, Any]:
    served = get_profile(PROFILE).served_model_name
    deployments = []
    for replica in replicas:
        deployment: dict[str, Any] = {"provider": f"replica-{replica.index}", "model": served,
                                      "id": f"replica-{replica.index}"}
        if arm["strategy"] == "precise_kv":
            deployment["kv_events"] = {"endpoint": replica.kv_events_endpoint,
                                       "replay_endpoint": replica.kv_events_replay_endpoint}
            if "tokenizer" in arm:
                deployment["tokenizer"] = arm["tokenizer"]
        deployments.append(deployment)
    return {
        "server": {"log_level": "warning"},
        "providers": {f"replica-{r.index}": {"type": "openai_compatible",
                                             "api_base": r.url + "/v1"} for r in replicas},
        "models": [{"name": MODEL, "deployments": deployments}],
        "routing": {"strategy": arm["strategy"], "max_attempts": 1},
        "cache": {"exact": {"enabled": False}},
    }


def _admin_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/admin/stats", timeout=10) as response:
        stats: dict[str, Any] = json.loads(response.read())
    return stats


def _run_arm(name: str, setup: Setup, requests: list[BenchRequest], options: ScenarioOptions,
             ) -> tuple[BenchResult, dict[str, Any]]:
    arm = ARMS[name]
    with _fleet(setup) as replicas, tempfile.TemporaryDirectory(prefix="kvgate-precise-") as tmp:
        path = Path(tmp) / "gateway.yaml"
        path.write_text(json.dumps(gateway_config(replicas, arm), indent=2))
        with local_gateway(path) as gateway:
            before = read_counters(r.url for r in replicas)
            load = LoadSpec(mode="timestamps", seed=options.seed, request_timeout_s=120.0)
            result = run_benchmark(gateway.url, requests, load, label=name,
                                   console=options.console, meta={"arm": arm})
            after = read_counters(r.url for r in replicas)
            stats = _admin_stats(gateway.url)
    counters = [a.delta(b) for a, b in zip(after, before, strict=True)]
    hits = sum(c.prefix_cache_hits for c in counters)
    queries = sum(c.prefix_cache_queries for c in counters)
    preemptions = sum(c.preemptions for c in counters)
    ttft_count = sum(c.ttft_count for c in counters)
    ttft_sum_s = sum(c.ttft_sum_s for c in counters)
    queue_sum_s = sum(c.queue_time_sum_s for c in counters)
    kv_state = {d["id"]: d.get("kv_cache") for d in stats["models"][0]["deployments"]}
    engine = {
        "prefix_cache_hits_tokens": hits,
        "prefix_cache_queries_tokens": queries,
        "prefix_cache_hit_rate": round(hits / queries, 4) if queries else None,
        "preemptions": preemptions,
        # The engines' own view (simulated seconds), without the gateway and the network.
        "engine_ttft_mean_ms": round(ttft_sum_s / ttft_count * 1000, 3)
        if ttft_count else None,
        "engine_queue_mean_ms": round(queue_sum_s / ttft_count * 1000, 3)
        if ttft_count else None,
        "kv_state_at_end": kv_state,
    }
    return result, engine


def run(options: ScenarioOptions) -> dict[str, Any]:
    if options.target is not None:
        raise ValueError("the precise scenario starts its own fleets and gateways (no --target)")
    setup = QUICK if options.quick else FULL
    requests = build_requests(setup, options.seed)
    console = options.console
    if console is not None:
        console.print(
            f"[bold]kvgate bench precise[/]: {len(requests)} requests at {setup.rate_per_s}/s "
            f"per arm ({setup.burst_share:.0%} of arrivals a fan-out of {setup.burst_size}); "
            f"working set {setup.working_set_tokens:,} tokens = "
            f"{setup.working_set_tokens / setup.capacity_tokens:.1f}x the fleet's KV "
            f"capacity ({setup.capacity_tokens:,})"
        )
    # Deterministic first: the same policies on the engine model in virtual time, with the
    # fan-outs and (for comparison, not a target) without them.
    virtual = _virtual_arms(setup, requests, "virtual", console)
    steady = replace(setup, burst_share=0.0)
    virtual_steady = _virtual_arms(steady, build_requests(steady, options.seed),
                                   "virtual, steady", console)
    results: list[BenchResult] = []
    engines: dict[str, dict[str, Any]] = {}
    for name in ARMS:
        result, engine = _run_arm(name, setup, requests, options)
        results.append(result)
        engines[name] = engine
        if console is not None:
            ttft = result.summary.get("ttft_ms") or {}
            console.print(f"{name}: prefix-cache hit rate {engine['prefix_cache_hit_rate']}, "
                          f"TTFT p50 {ttft.get('p50')} ms, p95 {ttft.get('p95')} ms, "
                          f"errors {result.summary['requests']['errors']}")
    approximate, precise = results[0].summary, results[1].summary
    targets = {
        "fleet": {
            "hit_rate_higher": (engines["precise"]["prefix_cache_hit_rate"] or 0)
            > (engines["approximate"]["prefix_cache_hit_rate"] or 0),
            "ttft_p95_lower": ((precise.get("ttft_ms") or {}).get("p95") or float("inf"))
            < ((approximate.get("ttft_ms") or {}).get("p95") or float("inf")),
        },
        "virtual": {
            "hit_rate_higher": (virtual["precise"]["prefix_cache_hit_rate"] or 0)
            > (virtual["approximate"]["prefix_cache_hit_rate"] or 0),
            "ttft_p95_lower": virtual["precise"]["ttft_ms"]["p95"]
            < virtual["approximate"]["ttft_ms"]["p95"],
        },
    }
    return comparison_document(
        "precise", results, quick=options.quick, include_records=False,
        setup={**asdict(setup), "profile": PROFILE,
               "capacity_tokens": setup.capacity_tokens,
               "working_set_tokens": setup.working_set_tokens},
        engine=engines,
        virtual={"rate_per_s": setup.rate_per_s / setup.time_scale, "arms": virtual},
        virtual_steady={"rate_per_s": steady.rate_per_s / steady.time_scale,
                        "arms": virtual_steady},
        targets=targets,
    )


def _virtual_arms(setup: Setup, requests: list[BenchRequest], label: str,
                  console: Any) -> dict[str, dict[str, Any]]:
    from kvgate.bench.scenarios.precise_virtual import run_virtual_arm

    out: dict[str, dict[str, Any]] = {}
    for name, arm in ARMS.items():
        out[name] = v = run_virtual_arm(arm, requests, profile_name=PROFILE,
                                        replicas=setup.replicas, kv_blocks=setup.kv_blocks,
                                        time_scale=setup.time_scale)
        if console is not None:
            console.print(f"{label} {name}: prefix-cache hit rate {v['prefix_cache_hit_rate']},"
                          f" TTFT p50 {v['ttft_ms']['p50']} ms, p95 {v['ttft_ms']['p95']} ms")
    return out
