"""The TTFT model's line fits in C (``_fit_native.LineFit``) against the Python reference
(``calibration.PyLineFit``): built by the install (CI requires it), the one the package uses,
and the same figures to the bit on random sequences of samples (ints and floats, negative
ones refused, outliers capped), fades, relaxations and priors; bad arguments refused alike."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from kvgate.routing import calibration
from kvgate.routing._fit_native import LineFit as CLineFit
from kvgate.routing.calibration import PyLineFit


def test_the_install_built_the_fits_and_the_package_uses_them() -> None:
    assert calibration.LineFit is CLineFit


def _state(fit: Any) -> tuple[float, float, int, float, float]:
    return (fit.slope, fit.intercept, fit.samples, fit.measured_weight, fit.predict(1234.5))


def _same(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Equal to the bit (NaN equal to NaN)."""
    return all(x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))
               for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("seed", range(8))
def test_same_figures_as_the_python_fit(seed: int) -> None:
    rng = random.Random(seed)
    options = {"slope": rng.choice([1e-4, 5e-4, 0.0005, 2e-9]),
               "intercept": rng.choice([0.0, 0.025, 0.3]),
               "span": rng.choice([8.0, 2048.0, 1]),
               "prior_weight": rng.choice([2.0, 0.5, 10]),
               "forget": rng.choice([0.95, 0.8, 1.0]),
               "half_life_s": rng.choice([60.0, 5.0, 1e9])}
    fits: tuple[Any, Any] = (CLineFit(**options), PyLineFit(**options))
    now_s = rng.uniform(0, 100)
    for _ in range(600):
        kind = rng.random()
        if kind < 0.6:
            x: float = rng.choice([rng.randint(0, 20_000), rng.uniform(0, 9000.0),
                                   rng.uniform(0, 40.0), 0, -1.0])
            y = rng.choice([rng.uniform(0, 2.0), rng.uniform(0, 0.05), 50.0, -0.1, 0])
            for fit in fits:
                fit.observe(x, y, now_s)
        elif kind < 0.8:
            for fit in fits:
                fit.relax(now_s)
        elif kind < 0.9:
            prior = {"slope": rng.uniform(1e-6, 1e-3), "intercept": rng.uniform(0, 0.1)}
            for fit in fits:
                fit.set_prior(**prior)
        now_s += rng.choice([0.0, 0.001, 0.05, 1.0, 30.0, -0.5])  # the clock may stall
        assert _same(_state(fits[0]), _state(fits[1]))
    assert fits[0].samples > 100


def test_defaults_and_writable_figures_match() -> None:
    c, py = CLineFit(slope=1e-4, intercept=0.01, span=64), PyLineFit(
        slope=1e-4, intercept=0.01, span=64)
    assert _state(c) == _state(py)
    c.slope = py.slope = 2e-4
    c.intercept = py.intercept = 0.5
    assert _state(c) == _state(py)
    assert isinstance(c.predict(3), float)
    c.observe(100, 0.2, now_s=5.0)
    py.observe(x=100, y=0.2, now_s=5.0)
    assert _state(c) == _state(py)


def _measured(cls: Any) -> Any:
    fit = cls(slope=1e-4, intercept=0.0, span=64)
    fit.observe(10, 0.5, now_s=1.0)
    return fit


@pytest.mark.parametrize("call", [
    lambda cls: cls(slope=1e-4, intercept=0.0),                  # span missing
    lambda cls: cls(1e-4, 0.0, 64),                              # positional
    lambda cls: cls(slope=1e-4, intercept=0.0, span="x"),        # not a number
    lambda cls: cls(slope=1e-4, intercept=0.0, span=64).observe(1.0, "y", 0.0),
    lambda cls: cls(slope=1e-4, intercept=0.0, span=64).set_prior(slope=1.0),
    lambda cls: _measured(cls).relax(None),
    lambda cls: _measured(cls).observe(1.0, 2.0),                  # now_s missing
])
def test_bad_arguments_are_type_errors_in_both(call: Any) -> None:
    for cls in (CLineFit, PyLineFit):
        with pytest.raises(TypeError):
            call(cls)

