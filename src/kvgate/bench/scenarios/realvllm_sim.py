"""The ``realvllm`` workload on the fitted simulator, next to the real replicas' hit rates.

Each case's very requests go, closed loop at the case's concurrency, through the gateway's own
strategies (whatever is registered under each arm's name, built as the gateway builds it) onto
two in-process ``kvgate.sim`` engines with the profile fitted to that model's real replica
(``cpu-tiny-llava``, ``cpu-tiny-llama``: block size 32 and the KV blocks the real replica
allocated for the case's budget), in virtual time (:mod:`.routing_virtual`). Deployments carry
what the real gateway config gives them: block size, a tokenizer that reproduces the engine's
token ids (``kvgate-sim:<profile>``), the image model id and vision tokens per image, and KV
events for the strategies that read them.

The simulated arms run over several seeds (routing tie-breaks and the order in which workers
due at the same instant send), because the real gateway breaks ties at random too: the spread
says how far one real run may sit from the simulator's mean for reasons that are not the
engine model. vllm-router runs only against real replicas.

The fitted replicas are identical; the real ones, on two cores shared with the gateway, the
load generator and whatever else runs, are not: during one arm a replica's mean inter-token
gap can be several times the other's, and load-aware arms send less to the slow one. So each
arm also runs once more with each simulated replica slowed by its real counterpart's gap
relative to the faster one (``speed_matched``): a diagnostic of that one condition, not a
second fit (a whole-arm mean cannot follow contention that comes and goes within it).

Standalone, against a real result already written (``--slow-replica 3``: what if the second
replica ran 3x slower, as one sharing its core with other work does)::

    python -m kvgate.bench.scenarios.realvllm_sim --real benchmarks/results/realvllm.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kvgate.bench.request import BenchRequest
from kvgate.bench.scenarios.routing_virtual import run_virtual
from kvgate.config.schema import KVEventsSettings, RoutingSettings
from kvgate.sim.profiles import Profile, get_profile

#: The fitted profile of each realvllm model kind.
SIM_PROFILES = {"vision": "cpu-tiny-llava", "text": "cpu-tiny-llama"}
#: KVGate's arms that run in-process (every realvllm arm but the peer router).
SIM_ARMS = ("round_robin", "least_busy", "prefix_kv_aware", "precise_kv")
#: Arms that subscribe to the replicas' KV events (the gateway config gives every deployment
#: its endpoints; only these strategies read them).
_READS_KV_EVENTS = frozenset({"precise_kv"})
SIM_SEEDS = 5
#: The issue's bar: per-arm hit rates within this of the real ones.
TOLERANCE = 0.05


def kv_blocks(kv_cache_tokens: int, profile: Profile) -> int:
    """vLLM's num_gpu_blocks for a KV budget in tokens: whole blocks plus the null block (what
    ``ReplicaOptions.kv_cache_bytes`` asks for, and what the real replica reported)."""
    return -(-kv_cache_tokens // profile.block_size) + 1


def deployment_settings(profile: Profile, strategy: str, replicas: int
                        ) -> list[dict[str, Any]]:
    """Per deployment, what ``kvgate.testing.vllm.gateway_config`` gives a real replica, with
    the simulated model's tokenizer and image model id."""
    out = []
    for i in range(replicas):
        settings: dict[str, Any] = {
            "block_size": profile.block_size,
            "tokenizer": f"kvgate-sim:{profile.name}",
            "hash_algo": "sha256",
            "mm_model_id": profile.served_model_name,
        }
        if profile.prompt_format.default_image_tokens:
            settings["image_tokens"] = profile.prompt_format.default_image_tokens
        if strategy in _READS_KV_EVENTS:
            settings["kv_events"] = KVEventsSettings(endpoint=f"inproc://replica-{i}")
        out.append(settings)
    return out


def run_sim_arm(requests: Sequence[BenchRequest], *, strategy: str, profile_name: str,
                kv_cache_tokens: int, concurrency: int, seed: int, replicas: int = 2,
                time_factors: Sequence[float] | None = None) -> dict[str, Any]:
    """One arm, one seed: the engines' prefix-cache figures and where requests went.
    ``time_factors``: replica i runs that many times slower than the fitted profile."""
    profile = get_profile(profile_name)
    run = run_virtual(
        requests, strategy=strategy, profile_name=profile_name, replicas=replicas,
        kv_blocks=kv_blocks(kv_cache_tokens, profile), concurrency=concurrency, seed=seed,
        routing=RoutingSettings(strategy=strategy, seed=seed),
        deployment_settings=deployment_settings(profile, strategy, replicas),
        kv_events=strategy in _READS_KV_EVENTS, replica_time_factors=time_factors,
    )
    queries = sum(c.prefix_cache_queries for c in run.engine)
    hits = sum(c.prefix_cache_hits for c in run.engine)
    per_replica = [sum(1 for r in run.records if r.deployment == d) for d in run.deployment_ids]
    return {
        "prefix_cache_hit_rate": round(hits / queries, 4) if queries else None,
        "prompt_tokens": int(sum(r.prompt_tokens for r in run.records)),
        "preemptions": int(sum(c.preemptions for c in run.engine)),
        "requests_per_replica": per_replica,
        "errors": sum(1 for r in run.records if not r.ok),
        "simulated_s": run.simulated_s,
    }


