from __future__ import annotations

import time
from collections import Counter

import pytest

from kvgate.core.deployment import Deployment
from kvgate.resilience.accounting import update_latency
from kvgate.routing.latency import LowestLatency
from tests.routing.factories import call, deployment, routing

NOW_S = 1000.0


def sampled(name: str, *, per_token_ms: float | None = None, ttft_ms: float | None = None,
            age_s: float = 0.0) -> Deployment:
    d = deployment(name)
    d.stats.ewma_ms_per_token, d.stats.ewma_ttft_ms = per_token_ms, ttft_ms
    d.stats.per_token_sampled_monotonic_s = d.stats.ttft_sampled_monotonic_s = NOW_S - age_s
    return d


def shares(strategy: LowestLatency, fleet: list[Deployment], n: int = 6000,
           stream: bool = False) -> dict[str, float]:
    counts = Counter(strategy.choose(call(stream=stream), fleet).deployment.id for _ in range(n))
    return {name: counts[name] / n for name in sorted(d.id for d in fleet)}


def test_power_of_two_choices_distribution() -> None:
    fleet = [sampled("fast", per_token_ms=10), sampled("mid", per_token_ms=20),
             sampled("slow", per_token_ms=100)]
    strategy = LowestLatency(fleet, routing(seed=1), clock=lambda: NOW_S)
    got = shares(strategy, fleet)
    # Each of the 3 pairs is drawn 1/3 of the time; the better of the pair wins.
    assert got["fast"] == pytest.approx(2 / 3, abs=0.03)
    assert got["mid"] == pytest.approx(1 / 3, abs=0.03)
    assert got["slow"] == 0.0


def test_streams_rank_by_ttft_and_blocking_calls_by_ms_per_token() -> None:
    a = sampled("a", per_token_ms=5, ttft_ms=400)
    b = sampled("b", per_token_ms=50, ttft_ms=40)
    strategy = LowestLatency([a, b], routing(), clock=lambda: NOW_S)
    assert shares(strategy, [a, b], 200) == {"a": 1.0, "b": 0.0}
    assert shares(strategy, [a, b], 200, stream=True) == {"a": 0.0, "b": 1.0}


def test_load_counts_so_a_busy_fast_deployment_loses() -> None:
    fast, slower = sampled("fast", per_token_ms=10), sampled("slower", per_token_ms=20)
    fast.stats.in_flight = 4  # expected cost 10 * 5 = 50 > 20 * 1
    strategy = LowestLatency([fast, slower], routing(), clock=lambda: NOW_S)
    assert strategy.choose(call(), [fast, slower]).deployment is slower


def test_a_burst_does_not_herd_onto_the_fastest() -> None:
    fleet = [sampled(f"d{i}", per_token_ms=10 + i) for i in range(6)]
    strategy = LowestLatency(fleet, routing(seed=5), clock=lambda: NOW_S)
    for _ in range(120):  # 120 concurrent requests that have not finished yet
        strategy.choose(call(), fleet).deployment.stats.in_flight += 1
    loads = [d.stats.in_flight for d in fleet]
    # Fastest gets the most, but nowhere near all of it; every deployment gets a share.
    assert loads[0] == max(loads) and loads[0] < 40
    assert min(loads) >= 10


def test_unsampled_deployment_is_judged_by_load_against_its_pair() -> None:
    known, new = sampled("known", per_token_ms=30), deployment("new")
    strategy = LowestLatency([known, new], routing(seed=2), clock=lambda: NOW_S)
    # Equal load: a coin flip decided by which was drawn first.
    got = shares(strategy, [known, new], 2000)
    assert got["new"] == pytest.approx(0.5, abs=0.05)
    new.stats.in_flight = 3
    assert shares(strategy, [known, new], 200) == {"known": 1.0, "new": 0.0}


def test_a_slow_deployment_is_tried_again_after_its_sample_ages() -> None:
    now_s = NOW_S
    fast = sampled("fast", per_token_ms=10)
    slow = sampled("slow", per_token_ms=100)  # half-life 10 s by default
    strategy = LowestLatency([fast, slow], routing(), clock=lambda: now_s)
    assert shares(strategy, [fast, slow], 100)["slow"] == 0.0
    # fast keeps being sampled (fresh); slow's figure halves every 10 s: 100 -> 6.25 at 40 s.
    now_s += 40.0
    fast.stats.per_token_sampled_monotonic_s = now_s
    assert strategy.expected_latency_ms(slow, False, now_s) == pytest.approx(6.25)
    assert strategy.choose(call(), [fast, slow]).deployment is slow


def test_one_fresh_sample_after_a_quiet_spell_nearly_replaces_the_average() -> None:
    slow = deployment("slow")
    stats = slow.stats
    update_latency(slow, ttft_s=None, ms_per_token=100.0)
    update_latency(slow, ttft_s=None, ms_per_token=10.0)  # back to back: a plain EWMA step
    assert stats.ewma_ms_per_token == pytest.approx(82.0, abs=0.1)
    # Pretend the last sample is 40 s (4 half-lives) old: its weight is 0.8 / 16.
    stats.per_token_sampled_monotonic_s = time.monotonic() - 40.0
    update_latency(slow, ttft_s=None, ms_per_token=10.0)
    assert stats.ewma_ms_per_token == pytest.approx(10 + 0.05 * 72, abs=0.1)
