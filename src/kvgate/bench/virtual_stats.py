"""Figures from the virtual fleet's finished requests (:mod:`kvgate.bench.virtual_fleet`):
distributions, hit ratios, load-generator records and engine counters. Times are simulated
seconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kvgate.bench.request import NO_SESSION, RequestRecord
from kvgate.bench.stats import distribution_ms
from kvgate.sim.engine import Engine
from kvgate.sim.request import RequestStats


def summarize_stats(stats: Sequence[RequestStats]) -> dict[str, Any]:
    """TTFT/latency distributions, throughput and where prompt tokens came from.

    Throughput is over the makespan, first arrival to last finish. Token shares count each
    request's first admission (a request preempted and re-admitted is not counted twice):
    ``gpu_hit_ratio`` = prompt tokens found in the GPU prefix cache / prompt tokens,
    ``cpu_hit_ratio`` the same for the CPU tier, ``hit_ratio`` both together.
    """
    if not stats:
        return {"requests": 0}
    start_s = min(s.arrival_s for s in stats)
    makespan_s = max(s.finished_s for s in stats) - start_s
    prompt_tokens = sum(s.num_prompt_tokens for s in stats)
    output_tokens = sum(s.num_output_tokens for s in stats)
    gpu_hits = sum(s.num_cached_tokens for s in stats)
    cpu_hits = sum(s.num_offloaded_tokens for s in stats)
    return {
        "requests": len(stats),
        "makespan_s": round(makespan_s, 4),
        "requests_per_s": _per_s(len(stats), makespan_s),
        "output_tokens_per_s": _per_s(output_tokens, makespan_s),
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "gpu_hit_ratio": _ratio(gpu_hits, prompt_tokens),
        "cpu_hit_ratio": _ratio(cpu_hits, prompt_tokens),
        "hit_ratio": _ratio(gpu_hits + cpu_hits, prompt_tokens),
        "preempted_requests": sum(1 for s in stats if s.num_preemptions),
        "ttft_ms": distribution_ms(s.ttft_s for s in stats if s.ttft_s is not None),
        "latency_ms": distribution_ms(s.e2e_s for s in stats),
    }


def records_from_stats(stats: Sequence[tuple[int, RequestStats]], tags: Mapping[str, str]
                       ) -> list[RequestRecord]:
    """Load-generator records of finished engine requests (engine index, stats), so the
    bench's plots and tables take simulated runs too; times are simulated seconds."""
    start_s = min((s.arrival_s for _, s in stats), default=0.0)
    return [
        RequestRecord(
            index=index, tag=tags.get(s.request_id, ""), session=NO_SESSION,
            scheduled_s=s.arrival_s - start_s, start_s=s.arrival_s - start_s,
            end_s=s.finished_s - start_s,
            ttft_s=s.ttft_s, status=200, output_tokens=s.num_output_tokens,
            prompt_tokens=s.num_prompt_tokens, deployment=f"replica-{engine}",
        )
        for index, (engine, s) in enumerate(stats)
    ]


def engine_counters(engine: Engine) -> dict[str, Any]:
    """An engine's vLLM-named counters (what its ``/metrics`` would show), JSON-ready."""
    stats = engine.stats
    counters: dict[str, Any] = {
        "prefix_cache_queries": stats.prefix_cache_queries,
        "prefix_cache_hits": stats.prefix_cache_hits,
        "external_prefix_cache_queries": stats.external_prefix_cache_queries,
        "external_prefix_cache_hits": stats.external_prefix_cache_hits,
        "num_preemptions": stats.num_preemptions,
        "num_steps": stats.num_steps,
        "busy_time_s": round(stats.busy_time_s, 4),
    }
    if engine.offload is not None:
        counters["cpu_tier_blocks_stored"] = engine.offload.num_stored_blocks_total
        counters["cpu_tier_blocks_loaded"] = engine.offload.num_loaded_blocks_total
    return counters


def _per_s(count: float, seconds: float) -> float | None:
    return round(count / seconds, 3) if seconds > 0 else None


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None
