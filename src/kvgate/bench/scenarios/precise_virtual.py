"""The ``precise`` scenario's routing policies on the in-process engine model (virtual time).

The HTTP fleet measures the whole path (ZMQ events, the gateway, the network) but shares this
small host's CPU with everything else running on it, which shows up in wall-clock TTFT. Here
the same workload goes through the gateway's strategies into ``kvgate.sim`` engines on the
virtual fleet (:mod:`kvgate.bench.virtual_fleet`): every replica's KV events reach the
strategy as soon as the engine step that produced them ends, load is each replica's in-flight
count, and TTFT is the engines' own (simulated seconds). Deterministic: same seed, same figures.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from kvgate.bench.request import BenchRequest
from kvgate.bench.stats import distribution_ms
from kvgate.bench.virtual_fleet import Pacing, VirtualFleet
from kvgate.config.schema import KVEventsSettings, RoutingSettings
from kvgate.sim.engine import Engine, EngineConfig
from kvgate.sim.events import CollectingSink
from kvgate.sim.profiles import get_profile
from kvgate.sim.prompt import PromptRenderer
from kvgate.sim.request import EngineRequest, RequestStats
from kvgate.vllm_compat.sim_tokenizer import MemoTokenizer


def _deployment_settings(replicas: int, arm: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for i in range(replicas):
        settings: dict[str, Any] = {}
        if arm["strategy"] == "precise_kv":
            settings["kv_events"] = KVEventsSettings(endpoint=f"inproc://replica-{i}")
            if "tokenizer" in arm:
                settings["tokenizer"] = arm["tokenizer"]
        out.append(settings)
    return out


def _outcome_label(explanation: Mapping[str, Any]) -> str:
    outcome = str(explanation.get("outcome"))
    return outcome + " (returned home)" if explanation.get("returned_home") else outcome


class _Arrivals:
    """Open loop: each request at its own time, whatever the fleet is doing."""

    def __init__(self, requests: Sequence[BenchRequest], arrivals_s: Sequence[float],
                 renderer: PromptRenderer) -> None:
        self._requests = requests
        self._arrivals_s = arrivals_s
        self._renderer = renderer
        self._next = 0

    def next_due_s(self) -> float | None:
        return self._arrivals_s[self._next] if self._next < len(self._requests) else None

    async def dispatch_due(self, fleet: VirtualFleet) -> None:
        while self._next < len(self._requests) and self._arrivals_s[self._next] <= fleet.now_s:
            number, request = self._next, self._requests[self._next]
            self._next += 1
            request_id = f"r{number}"
            target = await fleet.route(request.body, request_id)
            rendered = self._renderer.render_chat(orjson.loads(request.body)["messages"])
            fleet.submit(target, EngineRequest(request_id, rendered.token_ids,
                                               [7] * request.max_output_tokens),
                         0, _ignore)


def _ignore(_: RequestStats) -> None:
    pass


def run_virtual_arm(arm: dict[str, Any], requests: Sequence[BenchRequest], *, profile_name: str,
                    replicas: int, kv_blocks: int, time_scale: float) -> dict[str, Any]:
    """One arm on ``replicas`` in-process engines. Each request arrives at its ``at_s`` (wall
    seconds on the fleet) x ``time_scale``: the fleet's simulated seconds, the same load."""
    arrivals_s = []
    for request in requests:
        if request.at_s is None:
            raise ValueError("the virtual arm needs requests with arrival times (at_s)")
        arrivals_s.append(request.at_s * time_scale)
    profile = get_profile(profile_name)
    precise = arm["strategy"] == "precise_kv"
    sinks = [CollectingSink() for _ in range(replicas)]
    engines = [Engine(profile, EngineConfig(num_gpu_blocks=kv_blocks, enable_kv_events=True),
                      sink=sink) for sink in sinks]
    model = orjson.loads(requests[0].body)["model"] if requests else "fleet"
    fleet = VirtualFleet(engines, arm["strategy"], RoutingSettings(strategy=arm["strategy"]),
                         model=model, deployment_settings=_deployment_settings(replicas, arm),
                         event_sinks=sinks if precise else None, outcome_label=_outcome_label)
    renderer = PromptRenderer(profile, MemoTokenizer())
    asyncio.run(fleet.drive(_Arrivals(requests, arrivals_s, renderer), Pacing()))
    finished = fleet.finished
    hits = sum(e.stats.prefix_cache_hits for e in engines)
    queries = sum(e.stats.prefix_cache_queries for e in engines)
    ttft = distribution_ms(s.first_token_s - s.arrival_s for _, s in finished
                           if s.first_token_s is not None)
    return {
        "requests": len(finished),
        "prefix_cache_hit_rate": round(hits / queries, 4) if queries else None,
        "ttft_ms": ttft,
        "route_outcomes": dict(sorted(fleet.outcomes.items())),
        "per_replica_requests": [sum(1 for i, _ in finished if i == r)
                                 for r in range(replicas)],
        "simulated_s": round(fleet.now_s, 3),
    }
