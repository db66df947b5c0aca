"""``routing``: KV-aware routing against round robin and least busy on a simulated vLLM fleet.

Two cases, each run once per strategy with the same requests, in closed loop:

* ``images``: 2 replicas of llava-onevision-7b-a40 whose KV holds about half of the
  workload's images; 12 distinct 1024x768 images (4,725 vision tokens each), each asked 50
  different questions, shuffled; 16 requests in flight.
* ``chat``: 4 replicas; 160 users, each a 6-turn conversation that starts with a shared
  1,000-token system prompt and a personal 2,000-token history; 48 conversations in progress,
  each pausing 2 s (a user reading and typing) between an answer and its next turn.

Each case runs twice:

* **fleet** (:mod:`kvgate.bench.sim_fleet`): ``kvgate sim`` replica processes behind one
  ``kvgate run``, driven over HTTP by the load generator; every strategy starts from emptied
  replica caches. Replicas run ``time_scale`` times faster than the modelled GPU so the
  scenario takes minutes on a 2-core machine; latencies are the client's wall-clock
  measurements x ``time_scale`` (modelled GPU time, including the gateway hop), throughput
  likewise per modelled second. They carry whatever CPU contention the host had.
* **virtual** (:mod:`kvgate.bench.scenarios.routing_virtual`): the same requests through the
  gateway's routing code into the same engines in-process, on a virtual clock: the model's
  figures without host noise, reproducible exactly.

Per strategy: TTFT and latency percentiles, throughput, routing affinity (:func:`affinity`),
each replica's share of requests, and the replicas' own prefix-cache hit rate
(``vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total`` over the run). The issue's
targets are checked for both runs (:mod:`kvgate.bench.scenarios.routing_report`). About 6
minutes; ``--quick`` shrinks everything to seconds (numbers not meaningful).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from kvgate.bench.api import BenchResult, host_info, run_benchmark
from kvgate.bench.engine_counters import EngineCounters
from kvgate.bench.loadgen import LoadSpec
from kvgate.bench.request import RequestRecord
from kvgate.bench.scenarios import ScenarioOptions
from kvgate.bench.sim_fleet import FleetSpec, fleet_gateway, sim_fleet
from kvgate.bench.stats import deployment_shares, distribution_ms
from kvgate.bench.workloads import (
    MultimodalWorkload,
    MultiRoundChatWorkload,
    WorkloadOptions,
    parameters,
)
from kvgate.config.schema import PrefixRoutingSettings
from kvgate.sim.profiles import get_profile

STRATEGIES: tuple[str, ...] = ("round_robin", "least_busy", "prefix_kv_aware")
PROFILE = "llava-onevision-7b-a40"
#: Replicas run this many times faster than the modelled A40 (``kvgate sim --time-scale``).
TIME_SCALE = 4.0
QUICK_TIME_SCALE = 8.0
#: Share of the workload's image KV one replica's GPU blocks can hold.
IMAGE_KV_SHARE = 0.55
COMMAND = ("kvgate bench scenario routing --out benchmarks/results/routing.json "
           "--plots docs/img")

PrefixKey = Literal["tag", "session"]


@dataclass(frozen=True, slots=True)
class RoutingCase:
    """One workload on one fleet, run once per strategy."""

    name: str
    title: str
    fleet: FleetSpec
    workload: MultimodalWorkload | MultiRoundChatWorkload
    concurrency: int
    #: What names a request's prefix for :func:`affinity`: its tag (the image) or its
    #: session (the user's conversation).
    prefix_key: PrefixKey
    #: Modelled seconds between an answer and its conversation's next turn.
    think_s: float = 0.0
    #: Every answer exactly ``max_tokens`` long; otherwise the replicas' own answer lengths
    #: (a function of the prompt, so the same for every strategy).
    ignore_eos: bool = True
    notes: str = ""

    def workload_options(self, strategy: str, seed: int) -> WorkloadOptions:
        return WorkloadOptions(model=strategy, seed=seed, stream=True, ignore_eos=self.ignore_eos)


def image_case(quick: bool) -> RoutingCase:
    num_images, resolution = (4, "384x384") if quick else (12, "1024x768")
    workload = MultimodalWorkload(
        num_images=num_images, resolutions=resolution, questions_per_image=4 if quick else 50,
        question_tokens=24, output_tokens=16 if quick else 64,
    )
    profile = get_profile(PROFILE)
    width, height = workload.resolution_list()[0]
    image_tokens = profile.image_tokens(width, height)
    kv_blocks = math.ceil(IMAGE_KV_SHARE * num_images * image_tokens / profile.block_size)
    fleet = FleetSpec(replicas=2, profile=PROFILE, kv_blocks=kv_blocks,
                      time_scale=QUICK_TIME_SCALE if quick else TIME_SCALE)
    return RoutingCase(
        name="images", title=f"{num_images} images asked about repeatedly, 2 replicas",
        fleet=fleet, workload=workload, concurrency=4 if quick else 16, prefix_key="tag",
        notes=(f"{num_images} images of {image_tokens:,} vision tokens, each asked "
               f"{workload.questions_per_image} questions in random order; each replica's "
               f"{kv_blocks:,} KV blocks hold {IMAGE_KV_SHARE:.0%} of the images' KV "
               f"({IMAGE_KV_SHARE * num_images:.1f} images), so half the images and the "
               "blocks of the requests in flight fit, all of them do not"),
    )


def chat_case(quick: bool) -> RoutingCase:
    workload = MultiRoundChatWorkload(
        num_users=8 if quick else 160, num_rounds=3 if quick else 6,
        system_prompt_tokens=200 if quick else 1000, user_history_tokens=300 if quick else 2000,
        question_tokens=40, answer_tokens=16 if quick else 100,
    )
    kv_blocks = 400 if quick else 3000
    fleet = FleetSpec(replicas=4, profile=PROFILE, kv_blocks=kv_blocks,
                      time_scale=QUICK_TIME_SCALE if quick else TIME_SCALE)
    concurrency = 8 if quick else 48
    last_turn_tokens = (workload.system_prompt_tokens + workload.user_history_tokens
                        + workload.num_rounds * workload.question_tokens
                        + (workload.num_rounds - 1) * workload.answer_tokens)
    block_size = get_profile(PROFILE).block_size
    return RoutingCase(
        name="chat",
        title=(f"shared system prompt + multi-turn chat, {workload.num_users} users, "
               "4 replicas"),
        fleet=fleet, workload=workload, concurrency=concurrency, prefix_key="session",
        # Without a pause between turns a closed loop sends a turn back the instant its
        # replica freed a slot, so least_busy keeps conversations in place by accident.
        think_s=0.2 if quick else 2.0,
        # Answers of the replicas' own lengths (up to max_tokens): conversations of equal length
        # would start and end in lockstep, in bursts of new users no router can spread.
        ignore_eos=False,
        notes=(f"{concurrency} conversations in progress, each up to ~{last_turn_tokens:,} "
               f"prompt tokens at its last turn; each replica's {kv_blocks:,} KV blocks "
               f"({kv_blocks * block_size:,} tokens) hold the conversations it serves when "
               "they stay with it, not all of them"),
    )


def cases(quick: bool) -> list[RoutingCase]:
    return [image_case(quick), chat_case(quick)]


def prefix_settings(time_scale: float) -> dict[str, float]:
    """prefix_kv_aware's time-based settings, in the replicas' (scaled) time.

    The replicas run ``time_scale`` times faster than the modelled GPU, so the gateway scrapes
    their /metrics every modelled second (its default) instead of every ``time_scale`` modelled
    seconds, and the affinity TTL spans the same modelled time. Everything else (load guard,
    fingerprint, match threshold) stays at its default.
    """
    defaults = PrefixRoutingSettings()
    return {"engine_metrics_interval_s": defaults.engine_metrics_interval_s / time_scale,
            "ttl_s": defaults.ttl_s / time_scale}


def affinity(records: Sequence[RequestRecord], key: PrefixKey) -> float | None:
    """Share of repeat requests sent to the replica that served their prefix's previous request.

    A prefix is an image (``tag``) or a conversation (``session``); each prefix's first
    request is not counted. Measured from where requests went (``x-kvgate-deployment``), so it
    means the same for every strategy: a router that keeps each prefix where it was last served
    scores 1.0, one that ignores prefixes about 1 / replicas.
    """
    last_replica: dict[object, str] = {}
    repeats = same = 0
    for record in sorted((r for r in records if r.ok), key=lambda r: r.start_s):
        prefix = record.tag if key == "tag" else record.session
        previous = last_replica.get(prefix)
        if previous is not None:
            repeats += 1
            same += previous == record.deployment
        last_replica[prefix] = record.deployment
    return round(same / repeats, 4) if repeats else None


def modelled(records: Sequence[RequestRecord], time_scale: float) -> list[RequestRecord]:
    """Copies of ``records`` with times in modelled GPU seconds (wall seconds x time scale)."""
    return [
        replace(r, scheduled_s=r.scheduled_s * time_scale, start_s=r.start_s * time_scale,
                end_s=r.end_s * time_scale,
                ttft_s=None if r.ttft_s is None else r.ttft_s * time_scale)
        for r in records
    ]


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def figures(records: Sequence[RequestRecord], engine: Sequence[EngineCounters], *,
            case: RoutingCase, duration_s: float, replica_ids: Sequence[str],
            route_outcomes: Mapping[str, int]) -> dict[str, Any]:
    """One strategy's numbers from records in modelled seconds (what tables, plots and targets
    read); ``duration_s`` is the run's modelled length, first request to last answer."""
    ok = [r for r in records if r.ok]
    shares = {rid: 0.0 for rid in replica_ids}
    for name, share in deployment_shares(ok).items():
        shares[name] = share["share"] or 0.0
    max_share = max(shares.values(), default=0.0)
    queries = sum(c.prefix_cache_queries for c in engine)
    hits = sum(c.prefix_cache_hits for c in engine)
    busy_s = [c.busy_s for c in engine]
    ttft_count = sum(c.ttft_count for c in engine)
    per_s = 1.0 / duration_s if duration_s > 0 else 0.0
    return {
        "requests": len(ok),
        "errors": len(records) - len(ok),
        "error_kinds": dict(Counter(r.error for r in records if r.error).most_common()),
        "duration_s": round(duration_s, 3),
        "ttft_ms": distribution_ms(r.ttft_s for r in ok if r.ttft_s is not None),
        "latency_ms": distribution_ms(r.latency_s for r in ok),
        "requests_per_s": round(len(ok) * per_s, 3),
        "output_tokens_per_s": round(sum(r.output_tokens for r in ok) * per_s, 1),
        "affinity": affinity(ok, case.prefix_key),
        "route_outcomes": dict(sorted(route_outcomes.items())),
        "replica_share": shares,
        "max_share": round(max_share, 4),
        "max_over_mean_load": round(max_share * len(replica_ids), 4),
        "replica_hit_rate": _round(hits / queries if queries else None),
        "replica_hit_rate_by_replica": {rid: _round(c.hit_rate)
                                        for rid, c in zip(replica_ids, engine, strict=True)},
        "engine_busy_share": {rid: _round(b / sum(busy_s) if sum(busy_s) else None)
                              for rid, b in zip(replica_ids, busy_s, strict=True)},
        # The replicas' own mean TTFT (simulated seconds, from their histograms): what the
        # fleet's client-side figures would be without the host's delays and the gateway hop.
        "engine_ttft_mean_ms": _round(1000 * sum(c.ttft_sum_s for c in engine) / ttft_count
                                      if ttft_count else None, 1),
        "preemptions": int(sum(c.preemptions for c in engine)),
        "engine": {rid: c.to_json() for rid, c in zip(replica_ids, engine, strict=True)},
    }


