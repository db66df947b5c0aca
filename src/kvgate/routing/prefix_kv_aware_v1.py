"""``prefix_kv_aware_v1``: the first KV-aware scorer, kept as a comparison arm.

It counts requests, not tokens: a deployment is *eligible* while its load (requests in flight,
or the engine's queue) is within ``max(max_excess_requests, max_excess_ratio x mean load)`` of
the least loaded candidate; among eligible ones the most matched tokens wins (within one block
is a tie), a best match below ``min_match_ratio`` of the prompt is placed as a cold prompt, and
ties go to the least loaded, rotating. ``prefix_kv_aware`` replaced it with a predicted-TTFT
scorer (:mod:`kvgate.routing.ttft_scorer`); the sweep in BENCHMARK_REPORT.md compares the two.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import compress, repeat
from operator import eq, ge
from typing import TYPE_CHECKING, Any

from kvgate.config.schema import PrefixRoutingSettings
from kvgate.core.deployment import Deployment, DeploymentStats, RouteDecision
from kvgate.routing.affinity import AffinityIndex
from kvgate.routing.explain import shown_candidates, tokens_value
from kvgate.routing.load import InFlightLoad, LoadView
from kvgate.routing.prefix_kv_aware import PrefixKVAware, PrefixState

if TYPE_CHECKING:
    from kvgate.core.call import Call


class LoadGuardedScorer:
    """The choice both KV-aware strategies make once they know matched tokens per deployment.

    ``prefix_kv_aware`` feeds it estimates from the affinity index, ``precise_kv`` exact hits
    from KV events; the load guard, tie rule and rotation are the same, so is the explanation.
    """

    __slots__ = ("_inline_loads", "_rotation", "_settings", "_tie_tokens", "load", "name")

    def __init__(self, name: str, settings: PrefixRoutingSettings, load: LoadView,
                 tie_tokens: int) -> None:
        self.name = name
        self.load = load
        self._settings = settings
        self._tie_tokens = tie_tokens
        self._rotation = 0
        # NOTE: the gateway's own load view is read inline (the same max(in flight, engine
        # queue)): a method call per candidate was most of a decision at 256 deployments.
        self._inline_loads = type(load) is InFlightLoad

    def choose(
        self,
        candidates: Sequence[Deployment],
        matched_tokens: Mapping[Deployment, float],
        details: Mapping[Deployment, Mapping[str, Any]] | None = None,
        prompt_tokens: float = 0.0,
        history_tokens: Mapping[Deployment, float] | None = None,
        covered_tokens: Mapping[Deployment, float] | None = None,
    ) -> tuple[RouteDecision, int]:
        """The decision and the index of the chosen candidate.

        ``matched_tokens`` covers every deployment of the model (not only candidates), so a
        failover attempt away from the replica holding the prefix is told apart as a spill.
        ``details`` adds per-candidate fields to the explanation. With ``prompt_tokens``, a best
        match below ``min_match_ratio`` of it counts as no match (0 = every match counts).
        ``history_tokens`` (tokens of the prompt each deployment served recently, whether or
        not it still holds them) breaks ties among the least loaded for a cold prompt.
        ``covered_tokens`` is what the ``min_match_ratio`` test reads when ``matched_tokens``
        are weighted (an offloaded token scores less than a GPU one but covers as much).
        """
        covered = None if covered_tokens is None else list(
            map(covered_tokens.get, candidates, repeat(0)))
        return self.choose_listed(
            candidates, list(map(matched_tokens.get, candidates, repeat(0))),
            max(matched_tokens.values(), default=0),
            max((covered_tokens or matched_tokens).values(), default=0),
            covered=covered, details=details, prompt_tokens=prompt_tokens,
            history_tokens=history_tokens)

    def choose_listed(
        self,
        candidates: Sequence[Deployment],
        matched: Sequence[float],
        best_match: float,
        best_covered: float,
        *,
        covered: Sequence[float] | None = None,
        details: Mapping[Deployment, Mapping[str, Any]] | None = None,
        prompt_tokens: float = 0.0,
        history_tokens: Mapping[Deployment, float] | None = None,
        stats: Sequence[DeploymentStats] | None = None,
    ) -> tuple[RouteDecision, int]:
        """:meth:`choose` with the matches listed in candidate order: ``matched[i]`` (and
        ``covered[i]``, None when the same) is ``candidates[i]``'s; ``best_match`` and
        ``best_covered`` are the largest over every deployment of the model. ``stats``: the
        candidates' ``Deployment.stats``, when the caller keeps them listed."""
        if self._inline_loads:
            loads = _in_flight_loads([d.stats for d in candidates] if stats is None else stats)
        else:
            loads = list(map(self.load.load, candidates))
        least = min(loads)
        num_candidates = len(loads)
        mean = sum(loads) / num_candidates
        slack = max(self._settings.max_excess_requests, self._settings.max_excess_ratio * mean)
        everyone = range(num_candidates)
        # Cheap checks first: with every candidate eligible (the usual case) the lists below
        # are computed by C loops over all of them, never index by index.
        all_eligible = max(loads) <= least + slack
        eligible: Sequence[int] = everyone if all_eligible else [
            i for i, load in enumerate(loads) if load <= least + slack]
        best_eligible_match = max(matched) if all_eligible else max(matched[i] for i in eligible)
        # NOTE: a prefix shared by many prompts but short next to each (a system prompt before
        # a long per-user context) would otherwise pull every new conversation onto the
        # replicas that already hold it, starving the rest; SGLang's cache_threshold.
        follow_tokens = self._settings.min_match_ratio * prompt_tokens
        cold = best_match == 0 or best_covered < follow_tokens
        covers = matched if covered is None else covered
        eligible_cold = best_eligible_match == 0 or (
            max(covers) if all_eligible else max(covers[i] for i in eligible)) < follow_tokens
        # Cold and tied prompts: everything within one block of the best counts as equal.
        window = best_eligible_match if eligible_cold else self._tie_tokens
        floor = best_eligible_match - window
        uniform = False  # every candidate matched as much
        if all_eligible:
            lowest_match = min(matched)
            uniform = lowest_match == best_eligible_match
            tied: Sequence[int] = everyone if lowest_match >= floor else list(
                compress(everyone, map(ge, matched, repeat(floor))))
        else:
            tied = [i for i in eligible if matched[i] >= floor]
        least_loaded: Sequence[int]
        if tied is everyone:
            least_loaded = everyone if loads.count(least) == num_candidates else list(
                compress(everyone, map(eq, loads, repeat(least))))
        else:
            lowest = min(loads[i] for i in tied)
            least_loaded = [i for i in tied if loads[i] == lowest]
        returned_home = False
        if cold and history_tokens and len(least_loaded) > 1:
            # NOTE: a prompt known to be cached nowhere costs a full prefill wherever it goes;
            # sent back to where its prefix was served before it stays in that replica's share of
            # the working set, where spreading it by load alone would copy every prefix onto
            # every replica over time (measured: BENCHMARK_REPORT.md, precise).
            served = [history_tokens.get(candidates[i], 0) for i in least_loaded]
            most = max(served)
            if most > 0:
                least_loaded = [i for i, s in zip(least_loaded, served, strict=True) if s == most]
                returned_home = True
        self._rotation += 1
        pick = least_loaded[self._rotation % len(least_loaded)]
        outcome = (
            "cold" if cold
            else "hit" if matched[pick] > 0 and matched[pick] >= best_match - self._tie_tokens
            else "spill"
        )
        explanation: dict[str, Any] = {
            "strategy": self.name,
            "outcome": outcome,
            "matched_tokens": tokens_value(matched[pick]),
            **({"returned_home": True} if returned_home else {}),
            "candidates": {
                candidates[i].id: {"matched_tokens": tokens_value(matched[i]), "load": loads[i],
                                   "eligible": i in eligible,
                                   **(details or {}).get(candidates[i], {})}
                for i in shown_candidates(matched, pick, uniform)
            },
        }
        return RouteDecision(candidates[pick], explanation), pick


