"""The routing scenario's cases on the in-process engine model, in virtual time.

The HTTP run measures the whole path (load generator, gateway, replica processes), but on a
small host shared with other work its wall-clock latencies carry that host's CPU contention.
Here the same requests go through the gateway's own routing code into the same ``kvgate.sim``
engines on one virtual clock, so the figures are the model's alone and reproducible exactly
(same seed, same numbers):

- each body is parsed by :func:`kvgate.request.parse.parse_call` (image digests and vision-token
  counts included) and routed by the strategy :func:`kvgate.routing.build_strategy` builds, with
  the in-memory affinity index on the virtual clock and load = each deployment's in-flight
  count (what a single gateway knows exactly);
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
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import orjson

from kvgate.bench.engine_counters import EngineCounters
from kvgate.bench.loadgen import conversation_chains
from kvgate.bench.request import BenchRequest, RequestRecord
from kvgate.config.schema import DeploymentSettings, MockProviderSettings, RoutingSettings
from kvgate.core.deployment import Deployment, DeploymentId
from kvgate.providers.mock import MockProvider
from kvgate.request.parse import parse_call
from kvgate.routing import RoutingContext, build_strategy
from kvgate.routing.affinity import MemoryAffinityIndex
from kvgate.sim import openai_api
from kvgate.sim.engine import Engine, EngineConfig
from kvgate.sim.prompt import PromptRenderer
from kvgate.sim.request import EngineRequest, RequestOutput
from kvgate.sim.tokenizer import SimTokenizer
from kvgate.sim.virtual import VirtualCluster

#: A freed worker sends its next request at most this much simulated time later (the HTTP
#: load generator's own turnaround is a few hundred microseconds of wall time).
DISPATCH_QUANTUM_S = 0.002
_MAX_IMAGE_BYTES = 64 << 20
#: Offset of the affinity index's clock: its whole-second ticks never start at 0.
_CLOCK_OFFSET_S = 1000.0


@dataclass(slots=True)
class VirtualRun:
    """One strategy's run: records in simulated seconds, engine counters, route verdicts."""

    records: list[RequestRecord]
    engine: list[EngineCounters]
    route_outcomes: dict[str, int]
    simulated_s: float
    deployment_ids: list[str] = field(default_factory=list)


class _Clock:
    def __init__(self) -> None:
        self.now_s = _CLOCK_OFFSET_S

    def __call__(self) -> float:
        return self.now_s


def _deployments(count: int, model: str) -> list[Deployment]:
    """Deployments for the strategy to choose among; their providers are never called."""
    out = []
    for i in range(count):
        name = f"replica-{i}"
        out.append(Deployment(
            id=DeploymentId(name), provider_name=name,
            provider=MockProvider(name, MockProviderSettings(type="mock")), upstream_model=model,
            settings=DeploymentSettings(provider=name, model=model), resumes_streams=False,
        ))
    return out


def _counters(engine: Engine) -> EngineCounters:
    stats = engine.stats
    return EngineCounters(
        prefix_cache_queries=stats.prefix_cache_queries,
        prefix_cache_hits=stats.prefix_cache_hits,
        preemptions=stats.num_preemptions,
        busy_s=stats.busy_time_s,
    )


def run_virtual(requests: Sequence[BenchRequest], *, strategy: str, profile_name: str,
                replicas: int, kv_blocks: int | None, concurrency: int, think_s: float = 0.0,
                seed: int = 0, routing: RoutingSettings | None = None) -> VirtualRun:
    """Route ``requests`` with ``strategy`` onto ``replicas`` engines, closed loop; a
    conversation's next turn is sent ``think_s`` after the previous answer ended."""
    return asyncio.run(_run(requests, strategy, profile_name, replicas, kv_blocks, concurrency,
                            think_s, seed, routing or RoutingSettings(strategy=strategy,
                                                                      seed=seed)))