def _client_minus_engine(numbers: Mapping[str, Any]) -> float | None:
    """Mean TTFT as the client saw it minus the replicas' own mean, in modelled ms: the gateway
    hop plus what the host's CPU contention added (a few tens of ms on an idle host)."""
    client, engine = numbers["ttft_ms"], numbers["engine_ttft_mean_ms"]
    if client is None or engine is None:
        return None
    return round(float(client["mean"]) - float(engine), 1)


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _section(case: RoutingCase, seed: int, load: LoadSpec) -> dict[str, Any]:
    return {
        "title": case.title,
        "notes": case.notes,
        "fleet": {**case.fleet.describe(), "command": case.fleet.command()},
        "workload": {"name": case.workload.name, "parameters": parameters(case.workload),
                     "options": parameters(case.workload_options("<strategy>", seed))},
        "load": {**load.describe(), "think_s_modelled": case.think_s},
        "affinity_key": case.prefix_key,
    }


def run_fleet_case(case: RoutingCase, options: ScenarioOptions
                   ) -> tuple[dict[str, Any], dict[str, BenchResult]]:
    """Every strategy on one HTTP fleet: the figures by strategy, and the raw runs."""
    console = options.console
    scale = case.fleet.time_scale
    prefix = prefix_settings(scale)
    load = LoadSpec(mode="closed", concurrency=case.concurrency, request_timeout_s=120.0,
                    seed=options.seed, think_s=case.think_s / scale)
    section: dict[str, Any] = {
        **_section(case, options.seed, load),
        "gateway": {"strategies": list(STRATEGIES), "routing.prefix": prefix,
                    "cache.exact.enabled": False, "routing.max_attempts": 1},
        "strategies": {},
    }
    results: dict[str, BenchResult] = {}
    if console is not None:
        console.print(f"[bold]routing / {case.name} (fleet)[/]: {case.title}; "
                      f"{case.fleet.command()}")
    with sim_fleet(case.fleet) as fleet, fleet_gateway(fleet, STRATEGIES, prefix=prefix) as gw:
        for strategy in STRATEGIES:
            fleet.flush()
            requests = case.workload.build(case.workload_options(strategy, options.seed))
            before, loadavg_before = fleet.counters(), _loadavg()
            result = run_benchmark(
                gw.url, requests, load, label=f"{case.name}/{strategy}", console=console,
                meta={"case": case.name, "strategy": strategy, "time_scale": scale},
            )
            engine = [after.delta(earlier)
                      for earlier, after in zip(before, fleet.counters(), strict=True)]
            numbers = figures(modelled(result.records, scale), engine, case=case,
                              duration_s=result.load.wall_s * scale,
                              replica_ids=fleet.deployment_ids,
                              route_outcomes=result.summary["route_outcomes"])
            numbers["wall_s"] = round(result.load.wall_s, 3)
            numbers["loadavg_1m"] = [loadavg_before, _loadavg()]
            numbers["client_minus_engine_ttft_mean_ms"] = _client_minus_engine(numbers)
            section["strategies"][strategy] = numbers
            results[strategy] = result
    return section, results


