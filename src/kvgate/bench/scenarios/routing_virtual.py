"""The routing scenario's cases on the in-process engine model, in virtual time.

The HTTP run measures the whole path (load generator, gateway, replica processes), but on a
small host shared with other work its wall-clock latencies carry that host's CPU contention.
Here the same requests go through the gateway's own routing code into the same ``kvgate.sim``
engines on one virtual clock, so the figures are the model's alone and reproducible exactly
(same seed, same numbers):

- each body is parsed and routed by the gateway's own code on the virtual fleet
  (:mod:`kvgate.bench.virtual_fleet`: image digests and vision-token counts included), load =
  each deployment's in-flight count (what a single gateway knows exactly);
- the chosen engine gets the request a ``kvgate sim`` replica would build from that body;
- closed loop as in :mod:`kvgate.bench.loadgen`: ``concurrency`` workers, each sending the
  next conversation's turns one after another (a think time after each answer), a worker
  sending its next request within :data:`DISPATCH_QUANTUM_S` of simulated time once due.
  Workers due in the same quantum send in a seeded random order: requests that finish in the
  same engine step would otherwise come back in lockstep, and round robin would hand every
  worker the same replica each time, which no real client's timing does.

Times are simulated seconds (modelled GPU time); TTFT runs from dispatch (the request enters
the replica's front end) to the first token.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from kvgate.bench.engine_counters import EngineCounters
from kvgate.bench.loadgen import conversation_chains
from kvgate.bench.request import BenchRequest, RequestRecord
from kvgate.bench.virtual_fleet import Pacing, VirtualFleet
from kvgate.bench.virtual_loads import RequestBuilder
from kvgate.config.schema import RoutingSettings
from kvgate.sim.engine import Engine, EngineConfig
from kvgate.sim.events import CollectingSink
from kvgate.sim.profiles import get_profile
from kvgate.sim.request import RequestStats

#: A freed worker sends its next request at most this much simulated time later (the HTTP
#: load generator's own turnaround is a few hundred microseconds of wall time).
DISPATCH_QUANTUM_S = 0.002


@dataclass(slots=True)
class VirtualRun:
    """One strategy's run: records in simulated seconds, engine counters, route verdicts."""

    records: list[RequestRecord]
    engine: list[EngineCounters]
    route_outcomes: dict[str, int]
    simulated_s: float
    deployment_ids: list[str] = field(default_factory=list)


def _counters(engine: Engine) -> EngineCounters:
    stats = engine.stats
    return EngineCounters(
        prefix_cache_queries=stats.prefix_cache_queries,
        prefix_cache_hits=stats.prefix_cache_hits,
        preemptions=stats.num_preemptions,
        busy_s=stats.busy_time_s,
    )


