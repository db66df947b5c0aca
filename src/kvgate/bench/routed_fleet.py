"""The gateway's routing code in front of in-process simulated engines, on a virtual clock.

No HTTP and no gateway process, but the routing path is the gateway's own: each body is parsed
by :func:`kvgate.request.parse.parse_call`, and the strategy :func:`kvgate.routing.build_strategy`
builds (with the in-memory affinity index ``gateway/compose.py`` builds) runs ``prepare`` /
``choose`` / ``on_dispatched`` on it, over :class:`Deployment` objects whose ``stats.in_flight``
follows the engines, so the load guard sees their load. The chosen replica is an
:class:`~kvgate.sim.engine.Engine` in a :class:`~kvgate.sim.virtual.VirtualCluster`.

    fleet = RoutedFleet(engines, "prefix_kv_aware", RoutingSettings(seed=0))
    outcome = await fleet.run(users, first_arrivals, think_s=lambda: 2.0)

Users are closed loops: a user's next turn arrives a think time after the previous answer
finished, and carries that answer (what a chat client resends).
"""

from __future__ import annotations

import gc
import heapq
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kvgate.bench.virtual_fleet import RequestBuilder
from kvgate.config.schema import DeploymentSettings, MockProviderSettings, RoutingSettings
from kvgate.core.deployment import Deployment, DeploymentId
from kvgate.providers.mock import MockProvider
from kvgate.request.parse import parse_call
from kvgate.routing import RoutingContext, RoutingStrategy, build_strategy
from kvgate.routing.affinity import MemoryAffinityIndex
from kvgate.sim.engine import Engine
from kvgate.sim.request import RequestOutput, RequestStats
from kvgate.sim.virtual import VirtualCluster

#: The clock never jumps further than this without looking for new arrivals. Think times must
#: be at least this long, so that a follow-up turn is never due in the past.
QUANTUM_S = 0.25
MAX_IMAGE_BYTES = 20 << 20
#: Index clock offset: its whole-second ticks never start at 0.
_CLOCK_OFFSET_S = 1000.0

Writes = list[tuple[float, str, Sequence[int]]]


class Conversations(Protocol):
    """Where users' turns come from."""

    def next_body(self, user: int) -> bytes:
        """The user's next request body (OpenAI chat)."""
        ...

    def answered(self, user: int, answer: str) -> bool:
        """The engine answered the user's last turn; True while the user has turns left."""
        ...


def make_deployments(count: int, model: str = "fleet") -> list[Deployment]:
    """``replica-0`` ... as the gateway builds them; their mock provider is never called."""
    return [
        Deployment(id=DeploymentId(f"replica-{i}"), provider_name=f"replica-{i}",
                   provider=MockProvider(f"replica-{i}", MockProviderSettings(type="mock")),
                   upstream_model=model,
                   settings=DeploymentSettings(provider=f"replica-{i}", model=model),
                   resumes_streams=True)
        for i in range(count)
    ]


class VirtualClock:
    """The affinity index's clock: simulated seconds since the run started (plus an offset)."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return _CLOCK_OFFSET_S + self.now_s


class RecordingIndex(MemoryAffinityIndex):
    """The gateway's in-memory index, keeping a reference to every write for :func:`index_bytes`.

    NOTE: appending a reference costs tens of nanoseconds inside the timed decision; copying
    the hashes would cost more.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.writes: Writes = []

    def record(self, deployment_id: str, hashes: Sequence[int]) -> None:
        self.writes.append((self._clock(), deployment_id, hashes))
        super().record(deployment_id, hashes)


def build_router(name: str, deployments: Sequence[Deployment], routing: RoutingSettings,
                 clock: VirtualClock) -> tuple[RoutingStrategy, RecordingIndex | None]:
    """The strategy as ``gateway/compose.py`` builds it; the index, if the strategy has one."""
    made: list[RecordingIndex] = []
    max_blocks = max(1, routing.prefix.max_tracked_blocks // len(deployments))

    def index() -> RecordingIndex:
        made.append(RecordingIndex(max_blocks_per_deployment=max_blocks,
                                   ttl_s=routing.prefix.ttl_s, clock=clock))
        return made[-1]

    strategy = build_strategy(name, deployments, routing, RoutingContext(affinity_index=index))
    return strategy, (made[0] if made else None)


def index_bytes(writes: Writes, max_blocks_per_deployment: int, ttl_s: float
                ) -> tuple[int, int]:
    """(entries, bytes) of a fresh in-memory index given ``writes``, measured by tracemalloc.

    Replayed rather than traced during the run: tracing every allocation would slow the
    simulation severalfold and count the engines' allocations too.
    """
    clock = VirtualClock()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        index = MemoryAffinityIndex(max_blocks_per_deployment=max_blocks_per_deployment,
                                    ttl_s=ttl_s, clock=clock)
        for at_s, deployment_id, hashes in writes:
            clock.now_s = at_s - _CLOCK_OFFSET_S
            index.record(deployment_id, hashes)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return index.size(), used


@dataclass(slots=True)
class FleetOutcome:
    """What one run produced; times in simulated seconds, decisions in wall nanoseconds."""

    finished: list[tuple[int, RequestStats]]
    simulated_s: float
    #: prepare + choose + on_dispatched per request: wall time (perf_counter_ns) and this
    #: thread's CPU time (thread_time_ns: not inflated when the OS deschedules the process
    #: on a busy machine, but it includes ~1 us of the clock call itself).
    decision_ns: list[int]
    decision_cpu_ns: list[int]
    #: Router verdicts from the explanation ("hit", "cold", "spill"), when it gives them.
    outcomes: dict[str, int]
    requests_per_replica: list[int]
    busy_s_per_replica: list[float]
    index: RecordingIndex | None


@dataclass(slots=True)
class _Sent:
    user: int
    deployment: Deployment
    answer: str


@dataclass(slots=True)
class _State:
    arrivals: list[tuple[float, int]]
    sent: dict[str, _Sent] = field(default_factory=dict)
    decision_ns: list[int] = field(default_factory=list)
    decision_cpu_ns: list[int] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)