def run_virtual_case(case: RoutingCase, options: ScenarioOptions
                     ) -> tuple[dict[str, Any], dict[str, list[RequestRecord]]]:
    """Every strategy on the in-process engine model: figures by strategy, and the records."""
    from kvgate.bench.scenarios.routing_virtual import run_virtual

    load = LoadSpec(mode="closed", concurrency=case.concurrency, seed=options.seed,
                    think_s=case.think_s)
    section: dict[str, Any] = {**_section(case, options.seed, load), "strategies": {}}
    records: dict[str, list[RequestRecord]] = {}
    for strategy in STRATEGIES:
        if options.console is not None:
            options.console.print(f"routing / {case.name} (virtual): {strategy}")
        run = run_virtual(
            case.workload.build(case.workload_options(strategy, options.seed)),
            strategy=strategy, profile_name=case.fleet.profile, replicas=case.fleet.replicas,
            kv_blocks=case.fleet.kv_blocks, concurrency=case.concurrency,
            think_s=case.think_s, seed=options.seed,
        )
        section["strategies"][strategy] = figures(
            run.records, run.engine, case=case, duration_s=run.simulated_s,
            replica_ids=run.deployment_ids, route_outcomes=run.route_outcomes)
        records[strategy] = run.records
    return section, records


def run(options: ScenarioOptions) -> dict[str, Any]:
    if options.target is not None:
        raise ValueError("the routing scenario starts its own fleet and gateway; "
                         "it does not take --target")
    from kvgate import __version__
    from kvgate.bench.api import RESULT_FORMAT
    from kvgate.bench.scenarios import routing_report

    document: dict[str, Any] = {
        "kvgate_bench": {"format": RESULT_FORMAT, "version": __version__},
        "scenario": "routing",
        "quick": options.quick,
        "seed": options.seed,
        "command": COMMAND + (" --quick" if options.quick else ""),
        "host": host_info(),
        "units": ("ttft_ms, latency_ms and duration_s are modelled GPU time: on the fleet the "
                  "client's wall-clock measurement x the fleet's time_scale, in the virtual run "
                  "the engines' simulated time; requests_per_s and output_tokens_per_s are per "
                  "modelled second"),
        "prefix_routing_defaults": PrefixRoutingSettings().model_dump(),
        "cases": {},
        "virtual": {},
    }
    runs: dict[str, dict[str, BenchResult]] = {}
    virtual_records: dict[str, dict[str, list[RequestRecord]]] = {}
    for case in cases(options.quick):
        document["virtual"][case.name], virtual_records[case.name] = run_virtual_case(
            case, options)
        document["cases"][case.name], runs[case.name] = run_fleet_case(case, options)
    document["targets"] = [t.to_json() for t in routing_report.check_targets(document["cases"])]
    document["targets_virtual"] = [
        t.to_json() for t in routing_report.check_targets(document["virtual"])]
    document["targets_met"] = all(t["met"] for t in document["targets"])
    document["targets_virtual_met"] = all(t["met"] for t in document["targets_virtual"])
    if options.console is not None:
        routing_report.print_report(document, options.console)
    if options.plots_dir is not None:
        fleet_curves = {
            case: {s: modelled([r for r in result.records if r.ok],
                               document["cases"][case]["fleet"]["time_scale"])
                   for s, result in results.items()}
            for case, results in runs.items()
        }
        paths = routing_report.write_plots(document, fleet_curves, virtual_records,
                                           options.plots_dir)
        if options.console is not None:
            options.console.print("plots: " + ", ".join(str(p) for p in paths))
    # Summaries only: the per-request records of ~5,000 requests would make the file megabytes.
    document["runs"] = {f"{case}/{strategy}": result.document(include_records=False)
                        for case, results in runs.items() for strategy, result in results.items()}
    return document
