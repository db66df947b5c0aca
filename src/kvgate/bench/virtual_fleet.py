"""The one virtual fleet: the gateway's routing in front of in-process engines, in virtual time.

Every in-process scenario (``scale``, ``offload`` and the virtual runs of ``routing`` and
``precise``) runs on :class:`VirtualFleet`: no HTTP, no gateway process, no sleeping, and the
routing path is the gateway's own:

- each body is parsed by :func:`kvgate.request.parse.parse_call`;
- the strategy comes from the gateway's registry (:func:`kvgate.routing.build_strategy`), with
  the affinity index the gateway's composer builds
  (:func:`kvgate.gateway.compose.affinity_index_factory`), and runs ``prepare`` / ``choose``
  / ``on_dispatched`` over :class:`~kvgate.core.deployment.Deployment` objects whose
  ``stats.in_flight`` follows the engines, so load-aware strategies see the engines' load;
- the chosen replica is an :class:`~kvgate.sim.engine.Engine` in a
  :class:`~kvgate.sim.virtual.VirtualCluster`; with KV event sinks, each replica's events
  reach a ``precise_kv`` strategy as soon as the engine step that produced them ends.

What varies between scenarios is only when requests arrive (an :class:`Arrivals` source, see
:mod:`kvgate.bench.virtual_loads`) and how the clock moves between arrivals (:class:`Pacing`)::

    fleet = VirtualFleet(engines, "prefix_kv_aware", RoutingSettings(seed=0), model="m")
    await fleet.drive(UserSessions(users, first_arrivals_s, think_s), Pacing(quantum_s=0.25))
    fleet.finished  # (engine index, RequestStats), times in simulated seconds

NOTE: the index the composer builds ages on the wall clock (the factory takes no clock). Every
run here lasts far less than the index's TTL (300 s by default) in both wall and simulated
time, so no entry expires in either; a run longer than the TTL would age entries by wall time.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kvgate.config.schema import (
    DeploymentSettings,
    MockProviderSettings,
    RedisSettings,
    RoutingSettings,
)
from kvgate.core.call import Call
from kvgate.core.deployment import Deployment, DeploymentId, EngineUsage
from kvgate.gateway.compose import SharedRedis, affinity_index_factory
from kvgate.providers.mock import MockProvider
from kvgate.request.parse import parse_call
from kvgate.routing import RoutingContext, RoutingStrategy, build_strategy, strategy_entry
from kvgate.routing.affinity import AffinityIndex, ServedTimes
from kvgate.sim.engine import Engine
from kvgate.sim.events import CollectingSink
from kvgate.sim.request import EngineRequest, RequestOutput, RequestStats
from kvgate.sim.virtual import VirtualCluster
from kvgate.vllm_compat.kv_events import KVEventBatch

#: Bodies larger than any bench workload's images; the gateway's own limit is a setting.
MAX_IMAGE_BYTES = 64 << 20
#: Offset of the router's clock: an index's whole-second ticks never start at 0.
_CLOCK_OFFSET_S = 1000.0

#: (virtual time, deployment id, hashes) of every affinity write, for :func:`index_bytes`.
Writes = list[tuple[float, str, Sequence[int]]]
#: Called once when a submitted request finishes, with its stats.
OnFinished = Callable[[RequestStats], None]
#: A route verdict's label for the outcome counts, from the decision's explanation.
OutcomeLabel = Callable[[Mapping[str, Any]], str | None]


def explained_outcome(explanation: Mapping[str, Any]) -> str | None:
    """The strategy's own verdict ("hit", "cold", "spill"), when it gives one."""
    outcome = explanation.get("outcome")
    return None if outcome is None else str(outcome)


