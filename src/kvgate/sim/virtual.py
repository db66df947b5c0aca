"""Many engines on one virtual clock, for in-process benchmark sweeps (no HTTP, no sleeping).

    cluster = VirtualCluster([Engine(profile, config) for _ in range(64)])
    for arrival_s, request in workload:           # caller-owned arrivals, in time order
        cluster.advance_to(arrival_s)             # run every engine up to the arrival
        target = router.pick(cluster.engines, request)   # inspect live engine state
        cluster.submit(target, request)
    cluster.run_until_idle()
    ttfts = [stats.ttft_s for _, stats in cluster.finished]

Events are processed in time order: a request reaches its engine after the engine's front-end
delay, an idle engine starts a step the moment work arrives, a busy one starts its next step
when the current one ends. The engines are exactly the ones the HTTP replicas run.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Sequence

from kvgate.sim.engine import Engine, PlannedStep
from kvgate.sim.request import EngineRequest, RequestOutput, RequestStats

OutputCallback = Callable[[int, RequestOutput], None]
_STEP_END, _READY = 0, 1  # at equal times a step completes before new arrivals join


class VirtualCluster:
    """Engines indexed 0..n-1 sharing a virtual clock `now_s` (simulated seconds)."""

    def __init__(self, engines: Sequence[Engine], on_output: OutputCallback | None = None) -> None:
        self.engines = list(engines)
        self.now_s = 0.0
        self.finished: list[tuple[int, RequestStats]] = []
        self._on_output = on_output
        self._in_flight: list[PlannedStep | None] = [None] * len(self.engines)
        self._queue: list[tuple[float, int, int, int, EngineRequest | PlannedStep]] = []
        self._order = itertools.count()

    def submit(self, engine_index: int, request: EngineRequest, num_image_tokens: int = 0
               ) -> float:
        """A request arrives now at `engine_index`; returns when it reaches the engine."""
        engine = self.engines[engine_index]
        engine.validate(request)
        request.arrival_s = self.now_s
        ready_s = engine.frontend_ready_s(self.now_s, num_image_tokens)
        heapq.heappush(self._queue, (ready_s, _READY, next(self._order), engine_index, request))
        return ready_s

    def abort(self, engine_index: int, request_id: str) -> bool:
        """Abort a request now (as a client disconnect would)."""
        aborted = self.engines[engine_index].abort(request_id, self.now_s)
        self._kick(engine_index, self.now_s)
        return aborted

    def advance_to(self, t_s: float) -> list[tuple[int, RequestOutput]]:
        """Process everything that happens up to `t_s`; returns (engine index, output) pairs."""
        if t_s < self.now_s:
            raise ValueError(f"cannot go back in time from {self.now_s} to {t_s}")
        outputs: list[tuple[int, RequestOutput]] = []
        while self._queue and self._queue[0][0] <= t_s:
            when, kind, _, index, item = heapq.heappop(self._queue)
            self.now_s = when
            engine = self.engines[index]
            if kind == _READY:
                assert isinstance(item, EngineRequest)
                engine.submit(item, when)
            else:
                assert isinstance(item, PlannedStep)
                self._in_flight[index] = None
                for output in engine.finish_step(item):
                    outputs.append((index, output))
                    if output.stats is not None:
                        self.finished.append((index, output.stats))
                    if self._on_output is not None:
                        self._on_output(index, output)
            self._kick(index, when)
        self.now_s = t_s
        return outputs

    def next_event_s(self) -> float | None:
        """When the next queued event happens (a request reaching its engine, a step ending);
        None when no engine has work."""
        return self._queue[0][0] if self._queue else None

    def run_until_idle(self, limit_s: float = math.inf) -> list[tuple[int, RequestOutput]]:
        """Advance until no engine has work (or `limit_s`)."""
        outputs: list[tuple[int, RequestOutput]] = []
        while self._queue and self._queue[0][0] <= limit_s:
            outputs += self.advance_to(self._queue[0][0])
        return outputs

    def _kick(self, index: int, now_s: float) -> None:
        if self._in_flight[index] is not None:
            return
        engine = self.engines[index]
        if not engine.has_unfinished_requests():
            return
        step = engine.begin_step(now_s)
        if step is not None:
            self._in_flight[index] = step
            heapq.heappush(self._queue, (step.end_s, _STEP_END, next(self._order), index, step))
