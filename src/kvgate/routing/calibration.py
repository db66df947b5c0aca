"""How fast each replica is, learned from what the gateway sees it do.

Two lines per replica (:mod:`kvgate.routing.ttft_ledger`), both :class:`LineFit`, both online
and both forgetting (a replica that slows down, or a prior that was wrong, is overwritten by a
few dozen requests): time to first token against the prefill tokens ahead of the first token
(the replica's queued prefill plus the request's own uncached tokens), and the decode step
against the batch it ran in (from the gaps between a stream's tokens).

Each is ``y = intercept + slope x x`` fitted by ridge regression whose old samples fade,
geometrically per new sample and with age. The prior is the ridge penalty and never fades:
against a steady flow of samples it weighs about a tenth, and a replica nobody sends work to
drifts back to it instead of keeping one bad spell's figures for ever.

Nothing here reads a clock: callers hand in measured seconds, so the same code learns from the
gateway's wall clock and from the simulator's virtual one.

``LineFit`` is the C version (``_fit_native.c``) where the package was built with it: the same
arithmetic in the same order, so the same figures to the bit, at a fraction of the CPU (every
KV-aware request's release feeds one or two fits, and each refresh fades all of them);
``PyLineFit`` is the reference and the fallback.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from kvgate.native import warn_missing

#: Smallest slope the fit reports: a replica never prefills for free, and a zero slope would
#: make every queue look equally short.
_MIN_S_PER_TOKEN = 1e-9


class PyLineFit:
    """``y ~ intercept + slope x x`` by ridge regression with forgetting."""

    __slots__ = ("_forget", "_half_life_s", "_prior_intercept", "_prior_slope", "_sampled_s",
                 "_slope_weight", "_sums", "_weight", "intercept", "samples", "slope")

    def __init__(self, *, slope: float, intercept: float, span: float,
                 prior_weight: float = 2.0, forget: float = 0.95, half_life_s: float = 60.0
                 ) -> None:
        """The prior is worth ``prior_weight`` samples: on the line's level where the
        samples are (their weighted mean x), and on its slope as if those samples were
        ``span`` apart (a typical spread of x: a prefill chunk, a few sequences). Samples of
        one size (every request a cache hit) move the level there and leave the slope at the
        prior; only samples of different sizes move the slope, and the level's prior, taken
        at the samples' own centre, cannot tilt it. ``forget``: each new sample multiplies
        the weight of the samples before it by this (0.95: ~20 samples); ``half_life_s``:
        and they halve in weight every this many seconds."""
        self._forget = forget
        self._half_life_s = half_life_s
        self._prior_intercept = intercept
        self._prior_slope = slope
        self._weight = prior_weight
        self._slope_weight = prior_weight * span * span
        # Fading weighted sums of the samples: w, wx, wy, wxx, wxy.
        self._sums = [0.0] * 5
        self._sampled_s = 0.0
        self.samples = 0
        self.slope = slope
        self.intercept = intercept

    def observe(self, x: float, y: float, now_s: float) -> None:
        """One sample (e.g. a first token ``y`` seconds after dispatch with ``x`` prefill
        tokens ahead of it); ``now_s``: when, on any clock."""
        if x < 0 or y < 0:
            return
        # NOTE: one sample can be far off the line for reasons the line does not model (a
        # replica whose cache lost what routing believed it held recomputes it): it may move
        # the fit, but by no more than a sample three times the prediction would.
        y = min(y, 3.0 * self.predict(x) + 0.01)
        self._fade(now_s, self._forget)
        sums = self._sums
        for i, value in enumerate((1.0, x, y, x * x, x * y)):
            sums[i] += value
        self.samples += 1
        self._solve()

    def relax(self, now_s: float) -> None:
        """Let time pass without a sample: old samples fade, so a replica routing stopped
        sending work to (often because the fit said it was slow) drifts back to the prior
        and gets another chance, instead of keeping one bad spell's figures for ever."""
        if self._sums[0] and now_s > self._sampled_s:
            self._fade(now_s, 1.0)
            self._solve()

    def _fade(self, now_s: float, factor: float) -> None:
        fade = factor * math.exp2(-max(0.0, now_s - self._sampled_s) / self._half_life_s)
        self._sampled_s = now_s
        self._sums = [value * fade for value in self._sums]

    def _solve(self) -> None:
        sw, swx, swy, swxx, swxy = self._sums
        lam, prior_slope = self._slope_weight, self._prior_slope
        if sw <= 0.0:
            return
        mean_x, mean_y = swx / sw, swy / sw
        # Centred: y = level + slope x (x - mean_x), each with its own prior (ridge).
        spread = max(0.0, swxx - sw * mean_x * mean_x)
        covariance = swxy - sw * mean_x * mean_y
        slope = (covariance + lam * prior_slope) / (spread + lam)
        prior_level = self._prior_intercept + prior_slope * mean_x
        level = (sw * mean_y + self._weight * prior_level) / (sw + self._weight)
        intercept = level - slope * mean_x
        if intercept < 0.0:
            # NOTE: a negative intercept means the points bend (queueing grows faster than
            # linearly); the line through the origin and the level where the samples are fits
            # them better than one that predicts negative times for short prompts.
            intercept = 0.0
            slope = level / mean_x if mean_x > 0 else slope
        self.slope, self.intercept = max(slope, _MIN_S_PER_TOKEN), intercept

    def set_prior(self, *, slope: float, intercept: float) -> None:
        """Move the prior (e.g. to what the model's other replicas measured): a fit with no
        samples takes it as is; one with samples is solved again against it."""
        self._prior_slope, self._prior_intercept = slope, intercept
        if self._sums[0] > 0.0:
            self._solve()
        else:
            self.slope, self.intercept = slope, intercept

    @property
    def measured_weight(self) -> float:
        """The faded weight of the samples (0: nothing measured, or all of it long ago)."""
        return self._sums[0]

    def predict(self, x: float) -> float:
        return self.intercept + self.slope * x


if TYPE_CHECKING:
    LineFit = PyLineFit
else:
    try:
        from kvgate.routing._fit_native import LineFit
    except ImportError:  # built without a C compiler (warn_if_python says so)
        LineFit = PyLineFit


def warn_if_python() -> None:
    """Log once per process when the fits run in Python (a scorer calls it at start)."""
    if LineFit is PyLineFit:
        warn_missing("_fit_native", "the TTFT model's fits run in Python, a few "
                     "microseconds more per KV-aware request")
