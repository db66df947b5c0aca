"""A replica's own cumulative counters, read from its Prometheus ``/metrics``.

    before = read_counters(urls)
    run_benchmark(...)
    engine = [after.delta(earlier)
              for earlier, after in zip(before, read_counters(urls), strict=True)]
    print([c.hit_rate for c in engine])

One reader for every fleet a scenario measures: ``kvgate sim`` replicas (vLLM's metric names,
times in simulated seconds) and real ``vllm serve`` replicas (the same names, wall seconds).
Each counter is summed over its label sets (vLLM labels by ``engine``, ``model_name`` and,
for finished requests, ``finished_reason``); a series a replica does not export reads as 0.
"""

from __future__ import annotations

import dataclasses
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class EngineCounters:
    """One replica's cumulative counters (or, from :meth:`delta`, their growth over a run)."""

    #: Prompt tokens looked up in / found in the prefix cache.
    prefix_cache_queries: float = 0.0
    prefix_cache_hits: float = 0.0
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    preemptions: float = 0.0
    #: Seconds the engine spent stepping (``kvgate sim`` only; 0 on real vLLM).
    busy_s: float = 0.0
    ttft_sum_s: float = 0.0
    ttft_count: float = 0.0
    #: Finished requests, every finish reason.
    requests: float = 0.0
    #: Seconds requests spent waiting to be scheduled, summed (the histogram's ``_sum``).
    queue_time_sum_s: float = 0.0
    #: Gaps between consecutive tokens of a request: their sum and count.
    itl_sum_s: float = 0.0
    itl_count: float = 0.0

    def delta(self, earlier: EngineCounters) -> EngineCounters:
        """What happened between ``earlier`` and this reading."""
        return EngineCounters(**{f.name: getattr(self, f.name) - getattr(earlier, f.name)
                                 for f in dataclasses.fields(self)})

    @property
    def hit_rate(self) -> float | None:
        """vLLM's prefix-cache hit rate: cached prompt tokens / prompt tokens queried."""
        if not self.prefix_cache_queries:
            return None
        return self.prefix_cache_hits / self.prefix_cache_queries

    def to_json(self) -> dict[str, Any]:
        """The counters in :data:`JSON_FIELDS`, rounded, and the hit rate."""
        data: dict[str, Any] = {name: round(getattr(self, name), 4) for name in JSON_FIELDS}
        data["hit_rate"] = None if self.hit_rate is None else round(self.hit_rate, 4)
        return data


#: What :meth:`EngineCounters.to_json` writes. NOTE: the ``routing`` scenario's result files
#: carry exactly these keys per replica; ``requests`` and ``queue_time_sum_s`` came later, for
#: scenarios that report them in figures of their own.
JSON_FIELDS = ("prefix_cache_queries", "prefix_cache_hits", "prompt_tokens",
               "generation_tokens", "preemptions", "busy_s", "ttft_sum_s", "ttft_count")

#: Prometheus series name -> :class:`EngineCounters` field.
_SERIES = {
    "vllm:prefix_cache_queries_total": "prefix_cache_queries",
    "vllm:prefix_cache_hits_total": "prefix_cache_hits",
    "vllm:prompt_tokens_total": "prompt_tokens",
    "vllm:generation_tokens_total": "generation_tokens",
    "vllm:num_preemptions_total": "preemptions",
    "kvgate_sim_engine_busy_seconds_total": "busy_s",
    "vllm:time_to_first_token_seconds_sum": "ttft_sum_s",
    "vllm:time_to_first_token_seconds_count": "ttft_count",
    "vllm:request_success_total": "requests",
    "vllm:request_queue_time_seconds_sum": "queue_time_sum_s",
    "vllm:inter_token_latency_seconds_sum": "itl_sum_s",
    "vllm:inter_token_latency_seconds_count": "itl_count",
}


def parse_counters(text: str) -> EngineCounters:
    """The counters of one ``/metrics`` body, each summed over its label sets."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        field = _SERIES.get(line.split("{", 1)[0].split(" ", 1)[0])
        if field is not None:
            values[field] = values.get(field, 0.0) + float(line.rsplit(" ", 1)[1])
    return EngineCounters(**values)


def read_counters(urls: Iterable[str], *, timeout_s: float = 10.0) -> list[EngineCounters]:
    """Every replica's counters now, in the order of ``urls`` (replica root URLs)."""
    readings = []
    for url in urls:
        with urllib.request.urlopen(url + "/metrics", timeout=timeout_s) as response:
            readings.append(parse_counters(response.read().decode("utf-8")))
    return readings
