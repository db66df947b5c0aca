"""Prefer the deployment expected to answer soonest, sampled by power of two choices.

The expected latency is the deployment's EWMA of time to first token for streams, and of
latency per output token for blocking requests. Two refinements keep it honest:

* Decay: an average not refreshed for a while is read smaller (it halves every
  ``latency_half_life_s``), so a deployment avoided for being slow is tried again after a
  while, and its fresh sample (see ``accounting._blend``) shows whether it recovered.
* Load: the expected latency is multiplied by ``in_flight + 1`` (Finagle's "peak EWMA" cost),
  so a fast deployment that is already busy stops looking fast.

Instead of taking the best of all candidates, each choice compares two candidates drawn at
random and keeps the better one. A full argmin sends every concurrent request to the same
currently-best deployment until its numbers catch up (herding); two random choices leave the
worst deployments idle yet spread load over the good ones, at O(1) per decision.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from kvgate.config.schema import RoutingSettings
from kvgate.core.deployment import Deployment, RouteDecision
from kvgate.routing.base import StrategyDefaults

if TYPE_CHECKING:
    from kvgate.core.call import Call


class LowestLatency(StrategyDefaults):
    name = "latency"

    def __init__(
        self,
        deployments: Sequence[Deployment],
        settings: RoutingSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rng = random.Random(settings.seed)
        self._clock = clock

    def expected_latency_ms(
        self, deployment: Deployment, stream: bool, now_s: float
    ) -> float | None:
        """The decayed EWMA this strategy ranks by, or None before the first sample."""
        stats = deployment.stats
        if stream:
            average, sampled_s = stats.ewma_ttft_ms, stats.ttft_sampled_monotonic_s
        else:
            average, sampled_s = stats.ewma_ms_per_token, stats.per_token_sampled_monotonic_s
        if average is None:
            return None
        age_s = max(0.0, now_s - sampled_s)
        return average * math.exp2(-age_s / stats.latency_half_life_s)

    def choose(self, call: Call, candidates: Sequence[Deployment]) -> RouteDecision:
        count = len(candidates)
        if count == 1:
            return RouteDecision(candidates[0], {"strategy": self.name})
        first_index = self._rng.randrange(count)
        second_index = self._rng.randrange(count - 1)
        if second_index >= first_index:
            second_index += 1
        first, second = candidates[first_index], candidates[second_index]
        now_s = self._clock()
        first_ms = self.expected_latency_ms(first, call.stream, now_s)
        second_ms = self.expected_latency_ms(second, call.stream, now_s)
        # NOTE: a deployment without samples borrows the other's figure, so the pair is decided
        # by load alone; scoring it 0 instead would pour a burst onto it before its first
        # answer comes back. When neither has samples, 1.0 makes the cost plain load.
        if first_ms is None:
            first_ms = second_ms if second_ms is not None else 1.0
        if second_ms is None:
            second_ms = first_ms
        first_cost = first_ms * (first.stats.in_flight + 1)
        second_cost = second_ms * (second.stats.in_flight + 1)
        if second_cost < first_cost:
            first, first_ms = second, second_ms
        return RouteDecision(
            first, {"strategy": self.name, "expected_latency_ms": round(first_ms, 3)}
        )

    def on_dispatched(self, call: Call, deployment: Deployment) -> None:
        return None
