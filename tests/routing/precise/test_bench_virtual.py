"""The precise scenario's in-process arm runs the real strategies against engine models."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

from kvgate.bench.request import BenchRequest
from kvgate.bench.scenarios import precise
from kvgate.bench.scenarios.precise_virtual import run_virtual_arm


def test_virtual_arms_route_and_measure() -> None:
    setup = replace(precise.QUICK, num_requests=40)
    requests = precise.build_requests(setup, seed=1)
    for name, arm in precise.ARMS.items():
        result = run_virtual_arm(arm, requests, profile_name=precise.PROFILE,
                                 replicas=setup.replicas, kv_blocks=setup.kv_blocks,
                                 time_scale=setup.time_scale)
        assert result["requests"] == 40, name
        assert 0 < result["prefix_cache_hit_rate"] < 1
        assert sum(result["route_outcomes"].values()) == 40


def longest_fan_out(requests: list[BenchRequest], gap_s: float) -> int:
    """The most requests on one prefix in a row, each within 1.5 gaps of the previous."""
    longest, run = 1, 1
    for before, after in pairwise(requests):
        same = after.tag == before.tag and (after.at_s or 0) - (before.at_s or 0) < 1.5 * gap_s
        run = run + 1 if same else 1
        longest = max(longest, run)
    return longest


def test_workload_mixes_single_arrivals_and_fan_outs_at_the_set_rate() -> None:
    setup = replace(precise.FULL, num_requests=600, burst_share=0.1, burst_size=12)
    requests = precise.build_requests(setup, seed=3)
    assert len(requests) == 600 and requests == precise.build_requests(setup, seed=3)
    assert all(r.at_s is not None for r in requests)
    times = [r.at_s or 0.0 for r in requests]
    assert times == sorted(times)
    assert longest_fan_out(requests, setup.burst_gap_s) >= setup.burst_size
    # The request rate stays the configured one, fan-outs included (within Poisson noise).
    assert 0.7 * setup.rate_per_s < len(requests) / times[-1] < 1.4 * setup.rate_per_s
    steady = precise.build_requests(replace(setup, burst_share=0.0), seed=3)
    assert longest_fan_out(steady, setup.burst_gap_s) < 4