async def _run(requests: Sequence[BenchRequest], strategy_name: str, profile_name: str,
               replicas: int, kv_blocks: int | None, concurrency: int, think_s: float,
               seed: int, routing: RoutingSettings) -> VirtualRun:
    from kvgate.sim.profiles import get_profile

    profile = get_profile(profile_name)
    engines = [Engine(profile, EngineConfig(num_gpu_blocks=kv_blocks)) for _ in range(replicas)]
    model = orjson.loads(requests[0].body)["model"] if requests else strategy_name
    deployments = _deployments(replicas, model)
    clock = _Clock()

    def affinity_index() -> MemoryAffinityIndex:
        # What gateway/compose.py builds for the memory backend, on the virtual clock.
        return MemoryAffinityIndex(
            max_blocks_per_deployment=max(1, routing.prefix.max_tracked_blocks // replicas),
            ttl_s=routing.prefix.ttl_s, clock=clock,
        )

    strategy = build_strategy(strategy_name, deployments, routing,
                              RoutingContext(affinity_index=affinity_index))
    prepare = getattr(strategy, "prepare", None)
    renderer = PromptRenderer(profile, SimTokenizer())
    records: list[RequestRecord | None] = [None] * len(requests)
    by_request_id: dict[str, tuple[int, int]] = {}  # request id -> (request index, worker)
    outcomes: Counter[str] = Counter()
    chains: Iterator[list[int]] = iter(conversation_chains(requests))
    # Each worker's current conversation and how many of its turns were sent.
    conversation: list[list[int]] = [[] for _ in range(concurrency)]
    sent = [0] * concurrency
    # (due time, tie-break, worker): workers waiting to send their next request.
    due: list[tuple[float, int, int]] = [(0.0, w, w) for w in range(concurrency)]
    order = itertools.count(concurrency)
    request_ids = itertools.count()
    rng = random.Random(f"routing.virtual:{seed}")

    def on_output(engine_index: int, output: RequestOutput) -> None:
        stats = output.stats
        if stats is None:
            return
        index, worker = by_request_id.pop(output.request_id)
        deployments[engine_index].stats.in_flight -= 1
        record = records[index]
        assert record is not None
        record.end_s = stats.finished_s
        record.ttft_s = stats.ttft_s
        record.output_tokens = stats.num_output_tokens
        record.prompt_tokens = stats.num_prompt_tokens
        record.status = 200
        more_turns = sent[worker] < len(conversation[worker])
        pause_s = think_s if more_turns else 0.0
        heapq.heappush(due, (stats.finished_s + pause_s, next(order), worker))

    cluster = VirtualCluster(engines, on_output=on_output)

    async def dispatch(worker: int) -> None:
        if sent[worker] >= len(conversation[worker]):
            chain = next(chains, None)
            if chain is None:
                return
            conversation[worker], sent[worker] = chain, 0
        index = conversation[worker][sent[worker]]
        sent[worker] += 1
        request = requests[index]
        call = parse_call(request.body, "chat", models={model},
                          max_image_bytes=_MAX_IMAGE_BYTES)
        if prepare is not None:
            await prepare(call)
        decision = strategy.choose(call, deployments)
        strategy.on_dispatched(call, decision.deployment)
        outcome = decision.explanation.get("outcome")
        if outcome is not None:
            outcomes[str(outcome)] += 1
        engine_index = deployments.index(decision.deployment)
        decision.deployment.stats.in_flight += 1
        request_id = f"r{next(request_ids)}"
        generation = openai_api.parse_generation(request.body, "chat", renderer, model,
                                                 request_id)
        records[index] = RequestRecord(index, request.tag, request.session, cluster.now_s,
                                       start_s=cluster.now_s,
                                       deployment=decision.deployment.id)
        by_request_id[request_id] = (index, worker)
        cluster.submit(engine_index, EngineRequest(
            request_id=request_id, prompt_token_ids=generation.prompt.token_ids,
            output_token_ids=generation.answer.token_ids,
            final_finish_reason=generation.answer.finish_reason,
            mm_items=generation.prompt.mm_items, cache_salt=generation.cache_salt,
        ), generation.prompt.num_image_tokens)

    while due or by_request_id:
        ready: list[int] = []
        while due and due[0][0] <= cluster.now_s:
            ready.append(heapq.heappop(due)[2])
        rng.shuffle(ready)
        for worker in ready:
            await dispatch(worker)
        if not due and not by_request_id:
            break
        cluster.advance_to(cluster.now_s + DISPATCH_QUANTUM_S)
        clock.now_s = _CLOCK_OFFSET_S + cluster.now_s
    done = [r for r in records if r is not None]
    return VirtualRun(records=done, engine=[_counters(e) for e in engines],
                      route_outcomes=dict(sorted(outcomes.items())),
                      simulated_s=round(max((r.end_s for r in done), default=0.0), 3),
                      deployment_ids=[d.id for d in deployments])
