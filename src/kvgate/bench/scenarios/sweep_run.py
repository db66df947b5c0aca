"""One sweep cell: size the regime, then run every arm on the virtual fleet.

A cell is (workload, per-replica KV / working set, offered load, seed). Every arm in it gets
the same requests at the same planned times, a fresh fleet of :data:`REPLICAS` engines of the
same size, and the gateway's own strategy from its registry (:mod:`kvgate.bench.virtual_fleet`).
Times are simulated seconds; TTFT runs from the request's arrival at the replica to its first
token.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from kvgate.bench.request import BenchRequest
from kvgate.bench.scenarios.sweep_sizing import (
    RequestShape,
    fleet_capacity_per_s,
    live_working_set_blocks,
    max_request_blocks,
    request_shapes,
    slo_ttft_s,
)
from kvgate.bench.scenarios.sweep_workloads import SweepWorkload
from kvgate.bench.stats import distribution_ms
from kvgate.bench.virtual_fleet import VirtualFleet
from kvgate.bench.virtual_loads import Refusals, RequestBuilder
from kvgate.config.schema import KVEventsSettings, RoutingSettings
from kvgate.sim.engine import Engine, EngineConfig
from kvgate.sim.events import CollectingSink
from kvgate.sim.profiles import get_profile

#: Replicas per fleet: with 4, a KV/working-set ratio of 0.25-0.5 is "one replica cannot hold
#: the working set, the fleet can" (the fleet holds 1-2x it).
REPLICAS = 4
ArmRole = Literal["baseline", "kvgate_v1", "new"]


@dataclass(frozen=True, slots=True)
class Arm:
    """A strategy from the gateway's registry, by name."""

    name: str
    #: ``baseline``: a load balancer that knows nothing of KV (a stand-in for non-KVGate
    #: routers); ``kvgate_v1``: today's KV-aware scorer; ``new``: the scorer under test.
    role: ArmRole
    #: The engines publish KV events to the strategy, and its deployments name the replicas'
    #: tokenizer (``precise_kv``: token-exact block hashes matched against the events).
    kv_events: bool = False


ARMS: tuple[Arm, ...] = (
    Arm("round_robin", "baseline"),
    Arm("least_busy", "baseline"),
    Arm("prefix_kv_aware_v1", "kvgate_v1"),
    Arm("prefix_kv_aware", "new"),
    Arm("precise_kv", "new", kv_events=True),
)


@dataclass(frozen=True, slots=True)
class Regime:
    """A cell's sizes, the same for every arm."""

    kv_ratio_target: float
    load_target: float
    #: KV blocks per replica (block 0 is the null block: one more than the usable ones).
    kv_blocks: int
    #: Usable KV per replica / working set, as sized (the target unless a request needed more).
    kv_ratio: float
    working_set_blocks: float
    capacity_per_s: float
    rate_per_s: float
    slo_ttft_ms: float


@dataclass(frozen=True, slots=True)
class PreparedWorkload:
    """A workload's requests for one seed, and what sizing needs of them."""

    spec: SweepWorkload
    seed: int
    requests: list[BenchRequest]
    shapes: list[RequestShape]
    builder: RequestBuilder

    @classmethod
    def build(cls, spec: SweepWorkload, seed: int) -> PreparedWorkload:
        builder = RequestBuilder(get_profile(spec.profile))
        requests = spec.build(seed)
        return cls(spec, seed, requests, request_shapes(builder, [r.body for r in requests]),
                   builder)


def plan_regime(prepared: PreparedWorkload, kv_ratio: float, load: float
                ) -> tuple[Regime, list[float]]:
    """The regime for (KV ratio, load) and the requests' planned arrival times."""
    shapes = prepared.shapes
    capacity_per_s = fleet_capacity_per_s(shapes, REPLICAS)
    rate_per_s = load * capacity_per_s
    planned_s = prepared.spec.schedule.planned_arrivals_s(prepared.requests, shapes,
                                                          rate_per_s, prepared.seed)
    working_set = live_working_set_blocks(shapes, planned_s)
    block_size = prepared.builder.profile.block_size
    usable = max(math.ceil(kv_ratio * working_set), max_request_blocks(shapes, block_size))
    regime = Regime(
        kv_ratio_target=kv_ratio, load_target=load, kv_blocks=usable + 1,
        kv_ratio=round(usable / working_set, 4), working_set_blocks=round(working_set, 1),
        capacity_per_s=round(capacity_per_s, 4), rate_per_s=round(rate_per_s, 4),
        slo_ttft_ms=round(slo_ttft_s(shapes) * 1000, 3))
    return regime, planned_s