def run_sim_case(requests: Sequence[BenchRequest], *, model_kind: str, kv_cache_tokens: int,
                 concurrency: int, seeds: Sequence[int],
                 time_factors: Sequence[float] | None = None) -> dict[str, Any]:
    """Every in-process arm over ``seeds``: mean hit rate, its range, and each seed's run."""
    profile_name = SIM_PROFILES[model_kind]
    arms: dict[str, Any] = {}
    for strategy in SIM_ARMS:
        runs = [run_sim_arm(requests, strategy=strategy, profile_name=profile_name,
                            kv_cache_tokens=kv_cache_tokens, concurrency=concurrency, seed=s,
                            time_factors=time_factors)
                for s in seeds]
        rates = [r["prefix_cache_hit_rate"] for r in runs]
        arms[strategy] = {
            "prefix_cache_hit_rate": round(statistics.fmean(rates), 4),
            "hit_rate_min": min(rates), "hit_rate_max": max(rates),
            "runs": [{"seed": s, **r} for s, r in zip(seeds, runs, strict=True)],
        }
    return {"profile": profile_name, "seeds": list(seeds),
            "replica_time_factors": list(time_factors or [1.0, 1.0]),
            "kv_blocks": kv_blocks(kv_cache_tokens, get_profile(profile_name)), "arms": arms}


def ranking(rates: Mapping[str, float]) -> list[str]:
    """Arms from the highest hit rate down (ties keep the given order)."""
    return sorted(rates, key=lambda arm: -rates[arm])