class _Workers:
    """``concurrency`` workers, each sending one conversation's turns in order, then the next
    conversation's; workers due in the same quantum send in a seeded random order."""

    def __init__(self, requests: Sequence[BenchRequest], builder: RequestBuilder,
                 concurrency: int, think_s: float, seed: int) -> None:
        self._requests = requests
        self._builder = builder
        self._think_s = think_s
        self.records: list[RequestRecord | None] = [None] * len(requests)
        self._chains: Iterator[list[int]] = iter(conversation_chains(requests))
        # Each worker's current conversation and how many of its turns were sent.
        self._conversation: list[list[int]] = [[] for _ in range(concurrency)]
        self._sent = [0] * concurrency
        # (due time, tie-break, worker): workers waiting to send their next request.
        self._due: list[tuple[float, int, int]] = [(0.0, w, w) for w in range(concurrency)]
        self._order = itertools.count(concurrency)
        self._request_ids = itertools.count()
        self._rng = random.Random(f"routing.virtual:{seed}")

    def next_due_s(self) -> float | None:
        return self._due[0][0] if self._due else None

    async def dispatch_due(self, fleet: VirtualFleet) -> None:
        ready: list[int] = []
        while self._due and self._due[0][0] <= fleet.now_s:
            ready.append(heapq.heappop(self._due)[2])
        self._rng.shuffle(ready)
        for worker in ready:
            await self._dispatch(fleet, worker)

    async def _dispatch(self, fleet: VirtualFleet, worker: int) -> None:
        if self._sent[worker] >= len(self._conversation[worker]):
            chain = next(self._chains, None)
            if chain is None:
                return
            self._conversation[worker], self._sent[worker] = chain, 0
        index = self._conversation[worker][self._sent[worker]]
        self._sent[worker] += 1
        request = self._requests[index]
        request_id = f"r{next(self._request_ids)}"
        target = await fleet.route(request.body, request_id)
        engine_request, generation = self._builder.build(request.body, request_id)
        record = RequestRecord(index, request.tag, request.session, fleet.now_s,
                               start_s=fleet.now_s, deployment=fleet.deployments[target].id)
        self.records[index] = record
        fleet.submit(target, engine_request, generation.prompt.num_image_tokens,
                     lambda stats: self._finished(record, worker, stats))

    def _finished(self, record: RequestRecord, worker: int, stats: RequestStats) -> None:
        record.end_s = stats.finished_s
        record.ttft_s = stats.ttft_s
        record.output_tokens = stats.num_output_tokens
        record.prompt_tokens = stats.num_prompt_tokens
        record.status = 200
        more_turns = self._sent[worker] < len(self._conversation[worker])
        pause_s = self._think_s if more_turns else 0.0
        heapq.heappush(self._due, (stats.finished_s + pause_s, next(self._order), worker))


def run_virtual(requests: Sequence[BenchRequest], *, strategy: str, profile_name: str,
                replicas: int, kv_blocks: int | None, concurrency: int, think_s: float = 0.0,
                seed: int = 0, routing: RoutingSettings | None = None,
                deployment_settings: Sequence[Mapping[str, Any]] | None = None,
                kv_events: bool = False,
                replica_time_factors: Sequence[float] | None = None) -> VirtualRun:
    """Route ``requests`` with ``strategy`` onto ``replicas`` engines, closed loop; a
    conversation's next turn is sent ``think_s`` after the previous answer ended.

    ``deployment_settings``: extra settings per deployment (block size, tokenizer, image
    tokens, KV events), as a gateway config gives them; ``kv_events``: every engine's KV events
    reach the strategy (``precise_kv``, whose deployments then need ``kv_events`` settings);
    ``replica_time_factors``: replica i runs that many times slower than the profile."""
    profile = get_profile(profile_name)
    factors = list(replica_time_factors or [1.0] * replicas)
    sinks = [CollectingSink() for _ in range(replicas)] if kv_events else None
    engines = [Engine(profile if factors[i] == 1.0 else profile.slowed(factors[i]),
                      EngineConfig(num_gpu_blocks=kv_blocks, enable_kv_events=kv_events),
                      sink=None if sinks is None else sinks[i]) for i in range(replicas)]
    model = orjson.loads(requests[0].body)["model"] if requests else strategy
    fleet = VirtualFleet(engines, strategy, routing or RoutingSettings(strategy=strategy,
                                                                        seed=seed), model=model,
                         deployment_settings=deployment_settings, event_sinks=sinks)
    workers = _Workers(requests, RequestBuilder(profile, model=model), concurrency, think_s, seed)
    asyncio.run(fleet.drive(workers, Pacing(quantum_s=DISPATCH_QUANTUM_S, exact=False)))
    done = [r for r in workers.records if r is not None]
    return VirtualRun(records=done, engine=[_counters(e) for e in engines],
                      route_outcomes=dict(sorted(fleet.outcomes.items())),
                      simulated_s=round(max((r.end_s for r in done), default=0.0), 3),
                      deployment_ids=[d.id for d in fleet.deployments])
