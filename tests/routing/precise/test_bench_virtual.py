"""The precise scenario's in-process arm runs the real strategies against engine models."""

from __future__ import annotations

from dataclasses import replace

from kvgate.bench.scenarios import precise
from kvgate.bench.scenarios.precise_virtual import run_virtual_arm


def test_virtual_arms_route_and_measure() -> None:
    setup = replace(precise.QUICK, num_requests=40)
    requests = precise.build_requests(setup, seed=1)
    for name, arm in precise.ARMS.items():
        result = run_virtual_arm(arm, requests, profile_name=precise.PROFILE,
                                 replicas=setup.replicas, kv_blocks=setup.kv_blocks,
                                 rate_per_s=10.0, seed=1)
        assert result["requests"] == 40, name
        assert 0 < result["prefix_cache_hit_rate"] < 1
        assert sum(result["route_outcomes"].values()) == 40
