"""Drives an `Engine` in real time for the HTTP replica.

The loop schedules a step, sleeps `duration / time_scale` of wall time, completes the step and
hands each request's new tokens to the coroutine serving it. The engine keeps its own timeline
in simulated seconds: while busy, step k+1 starts exactly where step k ended (timer jitter does
not leak into simulated times); it only jumps forward to the arrival time of a request that
came in later than the timeline, or after an idle period. Wall-clock pacing follows the
timeline, so at --time-scale N everything a client sees happens N times faster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator

from kvgate.sim.engine import Engine
from kvgate.sim.request import EngineRequest, RequestOutput

_log = logging.getLogger(__name__)


def _report_crash(task: asyncio.Task[None]) -> None:
    """A dead engine loop would hang every request silently; make it loud instead."""
    if not task.cancelled() and task.exception() is not None:
        _log.critical("engine loop crashed", exc_info=task.exception())


class EngineLoop:
    """One replica's engine task plus the per-request output queues."""

    def __init__(self, engine: Engine, time_scale: float = 1.0) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.engine = engine
        self.time_scale = time_scale
        self._origin = time.monotonic()
        self._timeline_s = 0.0
        self._latest_ready_s = 0.0
        self._queues: dict[str, asyncio.Queue[RequestOutput]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def now_s(self) -> float:
        """Simulated seconds since the loop was created."""
        return (time.monotonic() - self._origin) * self.time_scale

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="engine-loop")
        self._task.add_done_callback(_report_crash)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def generate(
        self, request: EngineRequest, num_image_tokens: int = 0, arrival_s: float | None = None
    ) -> AsyncGenerator[list[RequestOutput], None]:
        """Run `request` through the front end and the engine, yielding its outputs in order.

        Each item holds every output available at that moment (usually one token; several when
        the consumer fell behind, so it can send them at once). Closing the iterator early
        (client gone, task cancelled) aborts the request, which frees its KV blocks. Raises
        `RequestRejected` if the engine refuses it. `arrival_s` (default: now) is when the HTTP
        request started arriving, so the real time spent reading and parsing it counts towards
        the modelled front-end time instead of adding to it.
        """
        if arrival_s is None:
            arrival_s = self.now_s()
        request.arrival_s = arrival_s
        ready_s = self.engine.frontend_ready_s(arrival_s, num_image_tokens)
        await self._sleep_until(ready_s)
        queue: asyncio.Queue[RequestOutput] = asyncio.Queue()
        request_id = request.request_id
        self._queues[request_id] = queue
        try:
            self.engine.submit(request, ready_s)
            self._latest_ready_s = max(self._latest_ready_s, ready_s)
            self._wake.set()
            while True:
                outputs = [await queue.get()]
                while not queue.empty():
                    outputs.append(queue.get_nowait())
                yield outputs
                if outputs[-1].finished:
                    return
        finally:
            del self._queues[request_id]
            if not request.is_finished and self.engine.abort(request_id, self._abort_time_s()):
                self._wake.set()

    def _abort_time_s(self) -> float:
        return max(self._timeline_s, self.now_s())

    async def _sleep_until(self, sim_s: float) -> None:
        delay = self._origin + sim_s / self.time_scale - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _run(self) -> None:
        engine = self.engine
        while True:
            if not engine.has_unfinished_requests():
                self._wake.clear()
                await self._wake.wait()
                continue
            step = engine.begin_step(max(self._timeline_s, self._latest_ready_s))
            if step is None:
                # Waiting requests that cannot be scheduled until something finishes or aborts.
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._sleep_until(step.end_s)
            self._timeline_s = step.end_s
            for output in engine.finish_step(step):
                queue = self._queues.get(output.request_id)
                if queue is not None:
                    queue.put_nowait(output)
