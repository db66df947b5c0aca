"""The cyclic collector's passes as a histogram, ``kvgate_gc_pause_seconds{generation}``.

A pass stops the event loop, so each one delays every request in flight: its count per second
against the request rate, and its total time, say whether ``server.gc_thresholds`` suit the
load (docs/ARCHITECTURE.md; with Python's thresholds, 32 concurrent KV-aware requests cost
7-11 us of GC each). The collector is the process's, so the figures are too: one callback per
process times every pass (two clock reads and a bucket index, about a microsecond, against
the tens to hundreds of microseconds a pass takes), and each app's registry reads it at
scrape time.
"""

from __future__ import annotations

import gc
import time
from bisect import bisect_left
from collections.abc import Iterable
from itertools import accumulate
from typing import Any

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

#: Upper bounds, seconds: a young pass over a few requests' objects takes ~0.1-0.3 ms, a
#: middle or full one milliseconds.
BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
GENERATIONS = 3


class _Pauses:
    """Per generation: passes per bucket (the last: beyond every bound) and their seconds."""

    __slots__ = ("counts", "seconds", "started_s")

    def __init__(self) -> None:
        self.counts = [[0] * (len(BUCKETS_S) + 1) for _ in range(GENERATIONS)]
        self.seconds = [0.0] * GENERATIONS
        self.started_s = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started_s = time.perf_counter()
            return
        if not self.started_s:
            return  # a stop whose start came before the callback was installed
        took_s = time.perf_counter() - self.started_s
        self.started_s = 0.0
        # Clamped: a collector with other generation numbers must not make it raise.
        generation = min(max(int(info.get("generation", 0)), 0), GENERATIONS - 1)
        # bisect_left: a pass of exactly a bound's length is counted under it (le).
        self.counts[generation][bisect_left(BUCKETS_S, took_s)] += 1
        self.seconds[generation] += took_s


_PAUSES = _Pauses()


class GCPauseCollector(Collector):
    """Reads the process's pass timings into ``kvgate_gc_pause_seconds`` at scrape time;
    constructing one starts the timing (once per process)."""

    def __init__(self) -> None:
        if not any(callback is _PAUSES for callback in gc.callbacks):
            gc.callbacks.append(_PAUSES)

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(
            "kvgate_gc_pause_seconds",
            "Cyclic garbage collector passes by generation (0 young, 1 middle, 2 full) and how "
            "long each stopped the event loop",
            labels=["generation"],
        )
        for generation in range(GENERATIONS):
            cumulative = list(accumulate(_PAUSES.counts[generation]))
            buckets = [(repr(bound), count)  # as prometheus_client writes these bounds
                       for bound, count in zip(BUCKETS_S, cumulative, strict=False)]
            buckets.append(("+Inf", cumulative[-1]))
            family.add_metric([str(generation)], buckets, _PAUSES.seconds[generation])
        yield family