def compare(real: Mapping[str, float | None], sim: Mapping[str, float],
            tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Per arm: real, simulated, difference; and whether the two rank the arms alike.

    Only arms with both figures are compared. ``pairs_disagreeing`` lists the pairs ordered
    differently, with both gaps; ``ranking_agrees_beyond_tolerance`` is False only when such a
    pair is more than ``tolerance`` apart on either side, so that a swap of two arms that are
    equal within the tolerance (or tied in the simulator) is told from a real disagreement."""
    arms = [arm for arm in sim if real.get(arm) is not None]
    real_rates = {arm: float(real[arm]) for arm in arms}  # type: ignore[arg-type]
    rows = {arm: {"real": real_rates[arm], "sim": sim[arm],
                  "difference": round(sim[arm] - real_rates[arm], 4),
                  "within_tolerance": abs(sim[arm] - real_rates[arm]) <= tolerance}
            for arm in arms}
    disagreeing: list[dict[str, Any]] = []
    widest_gap = 0.0  # of the pairs ordered differently
    for i, a in enumerate(arms):
        for b in arms[i + 1:]:
            real_gap, sim_gap = real_rates[a] - real_rates[b], sim[a] - sim[b]
            if real_gap * sim_gap < 0 or (real_gap == 0) != (sim_gap == 0):
                disagreeing.append({"arms": [a, b], "real_gap": round(real_gap, 4),
                                    "sim_gap": round(sim_gap, 4)})
                widest_gap = max(widest_gap, abs(real_gap), abs(sim_gap))
    real_order = ranking(real_rates)
    sim_order = ranking({arm: sim[arm] for arm in arms})
    return {
        "tolerance": tolerance,
        "arms": rows,
        "all_within_tolerance": all(row["within_tolerance"] for row in rows.values()),
        "max_abs_difference": max((abs(r["difference"]) for r in rows.values()), default=None),
        "real_ranking": real_order, "sim_ranking": sim_order,
        "ranking_agrees": real_order == sim_order,
        "ranking_agrees_beyond_tolerance": widest_gap <= tolerance,
        "pairs_disagreeing": disagreeing,
    }


def replica_time_factors(itl_ms: Sequence[float | None]) -> list[float] | None:
    """Each real replica's mean inter-token gap over the fastest one's (>= 1), or None when a
    replica reported none. Decode batches differ little in cost on these models (the fitted
    per-sequence cost is ~2 % of a step), so the ratio is mostly how much slower it ran."""
    if not itl_ms or any(x is None or x <= 0 for x in itl_ms):
        return None
    gaps = [float(x) for x in itl_ms if x is not None]
    fastest = min(gaps)
    return [round(x / fastest, 3) for x in gaps]


def speed_matched(requests: Sequence[BenchRequest], *, model_kind: str, kv_cache_tokens: int,
                  concurrency: int, real: Mapping[str, float | None],
                  real_itl_ms: Mapping[str, Sequence[float | None]], seeds: Sequence[int],
                  ) -> dict[str, Any]:
    """Each arm with its replicas slowed as the real arm's were (see the module docstring)."""
    profile_name = SIM_PROFILES[model_kind]
    arms: dict[str, Any] = {}
    for strategy in SIM_ARMS:
        factors = replica_time_factors(real_itl_ms.get(strategy) or ())
        if factors is None:
            continue
        runs = [run_sim_arm(requests, strategy=strategy, profile_name=profile_name,
                            kv_cache_tokens=kv_cache_tokens, concurrency=concurrency, seed=s,
                            replicas=len(factors), time_factors=factors) for s in seeds]
        rates = [r["prefix_cache_hit_rate"] for r in runs]
        arms[strategy] = {"replica_time_factors": factors,
                          "prefix_cache_hit_rate": round(statistics.fmean(rates), 4),
                          "hit_rate_min": min(rates), "hit_rate_max": max(rates),
                          "requests_per_replica": [r["requests_per_replica"] for r in runs]}
    means = {arm: row["prefix_cache_hit_rate"] for arm, row in arms.items()}
    return {"arms": arms, "comparison": compare(real, means)}


def fitted_sim_section(requests: Sequence[BenchRequest], *, model_kind: str,
                       kv_cache_tokens: int, concurrency: int,
                       real: Mapping[str, float | None], seeds: Sequence[int],
                       time_factors: Sequence[float] | None = None,
                       real_itl_ms: Mapping[str, Sequence[float | None]] | None = None,
                       ) -> dict[str, Any]:
    """What a realvllm case document carries under ``fitted_sim``; with the real arms'
    per-replica inter-token gaps, also ``speed_matched``."""
    sim = run_sim_case(requests, model_kind=model_kind, kv_cache_tokens=kv_cache_tokens,
                       concurrency=concurrency, seeds=seeds, time_factors=time_factors)
    means = {arm: row["prefix_cache_hit_rate"] for arm, row in sim["arms"].items()}
    section = {**sim, "comparison": compare(real, means)}
    if real_itl_ms:
        section["speed_matched"] = speed_matched(
            requests, model_kind=model_kind, kv_cache_tokens=kv_cache_tokens,
            concurrency=concurrency, real=real, real_itl_ms=real_itl_ms, seeds=seeds)
    return section


def print_comparison(name: str, section: Mapping[str, Any], console: Any) -> None:
    from rich.table import Table

    comparison = section["comparison"]
    slowed = "" if set(section["replica_time_factors"]) == {1.0} else (
        f", replica speeds x{section['replica_time_factors']}")
    table = Table(title=f"{name}: engine hit rate, real vLLM vs fitted sim "
                        f"({section['profile']}{slowed}, mean of {len(section['seeds'])} seeds)")
    matched = (section.get("speed_matched") or {}).get("arms", {})
    for column in ("arm", "real", "sim", "sim range", "sim - real", f"within {TOLERANCE}",
                   "speed-matched", "slowdowns"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for arm, row in comparison["arms"].items():
        arm_sim = section["arms"][arm]
        arm_matched = matched.get(arm)
        table.add_row(arm, f"{row['real']:.3f}", f"{row['sim']:.3f}",
                      f"{arm_sim['hit_rate_min']:.3f}-{arm_sim['hit_rate_max']:.3f}",
                      f"{row['difference']:+.3f}", "yes" if row["within_tolerance"] else "NO",
                      "-" if arm_matched is None else
                      f"{arm_matched['prefix_cache_hit_rate']:.3f}",
                      "-" if arm_matched is None else
                      "/".join(f"{f:.2g}" for f in arm_matched["replica_time_factors"]))
    console.print(table)
    verdict = "agrees" if comparison["ranking_agrees"] else (
        "differs only between arms within the tolerance"
        if comparison["ranking_agrees_beyond_tolerance"] else "differs")
    console.print(f"ranking real: {' > '.join(comparison['real_ranking'])}\n"
                  f"ranking sim:  {' > '.join(comparison['sim_ranking'])}  ({verdict})")


def compare_result(real_document: Mapping[str, Any], seeds: Sequence[int],
                   time_factors: Sequence[float] | None = None) -> dict[str, Any]:
    """The fitted simulator against a realvllm result written earlier (its cases rebuilt from
    the recorded quick flag and seed: the same requests)."""
    from kvgate.bench.scenarios.realvllm_cases import cases, requests_for

    out: dict[str, Any] = {}
    seed = int(real_document.get("seed", 0))
    for case in cases(bool(real_document.get("quick"))):
        case_document = real_document["cases"].get(case.name)
        if case_document is None:
            continue
        served = case_document["model"]["name"]
        real = {arm: n.get("prefix_cache_hit_rate")
                for arm, n in case_document["comparison"].items()}
        itl = {arm: n["engine_itl_mean_ms_per_replica"]
               for arm, n in case_document["comparison"].items()
               if n.get("engine_itl_mean_ms_per_replica")}
        out[case.name] = fitted_sim_section(
            requests_for(case, served, seed), model_kind=case.model,
            kv_cache_tokens=case.kv_cache_tokens, concurrency=case.concurrency, real=real,
            seeds=seeds, time_factors=time_factors, real_itl_ms=itl)
    return out


def recompared(section: dict[str, Any]) -> dict[str, Any]:
    """A recorded ``fitted_sim`` section with its comparisons made again by :func:`compare`
    (runs recorded by older code lack some of its verdicts); the figures are untouched."""
    for part in (section, section.get("speed_matched")):
        if part:
            real = {arm: row["real"] for arm, row in part["comparison"]["arms"].items()}
            part["comparison"] = compare(real, {arm: row["prefix_cache_hit_rate"]
                                                for arm, row in part["arms"].items()})
    return section


def summarize(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per case and arm, over several real runs: each run's real and speed-matched hit rate,
    each run's verdicts, and the mean of the real runs against the mean of the runs' simulated
    figures (the same requests and seeds each time)."""
    out: dict[str, Any] = {}
    for name in runs[0]:
        sections = [run[name] for run in runs if name in run]
        # Each run simulated with the routing code it ran: the same figures unless that changed.
        sim = {arm: round(statistics.fmean(sec["arms"][arm]["prefix_cache_hit_rate"]
                                           for sec in sections), 4)
               for arm in sections[0]["arms"]}
        real_runs = {arm: [sec["comparison"]["arms"][arm]["real"] for sec in sections
                           if arm in sec["comparison"]["arms"]] for arm in sim}
        mean_real = {arm: round(statistics.fmean(rates), 4)
                     for arm, rates in real_runs.items() if rates}
        matched = {arm: [sec.get("speed_matched", {}).get("arms", {}).get(arm, {})
                         .get("prefix_cache_hit_rate") for sec in sections] for arm in sim}
        per_run = [sec["comparison"] for sec in sections]
        out[name] = {
            "real_runs": real_runs, "speed_matched_runs": matched,
            "runs_max_abs_difference": [c["max_abs_difference"] for c in per_run],
            "runs_ranking_agrees": [c["ranking_agrees"] for c in per_run],
            "runs_ranking_agrees_beyond_tolerance": [c["ranking_agrees_beyond_tolerance"]
                                                     for c in per_run],
            "mean_of_real_runs": compare(mean_real, sim),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvgate.bench.scenarios.realvllm_sim",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", type=Path, nargs="+", required=True,
                        help="realvllm result JSON files (several: also a summary over them)")
    parser.add_argument("--recorded", action="store_true",
                        help="summarize the comparisons the runs recorded (fitted_sim), with "
                             "the routing code they ran, instead of simulating again")
    parser.add_argument("--seeds", type=int, default=SIM_SEEDS)
    parser.add_argument("--slow-replica", type=float, default=1.0, metavar="FACTOR",
                        help="what-if: the second simulated replica runs FACTOR times slower "
                             "(as when other work shares its core)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    from rich.console import Console

    factors = None if args.slow_replica == 1.0 else [1.0, args.slow_replica]
    console = Console()
    runs = []
    for path in args.real:
        real_document = json.loads(path.read_text())
        document = ({name: recompared(case["fitted_sim"])
                     for name, case in real_document["cases"].items()}
                    if args.recorded else
                    compare_result(real_document, range(args.seeds), factors))
        console.print(f"[bold]{path}")
        for name, section in document.items():
            print_comparison(name, section, console)
        runs.append(document)
    summary = summarize(runs)
    for name, row in summary.items():
        mean = row["mean_of_real_runs"]
        console.print(f"{name}, mean of {len(args.real)} real run(s): max |sim - real| "
                      f"{mean['max_abs_difference']}, ranking "
                      f"{'agrees' if mean['ranking_agrees'] else 'differs'} (beyond "
                      f"{TOLERANCE}: {mean['ranking_agrees_beyond_tolerance']}); per run: "
                      f"{row['runs_ranking_agrees']}")
    if args.out is not None:
        args.out.write_text(json.dumps({
            "command": "python -m kvgate.bench.scenarios.realvllm_sim " + " ".join(
                argv if argv is not None else sys.argv[1:]),
            "real": [str(path) for path in args.real],
            "replica_time_factors": factors or [1.0, 1.0], "summary": summary,
            "runs": [{"real": str(path), "cases": run} for path, run in zip(
                args.real, runs, strict=True)]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
