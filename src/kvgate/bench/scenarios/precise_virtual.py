"""The ``precise`` scenario's routing policies on the in-process engine model (virtual time).

The HTTP fleet measures the whole path (ZMQ events, the gateway, the network) but shares this
small host's CPU with everything else running on it, which shows up in wall-clock TTFT. Here
the same workload goes through the same strategy objects into ``kvgate.sim`` engines on one
virtual clock (``VirtualCluster``): every replica's KV events reach the strategy as soon as the
engine step that produced them ends, load is each replica's in-flight count, and TTFT is the
engines' own (simulated seconds). Deterministic: same seed, same figures.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson

from kvgate.bench.request import BenchRequest
from kvgate.bench.stats import distribution_ms
from kvgate.config.schema import (
    DeploymentSettings,
    KVEventsSettings,
    MockProviderSettings,
    RoutingSettings,
)
from kvgate.core.deployment import Deployment, DeploymentId
from kvgate.providers.mock import MockProvider
from kvgate.request.parse import parse_call
from kvgate.routing.affinity import MemoryAffinityIndex
from kvgate.routing.base import RoutingStrategy
from kvgate.routing.load import InFlightLoad
from kvgate.routing.precise.strategy import PreciseKVAware
from kvgate.routing.prefix_kv_aware import PrefixKVAware
from kvgate.sim.engine import Engine, EngineConfig
from kvgate.sim.events import CollectingSink
from kvgate.sim.profiles import get_profile
from kvgate.sim.prompt import PromptRenderer
from kvgate.sim.request import EngineRequest, RequestOutput
from kvgate.sim.tokenizer import SimTokenizer
from kvgate.sim.virtual import VirtualCluster
from kvgate.vllm_compat.kv_events import KVEventBatch


class _Clock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def _deployments(count: int, arm: dict[str, Any]) -> list[Deployment]:
    out = []
    for i in range(count):
        settings: dict[str, Any] = {}
        if arm["strategy"] == "precise_kv":
            settings["kv_events"] = KVEventsSettings(endpoint=f"inproc://replica-{i}")
            if "tokenizer" in arm:
                settings["tokenizer"] = arm["tokenizer"]
        name = f"replica-{i}"
        out.append(Deployment(
            id=DeploymentId(name), provider_name=name,
            provider=MockProvider(name, MockProviderSettings(type="mock")), upstream_model=name,
            settings=DeploymentSettings(provider=name, model="fleet", **settings),
            resumes_streams=False,
        ))
    return out


def run_virtual_arm(arm: dict[str, Any], requests: Sequence[BenchRequest], *, profile_name: str,
                    replicas: int, kv_blocks: int, time_scale: float) -> dict[str, Any]:
    """One arm on ``replicas`` in-process engines. Each request arrives at its ``at_s`` (wall
    seconds on the fleet) x ``time_scale``: the fleet's simulated seconds, the same load."""
    arrivals_s = []
    for request in requests:
        if request.at_s is None:
            raise ValueError("the virtual arm needs requests with arrival times (at_s)")
        arrivals_s.append(request.at_s * time_scale)
    return asyncio.run(_run(arm, requests, arrivals_s, profile_name, replicas, kv_blocks))


async def _run(arm: dict[str, Any], requests: Sequence[BenchRequest], arrivals_s: list[float],
               profile_name: str, replicas: int, kv_blocks: int) -> dict[str, Any]:
    profile = get_profile(profile_name)
    clock = _Clock()
    sinks = [CollectingSink() for _ in range(replicas)]
    engines = [Engine(profile, EngineConfig(num_gpu_blocks=kv_blocks, enable_kv_events=True),
                      sink=sink) for sink in sinks]
    deployments = _deployments(replicas, arm)
    routing = RoutingSettings(strategy=arm["strategy"])
    affinity = MemoryAffinityIndex(max_blocks_per_deployment=1_000_000 // replicas,
                                   ttl_s=routing.prefix.ttl_s, clock=clock)
    strategy: RoutingStrategy
    precise: PreciseKVAware | None = None
    if arm["strategy"] == "precise_kv":
        precise = PreciseKVAware(deployments, routing, affinity, InFlightLoad(), clock=clock)
        strategy = precise
        states = [precise._plans[d].state for d in deployments]
        for state in states:
            assert state is not None
            state.synced("in-process: events delivered directly")
    else:
        strategy = PrefixKVAware(deployments, routing.prefix, affinity, InFlightLoad())
    delivered = [0] * replicas

    def on_output(index: int, output: RequestOutput) -> None:
        if output.stats is not None:
            deployments[index].stats.in_flight -= 1

    cluster = VirtualCluster(engines, on_output=on_output)
    renderer = PromptRenderer(profile, SimTokenizer())
    outcomes: dict[str, int] = {}
    for number, (request, now) in enumerate(zip(requests, arrivals_s, strict=True)):
        cluster.advance_to(now)
        clock.now_s = now
        if precise is not None:  # events of every step that has ended by now
            for index, sink in enumerate(sinks):
                state = precise._plans[deployments[index]].state
                assert state is not None
                for ts, events in sink.batches[delivered[index]:]:
                    state.apply(delivered[index], KVEventBatch(ts=ts, events=events), live=False)
                    delivered[index] += 1
        body = orjson.loads(request.body)
        call = parse_call(request.body, "chat", models={body["model"]}, max_image_bytes=1 << 20)
        prepare = getattr(strategy, "prepare", None)
        if prepare is not None:
            await prepare(call)
        decision = strategy.choose(call, deployments)
        strategy.on_dispatched(call, decision.deployment)
        outcome = str(decision.explanation.get("outcome"))
        if decision.explanation.get("returned_home"):
            outcome += " (returned home)"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        index = deployments.index(decision.deployment)
        decision.deployment.stats.in_flight += 1
        rendered = renderer.render_chat(body["messages"])
        cluster.submit(index, EngineRequest(f"r{number}", rendered.token_ids,
                                            [7] * request.max_output_tokens))
    cluster.run_until_idle()
    hits = sum(e.stats.prefix_cache_hits for e in engines)
    queries = sum(e.stats.prefix_cache_queries for e in engines)
    ttft = distribution_ms(s.first_token_s - s.arrival_s for _, s in cluster.finished
                           if s.first_token_s is not None)
    return {
        "requests": len(cluster.finished),
        "prefix_cache_hit_rate": round(hits / queries, 4) if queries else None,
        "ttft_ms": ttft,
        "route_outcomes": dict(sorted(outcomes.items())),
        "per_replica_requests": [sum(1 for i, _ in cluster.finished if i == r)
                                 for r in range(replicas)],
        "simulated_s": round(cluster.now_s, 3),
    }
