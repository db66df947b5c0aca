"""The cyclic collector's set-up at start-up, once the gateway has started: its thresholds
(``server.gc_thresholds``) and what start-up built taken out of its full passes."""

from __future__ import annotations

import gc


def set_collector(thresholds: tuple[int, int, int]) -> None:
    """The cyclic collector's thresholds (``server.gc_thresholds``; why: its field's note).
    Process-wide: with several apps in one process the last one started sets them."""
    gc.set_threshold(*thresholds)


def freeze_startup_heap() -> None:
    """Take what start-up built (modules, settings, the gateway, its tables' Python parts)
    out of the cyclic collector's full passes, once per process.

    NOTE: a full pass walks every tracked object, and after start-up nearly all of them live
    as long as the process. In-process, 64 deployments, ~8k-token prompts, 10,000 requests:
    a full pass every few thousand requests stalled the event loop 15-24 ms; frozen, the
    longest GC pause is 0.6 ms with round robin and 1.5 ms with KV-aware routing, and GC time
    per request 2.1 -> 0.5 and 2.8 -> 1.2 us (benchmarks/results/experiments/gc_freeze/).
    Objects made later are collected as before.
    """
    if gc.get_freeze_count():
        return  # another app in this process froze the heap already
    gc.collect()
    gc.freeze()
