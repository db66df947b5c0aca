"""Percentiles and the summary, on hand-made records."""

from __future__ import annotations

import random

import numpy as np
import pytest

from kvgate.bench.loadgen import LoadResult, LoadSpec
from kvgate.bench.request import RequestRecord
from kvgate.bench.stats import distribution_ms, percentile, summarize


def test_percentile_interpolates_like_numpy() -> None:
    rng = random.Random(1)
    for size in (1, 2, 3, 10, 101, 1000):
        values = sorted(rng.uniform(0, 5) for _ in range(size))
        for q in (0, 1, 50, 90, 95, 99, 99.9, 100):
            assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_edges() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_distribution_is_in_milliseconds() -> None:
    dist = distribution_ms([0.010, 0.020, 0.030])
    assert dist == {"count": 3, "mean": 20.0, "min": 10.0, "p50": 20.0, "p90": 28.0,
                    "p95": 29.0, "p99": 29.8, "max": 30.0}
    assert distribution_ms([]) is None


def _record(index: int, *, start: float, end: float, ttft: float | None = None,
            tokens: int = 10, deployment: str = "a", cache: str = "miss",
            matched: int | None = None, error: str = "") -> RequestRecord:
    return RequestRecord(index=index, tag="", session=-1, scheduled_s=start, start_s=start,
                         end_s=end, ttft_s=ttft, status=200, output_tokens=tokens,
                         prompt_tokens=100, deployment=deployment, cache=cache,
                         matched_tokens=matched, error=error)


def test_summary_counts_only_successes_in_rates_and_shares() -> None:
    records = [
        _record(0, start=0.0, end=1.0, ttft=0.1, deployment="a", cache="exact", matched=0),
        _record(1, start=0.0, end=2.0, ttft=0.2, deployment="b", matched=64),
        _record(2, start=1.0, end=2.0, ttft=0.3, deployment="b", matched=128),
        _record(3, start=1.0, end=1.5, deployment="", error="http_503: x"),
    ]
    result = LoadResult(spec=LoadSpec(), records=records, wall_s=2.0, requests_offered=5)
    summary = summarize(result)
    assert summary["requests"] == {"offered": 5, "sent": 4, "ok": 3, "errors": 1,
                                   "error_kinds": {"http_503: x": 1}, "usage_missing": 0}
    assert summary["throughput"] == {"requests_per_s": 1.5, "output_tokens_per_s": 15.0,
                                     "prompt_tokens_per_s": 150.0}
    assert summary["ttft_ms"]["p50"] == 200.0
    assert summary["latency_ms"]["max"] == 2000.0
    assert summary["deployments"]["b"]["requests"] == 2
    assert summary["deployments"]["b"]["share"] == pytest.approx(0.6667)
    assert summary["routing_affinity"] == pytest.approx(0.6667)
    assert summary["cache_hit_ratio"] == pytest.approx(0.3333)
    assert summary["dispatch_lag_ms"] is None  # closed loop has no schedule
    # TPOT: (latency - ttft) / (tokens - 1).
    assert summary["tpot_ms"]["max"] == pytest.approx(200.0)


def test_record_json_round_trip() -> None:
    record = _record(7, start=0.5, end=0.75, ttft=0.125, matched=32)
    again = RequestRecord.from_json(record.to_json())
    assert again == record
