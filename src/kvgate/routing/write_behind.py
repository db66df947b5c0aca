"""Routing bookkeeping that need not hold a request up: run after the current step of the
event loop, or before the next read of what it updates, whichever comes first.

A KV-aware strategy learns from every attempt: it records the prompt's links for the replica
it chose, opens a ledger ticket, and closes it when the answer ends (feeding the replica's
calibration). Done in line, that work sits between the decision and the upstream write, and
between the upstream's answer and the client's: about 25 us per request on an 8k-token prompt
at 64 deployments (in-process, this project's 2-core host; precise mode also marks the
prompt's blocks pending, about 65 us more for 500 blocks), all of it on the request's latency.
Queued here, it runs once the request's task yields (waiting for the upstream or for the next
request), so the replica starts on the prompt and the client gets its answer first: over HTTP,
KV-aware routing's added p50 over round robin went from +73-79 to +35-50 us (the overhead
scenario's long prompts; docs/BENCHMARK_REPORT.md). The CPU it costs is unchanged.

Decisions stay exact: the strategy calls :meth:`WriteBehind.flush` before it reads its index or
ledger, so a request decided in the same loop step as another one's dispatch (a burst) still
sees it. Every queued event carries the time it happened: the ledger's TTFT samples and
placement times are those of the event, not of the flush.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("kvgate.routing")


class WriteBehind:
    """An in-order queue of bookkeeping calls. ``enabled`` False (simulators, tests that read
    state in line): each call runs at once, as if there were no queue."""

    __slots__ = ("_enabled", "_queue", "_scheduled")

    def __init__(self, *, enabled: bool) -> None:
        self._enabled = enabled
        self._queue: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._scheduled = False

    @property
    def pending(self) -> int:
        """Calls queued and not yet run."""
        return len(self._queue)

    def __call__(self, work: Callable[..., None], *args: Any) -> None:
        """Run ``work(*args)`` after the current loop step (at once without a running loop or
        when disabled)."""
        if not self._enabled:
            work(*args)
            return
        self._queue.append((work, args))
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside the loop (a script, a sync test): no later
            self.flush()
            return
        self._scheduled = True
        loop.call_soon(self._run)

    def _run(self) -> None:
        # NOTE: only this callback clears the flag, so at most one is pending: under load the
        # readers' flushes empty the queue and a loop step takes one callback, not one per
        # request (a Handle each, about 1 us).
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Run every queued call, oldest first (nothing to do costs one check: readers call it
        before every read). A call that raises is logged and dropped; the rest still run (one
        bad event must not stall the strategy's learning)."""
        queue = self._queue
        while queue:
            work, args = queue.popleft()
            try:
                work(*args)
            except Exception:
                logger.exception("routing bookkeeping %s failed", getattr(
                    work, "__qualname__", work))
