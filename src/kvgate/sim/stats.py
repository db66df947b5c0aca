"""Counters and histograms an engine accumulates, named after vLLM's metrics (vllm/v1/metrics).

Plain numbers, no Prometheus objects: an in-process sweep of 64+ engines pays nothing for the
metrics it never renders, and `metrics.py` turns one engine's stats into exposition text.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

from kvgate.sim.request import EngineRequest

# vLLM 0.33 default buckets (vllm/v1/metrics/buckets.py).
TTFT_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)
ITL_BUCKETS_S: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)
REQUEST_LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)


class Histogram:
    """Fixed-bucket histogram; `bucket_counts[i]` counts values <= buckets[i] and > buckets[i-1]."""

    __slots__ = ("bucket_counts", "buckets", "count", "sum")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.bucket_counts = [0] * (len(buckets) + 1)  # the last slot is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.bucket_counts[bisect_left(self.buckets, value)] += 1
        self.count += 1
        self.sum += value


@dataclass(slots=True)
class EngineStats:
    """Cumulative engine statistics (simulated seconds)."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    num_preemptions: int = 0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    external_prefix_cache_queries: int = 0
    external_prefix_cache_hits: int = 0
    num_steps: int = 0
    busy_time_s: float = 0.0
    request_success: dict[str, int] = field(
        default_factory=lambda: {"stop": 0, "length": 0, "abort": 0}
    )
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS_S))
    inter_token_latency: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS_S))
    e2e_latency: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS_S))
    queue_time: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS_S))
    prefill_time: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS_S))
    decode_time: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS_S))
    inference_time: Histogram = field(
        default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS_S)
    )

    def record_admission(self, num_tokens: int, gpu_hit_tokens: int, cpu_hit_tokens: int,
                         has_offload: bool) -> None:
        """A request entered the running set; vLLM counts prefix-cache lookups at admission."""
        self.prefix_cache_queries += num_tokens
        self.prefix_cache_hits += gpu_hit_tokens
        if has_offload:
            self.external_prefix_cache_queries += num_tokens - gpu_hit_tokens
            self.external_prefix_cache_hits += cpu_hit_tokens

    def record_token(self, request: EngineRequest, now_s: float, is_first: bool) -> None:
        """One output token appeared for `request` (before `last_token_s` moves to `now_s`)."""
        self.generation_tokens += 1
        if is_first:
            self.prompt_tokens += request.num_prompt_tokens
            self.ttft.observe(now_s - request.arrival_s)
        elif request.last_token_s is not None:
            self.inter_token_latency.observe(now_s - request.last_token_s)

    def record_finished(self, request: EngineRequest) -> None:
        assert request.finish_reason is not None and request.finished_s is not None
        self.request_success[request.finish_reason] += 1
        end_s = request.finished_s
        self.e2e_latency.observe(end_s - request.arrival_s)
        if request.first_scheduled_s is None:
            return
        self.queue_time.observe(request.first_scheduled_s - request.ready_s)
        self.inference_time.observe(end_s - request.first_scheduled_s)
        if request.first_token_s is not None:
            self.prefill_time.observe(request.first_token_s - request.first_scheduled_s)
            self.decode_time.observe(end_s - request.first_token_s)
