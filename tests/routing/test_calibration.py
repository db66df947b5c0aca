"""The online fits behind the TTFT model: they converge from wrong priors, follow a replica
whose speed changes, keep the slope when every sample is the same size, and fall back to the
prior when a replica goes unobserved."""

from __future__ import annotations

import random

import pytest

from kvgate.routing.calibration import LineFit


def feed(fit: LineFit, *, slope: float, intercept: float, count: int, start_s: float,
         rng: random.Random) -> float:
    """``count`` samples one second apart from a replica with that speed (5% noise), of
    sizes from a cache hit to a long cold prompt; returns the clock after them."""
    now_s = start_s
    for _ in range(count):
        tokens = rng.choice([30.0, 200.0, 1500.0, 4000.0, 9000.0])
        now_s += 1.0
        fit.observe(tokens, (intercept + slope * tokens) * rng.uniform(0.95, 1.05), now_s)
    return now_s


def test_the_fit_converges_from_wrong_priors_and_follows_a_slowdown() -> None:
    rng = random.Random(1)
    # The prior says 10k tokens/s and no fixed cost; the replica does 2k tokens/s + 80 ms.
    fit = LineFit(slope=1e-4, intercept=0.0, span=2048)
    now_s = feed(fit, slope=5e-4, intercept=0.08, count=80, start_s=0.0, rng=rng)
    assert fit.slope == pytest.approx(5e-4, rel=0.1)
    # Long prompts' noise (5% of seconds) swamps the intercept's 80 ms, so it is known only
    # roughly; predictions where the decisions are (long prompts) are close.
    assert fit.predict(9000.0) == pytest.approx(0.08 + 4.5, rel=0.1)
    assert fit.predict(1500.0) == pytest.approx(0.08 + 0.75, rel=0.25)
    assert fit.samples == 80
    # The replica slows down threefold (another tenant, thermal throttling): followed.
    feed(fit, slope=15e-4, intercept=0.08, count=80, start_s=now_s, rng=rng)
    assert fit.slope == pytest.approx(15e-4, rel=0.1)


def test_samples_of_one_size_move_the_intercept_and_keep_the_prior_slope() -> None:
    fit = LineFit(slope=1e-4, intercept=0.0, span=2048)
    for t in range(50):  # every request a cache hit of ~50 tokens, 250 ms each
        fit.observe(50.0, 0.25, float(t))
    assert fit.predict(50.0) == pytest.approx(0.25, rel=0.15)
    assert fit.slope == pytest.approx(1e-4, rel=0.25)


def test_an_outlier_moves_the_fit_by_a_bounded_amount() -> None:
    fit = LineFit(slope=1e-4, intercept=0.0, span=2048)
    before = fit.predict(1000.0)
    fit.observe(1000.0, 60.0, 1.0)  # a minute: not a prefill the line should learn from
    assert fit.predict(1000.0) < 3 * before


def test_an_unobserved_replica_drifts_back_to_the_prior() -> None:
    rng = random.Random(2)
    fit = LineFit(slope=1e-4, intercept=0.0, span=2048, half_life_s=60.0)
    now_s = feed(fit, slope=1e-3, intercept=0.5, count=40, start_s=0.0, rng=rng)
    slow = fit.predict(2000.0)
    # Ten minutes without samples (routing avoided it): time alone brings it back to the
    # prior (2000 tokens at 10k tokens/s), so routing tries it again.
    fit.relax(now_s + 600.0)
    assert fit.predict(2000.0) == pytest.approx(0.2, rel=0.15) and slow > 1.0
    # ...and a sample then counts as much as the prior.
    fit.observe(2000.0, 0.2, now_s + 601.0)
    assert fit.predict(2000.0) == pytest.approx(0.2, rel=0.15)


def test_the_step_line_learns_the_cost_of_each_sequence_in_the_batch() -> None:
    # Prior: 25 ms steps, +0.5 ms per sequence; the replica: 10 ms + 1 ms per sequence. The
    # prior keeps some weight for ever (a tenth to a quarter here): close, not exact.
    step = LineFit(slope=0.0005, intercept=0.025, span=8)
    rng = random.Random(3)
    for t in range(120):
        batch = rng.randint(1, 64)
        step.observe(batch, 0.010 + 0.001 * batch, float(t))
    assert step.slope == pytest.approx(0.001, rel=0.25)
    for batch in (8, 32, 56):
        assert step.predict(batch) == pytest.approx(0.010 + 0.001 * batch, rel=0.15)


def test_a_moved_prior_is_taken_as_is_without_samples_and_weighed_against_them() -> None:
    unmeasured = LineFit(slope=1e-4, intercept=0.0, span=2048)
    unmeasured.set_prior(slope=3e-5, intercept=0.01)
    assert (unmeasured.slope, unmeasured.intercept) == (3e-5, 0.01)
    assert unmeasured.measured_weight == 0.0
    measured = LineFit(slope=1e-4, intercept=0.0, span=2048)
    for i in range(40):
        tokens = 500.0 + 100 * (i % 10)
        measured.observe(tokens, 0.005 + 5e-5 * tokens, now_s=float(i))
    before = measured.slope
    measured.set_prior(slope=2 * before, intercept=0.0)  # a slower prior: pulled, not taken
    assert measured.measured_weight > 0
    assert before < measured.slope < 2 * before
