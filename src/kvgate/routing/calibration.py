"""How fast each replica is, learned from what the gateway sees it do.

Two figures per replica, both online and both forgetting (a replica that slows down, or a
prior that was wrong, is overwritten by a few dozen requests):

- :class:`PrefillFit`: time to first token against the prefill tokens ahead of the first
  token (the replica's queued prefill plus the request's own uncached tokens), as a straight
  line ``ttft = fixed_s + s_per_token x tokens`` fitted by ridge regression whose old samples
  fade, geometrically per new sample and with age. The prior is the ridge penalty and never
  fades: against a steady flow of samples it weighs about a tenth, and a replica nobody sends
  work to drifts back to it instead of keeping one bad spell's figures for ever.
- :class:`StepTimer`: the replica's current decode step, from the gaps between a stream's
  tokens, as a moving average that starts at the prior.

Nothing here reads a clock: callers hand in measured seconds, so the same code learns from the
gateway's wall clock and from the simulator's virtual one.
"""

from __future__ import annotations

import math

#: Smallest slope the fit reports: a replica never prefills for free, and a zero slope would
#: make every queue look equally short.
_MIN_S_PER_TOKEN = 1e-9


class PrefillFit:
    """``ttft_s ~ fixed_s + s_per_token x tokens`` by least squares with forgetting."""

    __slots__ = ("_forget", "_half_life_s", "_prior_fixed", "_prior_slope", "_sampled_s",
                 "_slope_weight", "_sums", "_weight", "fixed_s", "s_per_token", "samples")

    def __init__(self, *, s_per_token: float, fixed_s: float, span_tokens: float,
                 prior_weight: float = 2.0, forget: float = 0.95, half_life_s: float = 60.0
                 ) -> None:
        """``prior_weight``: how many samples the prior is worth: for the intercept, and for
        the slope as if those samples were ``span_tokens`` apart (a typical prefill). So
        samples of one size (every request a cache hit) move the intercept and leave the
        slope at the prior, which only samples of different sizes can move. ``forget``: each
        new sample multiplies the weight of the samples before it by this (0.95: ~20
        samples); ``half_life_s``: and they halve in weight every this many seconds."""
        self._forget = forget
        self._half_life_s = half_life_s
        self._prior_fixed = fixed_s
        self._prior_slope = s_per_token
        self._weight = prior_weight
        self._slope_weight = prior_weight * span_tokens * span_tokens
        # Fading weighted sums of the samples: w, wx, wy, wxx, wxy.
        self._sums = [0.0] * 5
        self._sampled_s = 0.0
        self.samples = 0
        self.s_per_token = s_per_token
        self.fixed_s = fixed_s

    def observe(self, tokens: float, ttft_s: float, now_s: float) -> None:
        """One request's first token came ``ttft_s`` after dispatch with ``tokens`` of prefill
        ahead of it (its own uncached tokens included); ``now_s``: when, on any clock."""
        if tokens < 0 or ttft_s < 0:
            return
        # NOTE: one sample can be far off the line for reasons the line does not model (a
        # replica whose cache lost what routing believed it held recomputes it): it may move
        # the fit, but by no more than a sample three times the prediction would.
        ttft_s = min(ttft_s, 3.0 * self.predict_s(tokens) + 0.01)
        fade = self._forget * math.exp2(-max(0.0, now_s - self._sampled_s) / self._half_life_s)
        self._sampled_s = now_s
        sums = self._sums
        for i, value in enumerate((1.0, tokens, ttft_s, tokens * tokens, tokens * ttft_s)):
            sums[i] = sums[i] * fade + value
        self.samples += 1
        sw, swx, swy, swxx, swxy = sums
        # Ridge regression: the prior is a penalty on the intercept's and the slope's
        # distances from their prior values, so the normal equations gain those terms.
        a = sw + self._weight
        b = swx
        d = swxx + self._slope_weight
        e = swy + self._weight * self._prior_fixed
        f = swxy + self._slope_weight * self._prior_slope
        det = a * d - b * b
        fixed = (e * d - b * f) / det
        slope = (a * f - b * e) / det
        if fixed < 0.0:
            # NOTE: a negative intercept means the points bend (queueing grows faster than
            # linearly); a line through the origin fits them better than one that predicts
            # negative times for short prompts.
            fixed, slope = 0.0, f / d
        self.s_per_token, self.fixed_s = max(slope, _MIN_S_PER_TOKEN), fixed

    def predict_s(self, tokens: float) -> float:
        return self.fixed_s + self.s_per_token * tokens


class StepTimer:
    """A replica's decode step time (seconds), a moving average of observed token gaps."""

    __slots__ = ("_alpha", "samples", "step_s")

    def __init__(self, *, step_s: float, alpha: float = 0.2) -> None:
        self.step_s = step_s
        self._alpha = alpha
        self.samples = 0

    def observe(self, gap_s: float) -> None:
        """A stream's mean gap between tokens (first token to last, over the gaps)."""
        if gap_s <= 0:
            return
        self.step_s += self._alpha * (gap_s - self.step_s)
        self.samples += 1