def _in_flight_loads(stats: Sequence[DeploymentStats]) -> list[float]:
    """``InFlightLoad.load`` of each candidate, inline; ``b if b > a else a`` is exactly what
    ``max(a, b)`` returns (the first of equals, and ``a`` against NaN)."""
    return [queue if (queue := each.engine_running + each.engine_waiting) > each.in_flight
            else each.in_flight for each in stats]


class PrefixKVAwareV1(PrefixKVAware):
    """``prefix_kv_aware``'s fingerprints and index with the load-guarded choice."""

    name = "prefix_kv_aware_v1"

    def __init__(self, deployments: Sequence[Deployment], settings: PrefixRoutingSettings,
                 index: AffinityIndex, load: LoadView) -> None:
        super().__init__(deployments, settings, index)
        self._guarded = LoadGuardedScorer(
            self.name, settings, load, tie_tokens=max(1, settings.block_chars // 4))

    def choose(self, call: Call, candidates: Sequence[Deployment]) -> RouteDecision:
        state: PrefixState = call.routing_state
        stats: Sequence[DeploymentStats] | None = None
        if candidates == self._deployments:  # the first attempt, usually: no reordering
            matched: Sequence[int] = state.matched_tokens
            stats = self._stats
        else:
            matched = [state.matched_tokens[self._position[d]] for d in candidates]
        prompt_tokens = state.fingerprint.total_tokens
        decision, _ = self._guarded.choose_listed(
            candidates, matched, state.best_match_tokens, state.best_match_tokens,
            prompt_tokens=prompt_tokens, stats=stats)
        explanation = decision.explanation
        explanation["matched_blocks"] = state.matched_blocks[
            self._position[decision.deployment]]
        explanation["prompt_tokens_est"] = prompt_tokens
        return decision

    def on_dispatched(self, call: Call, deployment: Deployment) -> None:
        state: PrefixState | None = call.routing_state
        if state is not None:
            self._record(state, deployment)

    def describe(self) -> dict[str, dict[str, Any]]:
        return {}