def run_arm(prepared: PreparedWorkload, regime: Regime, planned_s: Sequence[float], arm: Arm
            ) -> dict[str, Any]:
    """Every request of the cell through ``arm`` on a fresh fleet; the arm's figures."""
    wall_start_s = time.perf_counter()
    builder = prepared.builder
    profile = builder.profile
    sinks = [CollectingSink() for _ in range(REPLICAS)] if arm.kv_events else None
    engines = [Engine(profile, EngineConfig(num_gpu_blocks=regime.kv_blocks,
                                            enable_kv_events=arm.kv_events),
                      sink=None if sinks is None else sinks[i]) for i in range(REPLICAS)]
    settings = None
    if arm.kv_events:
        settings = [{"kv_events": KVEventsSettings(endpoint=f"inproc://replica-{i}"),
                     "tokenizer": f"kvgate-sim:{profile.name}"} for i in range(REPLICAS)]
    fleet = VirtualFleet(engines, arm.name, RoutingSettings(seed=prepared.seed),
                         model=builder.model, deployment_settings=settings, event_sinks=sinks)
    refusals = Refusals()
    schedule = prepared.spec.schedule
    source = schedule.source(prepared.requests, planned_s, builder, refusals, prepared.seed)
    asyncio.run(fleet.drive(source, schedule.pacing))
    return arm_figures(fleet, regime, len(prepared.requests), refusals,
                       wall_s=time.perf_counter() - wall_start_s)


def arm_figures(fleet: VirtualFleet, regime: Regime, offered: int, refusals: Refusals, *,
                wall_s: float) -> dict[str, Any]:
    """TTFT, goodput at the SLO, hit rate, load spread, refusals: one arm's row."""
    stats = [s for _, s in fleet.finished]
    ttfts_s = [s.ttft_s for s in stats if s.ttft_s is not None]
    start_s = min((s.arrival_s for s in stats), default=0.0)
    last_arrival_s = max((s.arrival_s for s in stats), default=0.0)
    duration_s = max((s.finished_s for s in stats), default=0.0) - start_s
    slo_s = regime.slo_ttft_ms / 1000
    met = sum(1 for t in ttfts_s if t <= slo_s)
    hits = sum(e.stats.prefix_cache_hits for e in fleet.engines)
    queries = sum(e.stats.prefix_cache_queries for e in fleet.engines)
    per_replica = list(fleet.requests_per_replica)
    return {
        "offered": offered,
        "finished": len(stats),
        "refused": dict(sorted(refusals.by_kind.items())),
        # Neither finished nor refused: must be 0 (drive() returns once nothing is pending).
        "lost": offered - len(stats) - refusals.total,
        "ttft_ms": distribution_ms(ttfts_s),
        "slo_met": round(met / offered, 4) if offered else None,
        "goodput_per_s": round(met / duration_s, 4) if duration_s > 0 else 0.0,
        "hit_rate": round(hits / queries, 4) if queries else None,
        "max_replica_share": round(max(per_replica) / sum(per_replica), 4)
        if sum(per_replica) else None,
        "per_replica_requests": per_replica,
        "preempted_requests": sum(1 for s in stats if s.num_preemptions),
        "busy_share": round(sum(e.stats.busy_time_s for e in fleet.engines)
                            / (len(fleet.engines) * duration_s), 4) if duration_s > 0 else None,
        "offered_per_s": round((len(stats) - 1) / (last_arrival_s - start_s), 4)
        if last_arrival_s > start_s else None,
        "route_outcomes": dict(sorted(fleet.outcomes.items())),
        "simulated_s": round(duration_s, 3),
        "wall_s": round(wall_s, 2),
    }


def run_cell(prepared: PreparedWorkload, kv_ratio: float, load: float, arms: Sequence[Arm]
             ) -> dict[str, Any]:
    """Every arm in one cell: the cell's document (regime, then one row per arm)."""
    regime, planned_s = plan_regime(prepared, kv_ratio, load)
    return {
        "workload": prepared.spec.name,
        "seed": prepared.seed,
        "regime": asdict(regime),
        "arms": {arm.name: run_arm(prepared, regime, planned_s, arm) for arm in arms},
    }
