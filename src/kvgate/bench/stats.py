"""Percentiles and the run summary, computed from request records after the load has stopped.

Percentiles interpolate linearly between order statistics (numpy's default, "type 7"), so a
p99 from this module matches ``numpy.percentile`` on the same values.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from kvgate.bench.loadgen import LoadResult
from kvgate.bench.request import RequestRecord

PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)
NO_DEPLOYMENT = "(none)"
#: Requests the gateway answered from its own cache name no deployment.
CACHE_DEPLOYMENT = "(cache)"
_CACHE_MISS_KINDS = frozenset({"", "miss", "unknown"})


def deployment_name(record: RequestRecord) -> str:
    if record.deployment:
        return record.deployment
    return NO_DEPLOYMENT if record.cache in _CACHE_MISS_KINDS else CACHE_DEPLOYMENT


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of already sorted values, linearly interpolated."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    rank = (len(sorted_values) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = rank - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


def distribution_ms(values_s: Iterable[float]) -> dict[str, float | int] | None:
    """count, mean, min, p50/p90/p95/p99 and max in milliseconds; None without values."""
    ordered = sorted(values_s)
    if not ordered:
        return None
    summary: dict[str, float | int] = {
        "count": len(ordered),
        "mean": _ms(sum(ordered) / len(ordered)),
        "min": _ms(ordered[0]),
    }
    for q in PERCENTILES:
        summary[f"p{q}"] = _ms(percentile(ordered, q))
    summary["max"] = _ms(ordered[-1])
    return summary


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def time_per_output_token_s(record: RequestRecord) -> float | None:
    """Mean gap between output tokens after the first; None when it cannot be known."""
    if record.ttft_s is None or record.output_tokens < 2:
        return None
    return (record.latency_s - record.ttft_s) / (record.output_tokens - 1)


def deployment_shares(records: Sequence[RequestRecord]) -> dict[str, dict[str, Any]]:
    """Per deployment (from ``x-kvgate-deployment``): requests served, share, tokens, TTFT."""
    by_name: dict[str, list[RequestRecord]] = {}
    for record in records:
        by_name.setdefault(deployment_name(record), []).append(record)
    total = len(records)
    shares: dict[str, dict[str, Any]] = {}
    for name in sorted(by_name):
        group = by_name[name]
        ttft = distribution_ms(r.ttft_s for r in group if r.ttft_s is not None)
        latency = distribution_ms(r.latency_s for r in group)
        shares[name] = {
            "requests": len(group),
            "share": _ratio(len(group), total),
            "output_tokens": sum(r.output_tokens for r in group),
            "ttft_p50_ms": None if ttft is None else ttft["p50"],
            "latency_p50_ms": None if latency is None else latency["p50"],
        }
    return shares


def summarize(result: LoadResult) -> dict[str, Any]:
    """The run's summary as a JSON-ready dict (see docs of ``kvgate bench`` for fields)."""
    records = result.records
    ok = [r for r in records if r.ok]
    wall_s = result.wall_s
    output_tokens = sum(r.output_tokens for r in ok)
    prompt_tokens = sum(r.prompt_tokens for r in ok)
    routed = [r for r in ok if r.has_route_info]
    cache_kinds = Counter(r.cache or "unknown" for r in ok)
    cache_hits = sum(n for kind, n in cache_kinds.items() if kind not in _CACHE_MISS_KINDS)
    # Only an open loop has a schedule to fall behind; a closed loop starts when it can.
    lag = None if result.spec.mode == "closed" else distribution_ms(
        max(0.0, r.start_s - r.scheduled_s) for r in records)
    return {
        "requests": {
            "offered": result.requests_offered,
            "sent": len(records),
            "ok": len(ok),
            "errors": len(records) - len(ok),
            "error_kinds": dict(Counter(r.error for r in records if r.error).most_common()),
            "usage_missing": sum(1 for r in ok if r.usage_missing),
        },
        "wall_s": round(wall_s, 3),
        "throughput": {
            "requests_per_s": round(len(ok) / wall_s, 3) if wall_s > 0 else None,
            "output_tokens_per_s": round(output_tokens / wall_s, 3) if wall_s > 0 else None,
            "prompt_tokens_per_s": round(prompt_tokens / wall_s, 3) if wall_s > 0 else None,
        },
        "tokens": {"prompt": prompt_tokens, "output": output_tokens},
        "ttft_ms": distribution_ms(r.ttft_s for r in ok if r.ttft_s is not None),
        "latency_ms": distribution_ms(r.latency_s for r in ok),
        "tpot_ms": distribution_ms(
            t for t in map(time_per_output_token_s, ok) if t is not None
        ),
        "dispatch_lag_ms": lag,
        "deployments": deployment_shares(ok),
        # Share of requests sent where their prefix already was; null if the gateway gave no
        # route information (e.g. a strategy that does not track prefixes).
        "routing_affinity": _ratio(sum(1 for r in routed if r.is_affine), len(routed)),
        "route_info_requests": len(routed),
        "route_outcomes": dict(sorted(Counter(r.route_outcome for r in ok
                                              if r.route_outcome).items())),
        "cache_hit_ratio": _ratio(cache_hits, len(ok)),
        "cache": dict(sorted(cache_kinds.items())),
    }
