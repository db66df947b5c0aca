"""The online fits behind the TTFT model: they converge from wrong priors, follow a replica
whose speed changes, keep the slope when every sample is the same size, and fall back to the
prior when a replica goes unobserved."""

from __future__ import annotations

import random

import pytest

from kvgate.routing.calibration import PrefillFit, StepTimer


def feed(fit: PrefillFit, *, s_per_token: float, fixed_s: float, count: int, start_s: float,
         rng: random.Random) -> float:
    """``count`` samples one second apart from a replica with that speed (5% noise), of
    sizes from a cache hit to a long cold prompt; returns the clock after them."""
    now_s = start_s
    for _ in range(count):
        tokens = rng.choice([30.0, 200.0, 1500.0, 4000.0, 9000.0])
        now_s += 1.0
        fit.observe(tokens, (fixed_s + s_per_token * tokens) * rng.uniform(0.95, 1.05), now_s)
    return now_s


def test_the_fit_converges_from_wrong_priors_and_follows_a_slowdown() -> None:
    rng = random.Random(1)
    # The prior says 10k tokens/s and no fixed cost; the replica does 2k tokens/s + 80 ms.
    fit = PrefillFit(s_per_token=1e-4, fixed_s=0.0, span_tokens=2048)
    now_s = feed(fit, s_per_token=5e-4, fixed_s=0.08, count=80, start_s=0.0, rng=rng)
    assert fit.s_per_token == pytest.approx(5e-4, rel=0.1)
    assert fit.fixed_s == pytest.approx(0.08, abs=0.04)
    assert fit.samples == 80
    # The replica slows down threefold (another tenant, thermal throttling): followed.
    feed(fit, s_per_token=15e-4, fixed_s=0.08, count=80, start_s=now_s, rng=rng)
    assert fit.s_per_token == pytest.approx(15e-4, rel=0.1)


def test_samples_of_one_size_move_the_intercept_and_keep_the_prior_slope() -> None:
    fit = PrefillFit(s_per_token=1e-4, fixed_s=0.0, span_tokens=2048)
    for t in range(50):  # every request a cache hit of ~50 tokens, 250 ms each
        fit.observe(50.0, 0.25, float(t))
    assert fit.predict_s(50.0) == pytest.approx(0.25, rel=0.15)
    assert fit.s_per_token == pytest.approx(1e-4, rel=0.25)


def test_an_outlier_moves_the_fit_by_a_bounded_amount() -> None:
    fit = PrefillFit(s_per_token=1e-4, fixed_s=0.0, span_tokens=2048)
    before = fit.predict_s(1000.0)
    fit.observe(1000.0, 60.0, 1.0)  # a minute: not a prefill the line should learn from
    assert fit.predict_s(1000.0) < 3 * before


def test_an_unobserved_replica_drifts_back_to_the_prior() -> None:
    rng = random.Random(2)
    fit = PrefillFit(s_per_token=1e-4, fixed_s=0.0, span_tokens=2048, half_life_s=60.0)
    now_s = feed(fit, s_per_token=1e-3, fixed_s=0.5, count=40, start_s=0.0, rng=rng)
    slow = fit.predict_s(2000.0)
    # Ten minutes without samples (routing avoided it), then one ordinary sample.
    fit.observe(2000.0, 0.2, now_s + 600.0)
    assert fit.predict_s(2000.0) < 0.5 * slow


def test_the_step_timer_starts_at_the_prior_and_follows_the_gaps() -> None:
    timer = StepTimer(step_s=0.025)
    assert timer.step_s == 0.025 and timer.samples == 0
    for _ in range(40):
        timer.observe(0.06)
    timer.observe(-1.0)  # no gap: ignored
    assert timer.step_s == pytest.approx(0.06, rel=0.01) and timer.samples == 40