class VirtualClock:
    """The router's clock: simulated seconds since the run started (plus an offset)."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return _CLOCK_OFFSET_S + self.now_s


def make_deployments(count: int, model: str = "fleet",
                     settings: Sequence[Mapping[str, Any]] | None = None) -> list[Deployment]:
    """``replica-0`` ... serving ``model``; their mock providers are never called.

    ``settings``: extra deployment settings per replica (KV events, tokenizer)."""
    out = []
    for i in range(count):
        name = f"replica-{i}"
        extra = settings[i] if settings is not None else {}
        out.append(Deployment(
            id=DeploymentId(name), provider_name=name,
            provider=MockProvider(name, MockProviderSettings(type="mock")), upstream_model=model,
            settings=DeploymentSettings(provider=name, model=model, **extra),
            resumes_streams=False,
        ))
    return out


class RecordingIndex:
    """The composer's affinity index, keeping a reference to every write for
    :func:`index_bytes`.

    NOTE: appending a reference costs tens of nanoseconds inside the timed decision; copying
    the hashes would cost more.
    """

    def __init__(self, inner: AffinityIndex, clock: VirtualClock) -> None:
        self._inner = inner
        self._clock = clock
        self.writes: Writes = []

    async def match(self, hashes: Sequence[int], deployment_ids: Sequence[str]) -> list[int]:
        return await self._inner.match(hashes, deployment_ids)

    def record(self, deployment_id: str, hashes: Sequence[int]) -> None:
        self.writes.append((self._clock.now_s, deployment_id, hashes))
        self._inner.record(deployment_id, hashes)

    def forget(self, deployment_id: str) -> None:
        self._inner.forget(deployment_id)

    def size(self) -> int:
        return self._inner.size()

    async def flush(self) -> None:
        await self._inner.flush()


class RecordingServedIndex(RecordingIndex):
    """A recording index over one that keeps served times (:class:`ServedTimes`)."""

    def __init__(self, inner: AffinityIndex, clock: VirtualClock) -> None:
        assert isinstance(inner, ServedTimes)
        super().__init__(inner, clock)
        self._served = inner

    def served_s(self, deployment_id: str, block_hash: int) -> float | None:
        return self._served.served_s(deployment_id, block_hash)


def recording(inner: AffinityIndex, clock: VirtualClock) -> RecordingIndex:
    """``inner`` recorded, its served times passed through when it keeps them."""
    if isinstance(inner, ServedTimes):
        return RecordingServedIndex(inner, clock)
    return RecordingIndex(inner, clock)


def build_router(name: str, deployments: Sequence[Deployment], routing: RoutingSettings,
                 clock: VirtualClock) -> tuple[RoutingStrategy, RecordingIndex | None]:
    """The strategy as the gateway builds it; the index, if the strategy has one."""
    model = deployments[0].settings.model if deployments else "fleet"
    # NOTE: the index on the simulated clock: on the wall clock its TTL never passed within a
    # run (minutes of simulated time take seconds).
    new_index = affinity_index_factory(model, routing, len(deployments),
                                       SharedRedis(RedisSettings().url), clock)
    made: list[RecordingIndex] = []

    def index() -> AffinityIndex:
        made.append(recording(new_index(), clock))
        return made[-1]

    strategy = build_strategy(name, deployments, routing,
                              RoutingContext(affinity_index=index, clock=clock))
    return strategy, (made[0] if made else None)


def index_bytes(writes: Writes, model: str, routing: RoutingSettings, num_deployments: int
                ) -> tuple[int, int]:
    """(entries, bytes) of a fresh index as the composer builds it, given ``writes``, measured
    by tracemalloc.

    Replayed rather than traced during the run: tracing every allocation would slow the
    simulation severalfold and count the engines' allocations too.
    """
    import tracemalloc

    new_index = affinity_index_factory(model, routing, num_deployments,
                                       SharedRedis(RedisSettings().url))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        index = new_index()
        for _, deployment_id, hashes in writes:
            index.record(deployment_id, hashes)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return index.size(), used


@dataclass(frozen=True, slots=True)
class Pacing:
    """How the clock moves between dispatches.

    ``exact``: jump straight to the next due arrival, never further than ``quantum_s`` (with
    nothing due: ``quantum_s`` on, or to the next engine event when it is infinite). Not exact:
    step by ``quantum_s`` and dispatch what fell due within the step, as a client that wakes
    up periodically does. A request that finishes within a jump can only be followed up after
    it, so closed-loop sources wait at least ``quantum_s`` before a follow-up turn.
    """

    quantum_s: float = math.inf
    exact: bool = True


class Arrivals(Protocol):
    """Where requests come from, and when."""

    def next_due_s(self) -> float | None:
        """The earliest time a request is due; None while none is waiting to be sent."""
        ...

    async def dispatch_due(self, fleet: VirtualFleet) -> None:
        """Send every request due at or before ``fleet.now_s`` (via ``route`` / ``submit``)."""
        ...


class VirtualFleet:
    """Engines on one virtual clock, behind the gateway's strategy ``strategy_name`` (or
    behind none, for callers that pick the engine themselves)."""

    def __init__(self, engines: Sequence[Engine], strategy_name: str | None,
                 routing: RoutingSettings | None = None, *, model: str = "fleet",
                 deployment_settings: Sequence[Mapping[str, Any]] | None = None,
                 event_sinks: Sequence[CollectingSink] | None = None,
                 outcome_label: OutcomeLabel = explained_outcome) -> None:
        self.engines = list(engines)
        self.model = model
        self.deployments = make_deployments(len(self.engines), model, deployment_settings)
        self._position = {d: i for i, d in enumerate(self.deployments)}
        self.clock = VirtualClock()
        self.strategy: RoutingStrategy | None = None
        self.index: RecordingIndex | None = None
        self._prepares = self._observes = False
        if strategy_name is not None:
            entry = strategy_entry(strategy_name)
            self._prepares, self._observes = entry.prepares, entry.observes_progress
            self.strategy, self.index = build_router(
                strategy_name, self.deployments, routing or RoutingSettings(), self.clock)
        self._outcome_label = outcome_label
        self._models = frozenset({model})
        self._pending: dict[str, tuple[int, OnFinished]] = {}
        # Routed calls the strategy follows to their end (first token, release).
        self._followed: dict[str, tuple[Call, Deployment]] = {}
        for deployment, engine in zip(self.deployments, self.engines, strict=True):
            # What the gateway's scraper reads from vllm:cache_config_info.
            deployment.stats.engine_kv_capacity_tokens = float(
                engine.pool.num_gpu_blocks * engine.profile.block_size)
        self._sinks = list(event_sinks or ())
        self._delivered = [0] * len(self._sinks)
        self._event_states = (_replica_states(self.strategy, self.deployments)
                              if self._sinks else [])
        self.cluster = VirtualCluster(self.engines, on_output=self._on_output)
        #: prepare + choose + on_dispatched per routed request: wall time (perf_counter_ns)
        #: and this thread's CPU time (thread_time_ns: not inflated when the OS deschedules
        #: the process on a busy machine, but it includes ~1 us of the clock call itself).
        self.decision_ns: list[int] = []
        self.decision_cpu_ns: list[int] = []
        self.outcomes: dict[str, int] = {}
        self.requests_per_replica = [0] * len(self.engines)

    @property
    def now_s(self) -> float:
        return self.cluster.now_s

    @property
    def finished(self) -> list[tuple[int, RequestStats]]:
        """(engine index, stats) of every finished request, in finishing order."""
        return self.cluster.finished

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def route(self, body: bytes, request_id: str) -> int:
        """Route one chat body now, as the gateway would; returns the chosen engine's index."""
        assert self.strategy is not None, "a fleet without a strategy does not route"
        call = parse_call(body, "chat", models=self._models, max_image_bytes=MAX_IMAGE_BYTES,
                          received_s=self.now_s, request_id=request_id)
        strategy = self.strategy
        started_cpu_ns = time.thread_time_ns()
        started_ns = time.perf_counter_ns()
        if self._prepares:
            await strategy.prepare(call)
        decision = strategy.choose(call, self.deployments)
        strategy.on_dispatched(call, decision.deployment)
        if self._observes:
            self._followed[request_id] = (call, decision.deployment)
        self.decision_ns.append(time.perf_counter_ns() - started_ns)
        self.decision_cpu_ns.append(time.thread_time_ns() - started_cpu_ns)
        label = self._outcome_label(decision.explanation)
        if label is not None:
            self.outcomes[label] = self.outcomes.get(label, 0) + 1
        return self._position[decision.deployment]

    def submit(self, engine_index: int, request: EngineRequest, num_image_tokens: int,
               on_finished: OnFinished) -> None:
        """The request arrives now at the engine; counted in flight on its deployment until
        it finishes, when ``on_finished`` gets its stats."""
        self.deployments[engine_index].stats.in_flight += 1
        self.requests_per_replica[engine_index] += 1
        self._pending[request.request_id] = (engine_index, on_finished)
        self.cluster.submit(engine_index, request, num_image_tokens)

    async def drive(self, arrivals: Arrivals, pacing: Pacing) -> None:
        """Dispatch ``arrivals`` until none is left and every request has finished."""
        cluster = self.cluster
        # NOTE: the engines' block objects live for the whole run; frozen, the collector stops
        # rescanning them, so its pauses stop landing in the timed decisions.
        gc.collect()
        gc.freeze()
        try:
            while True:
                await arrivals.dispatch_due(self)
                due_s = arrivals.next_due_s()
                if due_s is None and not self._pending:
                    return
                target_s = cluster.now_s + pacing.quantum_s
                if pacing.exact and due_s is not None:
                    target_s = min(target_s, due_s)
                elif math.isinf(target_s):  # nothing due: on to the next engine event
                    next_s = cluster.next_event_s()
                    if next_s is None:
                        raise RuntimeError("requests in flight but no engine has work")
                    target_s = next_s
                self.advance_to(target_s)
        finally:
            gc.unfreeze()

    def advance_to(self, t_s: float) -> None:
        """Run the engines up to ``t_s``; then hand the router every KV event emitted so far."""
        self.cluster.advance_to(t_s)
        self.clock.now_s = self.cluster.now_s
        if self._sinks:
            self._deliver_events()

    def _on_output(self, _: int, output: RequestOutput) -> None:
        # NOTE: runs inside the cluster's event loop; callbacks may only queue work.
        followed = self._followed.get(output.request_id) if self._observes else None
        if followed is not None:
            assert self.strategy is not None
            self.clock.now_s = self.cluster.now_s
            if output.first_output_index == 0 and output.new_token_ids:
                self.strategy.on_first_token(*followed)
            if output.stats is not None:
                del self._followed[output.request_id]
                stats = output.stats
                # What the replica's usage would say (the simulator's HTTP server reports the
                # same: offloaded tokens count as cached).
                self.strategy.on_released(*followed, stats.num_output_tokens, EngineUsage(
                    stats.num_prompt_tokens,
                    max(stats.num_cached_tokens, 0) + stats.num_offloaded_tokens)
                    if stats.num_prompt_tokens > 0 else None)
        if output.stats is None:
            return
        engine_index, on_finished = self._pending.pop(output.request_id)
        self.deployments[engine_index].stats.in_flight -= 1
        on_finished(output.stats)

    def _deliver_events(self) -> None:
        # The gateway's subscriber would apply these batches as they come off the socket;
        # in-process, each replica's state is fed directly (in order, never live).
        for index, sink in enumerate(self._sinks):
            state = self._event_states[index]
            for ts, events in sink.batches[self._delivered[index]:]:
                state.apply(self._delivered[index], KVEventBatch(ts=ts, events=events),
                            live=False)
                self._delivered[index] += 1


def _replica_states(strategy: RoutingStrategy | None, deployments: Sequence[Deployment]
                    ) -> list[Any]:
    """Each deployment's KV event state in a precise_kv strategy, marked synced (every event
    will be delivered, none lost).

    NOTE: reads the strategy's private plans: it has no public hook for events that do not
    come over ZMQ, and the subscriber it would use needs a replica to connect to.
    """
    plans = getattr(strategy, "_plans", None)
    if plans is None:
        raise ValueError("KV event sinks need the precise_kv strategy")
    states = [plans[d].state for d in deployments]
    for state in states:
        assert state is not None, "every replica publishes KV events"
        state.synced("in-process: events delivered directly")
    return states