class RoutedFleet:
    """One routing strategy in front of ``engines``, driven by closed-loop users."""

    def __init__(self, engines: Sequence[Engine], builder: RequestBuilder, strategy_name: str,
                 routing: RoutingSettings) -> None:
        self.engines = list(engines)
        self.builder = builder
        self.deployments = make_deployments(len(self.engines), builder.model)
        self._position = {d: i for i, d in enumerate(self.deployments)}
        self.clock = VirtualClock()
        self.strategy, self.index = build_router(strategy_name, self.deployments, routing,
                                                 self.clock)
        self._prepare = getattr(self.strategy, "prepare", None)
        self.cluster = VirtualCluster(self.engines)
        self._models = frozenset({builder.model})
        self._requests_per_replica = [0] * len(self.engines)

    async def run(self, users: Conversations, first_arrivals_s: Sequence[float],
                  think_s: Callable[[], float]) -> FleetOutcome:
        """User ``i`` starts at ``first_arrivals_s[i]``; runs until every user is done."""
        state = _State([(at_s, user) for user, at_s in enumerate(first_arrivals_s)])
        heapq.heapify(state.arrivals)
        cluster = self.cluster
        # NOTE: the engines' block objects live for the whole run; frozen, the collector stops
        # rescanning them, so its pauses stop landing in the timed decisions.
        gc.collect()
        gc.freeze()
        try:
            while state.arrivals or state.sent:
                horizon_s = cluster.now_s + QUANTUM_S
                arrivals = state.arrivals
                target_s = min(arrivals[0][0], horizon_s) if arrivals else horizon_s
                self._finish(state, users, cluster.advance_to(target_s), think_s)
                self.clock.now_s = cluster.now_s
                while arrivals and arrivals[0][0] <= cluster.now_s:
                    _, user = heapq.heappop(arrivals)
                    await self._route(state, users, user)
        finally:
            gc.unfreeze()
        return FleetOutcome(
            finished=cluster.finished, simulated_s=cluster.now_s,
            decision_ns=state.decision_ns, decision_cpu_ns=state.decision_cpu_ns,
            outcomes=state.outcomes,
            requests_per_replica=self._requests_per_replica,
            busy_s_per_replica=[engine.stats.busy_time_s for engine in self.engines],
            index=self.index,
        )

    async def _route(self, state: _State, users: Conversations, user: int) -> None:
        now_s = self.cluster.now_s
        request_id = f"r{len(state.decision_ns)}"
        body = users.next_body(user)
        call = parse_call(body, "chat", models=self._models, max_image_bytes=MAX_IMAGE_BYTES,
                          received_s=now_s, request_id=request_id)
        started_cpu_ns = time.thread_time_ns()
        started_ns = time.perf_counter_ns()
        if self._prepare is not None:
            await self._prepare(call)
        decision = self.strategy.choose(call, self.deployments)
        self.strategy.on_dispatched(call, decision.deployment)
        state.decision_ns.append(time.perf_counter_ns() - started_ns)
        state.decision_cpu_ns.append(time.thread_time_ns() - started_cpu_ns)
        outcome = decision.explanation.get("outcome")
        if outcome is not None:
            state.outcomes[outcome] = state.outcomes.get(outcome, 0) + 1
        deployment = decision.deployment
        deployment.stats.in_flight += 1
        target = self._position[deployment]
        self._requests_per_replica[target] += 1
        request, generation = self.builder.build(body, request_id)
        state.sent[request_id] = _Sent(user, deployment, generation.answer.text)
        self.cluster.submit(target, request, generation.prompt.num_image_tokens)

    @staticmethod
    def _finish(state: _State, users: Conversations,
                outputs: list[tuple[int, RequestOutput]], think_s: Callable[[], float]) -> None:
        for _, output in outputs:
            if not output.finished:
                continue
            sent = state.sent.pop(output.request_id)
            sent.deployment.stats.in_flight -= 1
            if users.answered(sent.user, sent.answer):
                assert output.stats is not None
                pause_s = think_s()
                if pause_s < QUANTUM_S:
                    raise ValueError(f"think times must be at least {QUANTUM_S} s")
                heapq.heappush(state.arrivals, (output.stats.finished_s + pause_s, sent.user))
