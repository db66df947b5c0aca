"""``prefix_kv_aware``: send a request where its prompt prefix is most likely still in KV cache.

Per request, in order:
1. ``prepare`` (once, before the first attempt): fingerprint the prompt and ask the affinity
   index how many leading links each deployment served recently.
2. ``choose`` (per attempt, sync): the load guard first — a deployment is *eligible* while its
   load is within ``max(max_excess_requests, max_excess_ratio x mean load)`` of the least
   loaded candidate — then the eligible deployment with the most matched tokens; matches within
   one block of each other count as a tie, and ties (including cold prompts that match nowhere)
   go to the least loaded, rotating among equals. A match covering less than
   ``min_match_ratio`` of the prompt is not followed: the request is placed as a cold one.
3. ``on_dispatched``: record the prompt's links for the chosen deployment. A request spilled by
   the load guard warms its new deployment, so a hot prefix ends up cached on several replicas
   instead of queueing on one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate, compress, islice, repeat
from operator import eq, ge, gt
from typing import TYPE_CHECKING, Any

from kvgate.config.schema import PrefixRoutingSettings
from kvgate.core.deployment import Deployment, DeploymentStats, RouteDecision
from kvgate.routing.affinity import AffinityIndex
from kvgate.routing.base import StrategyDefaults
from kvgate.routing.fingerprint import Fingerprint, MessageMemo, fingerprint
from kvgate.routing.load import InFlightLoad, LoadView

if TYPE_CHECKING:
    from kvgate.core.call import Call


@dataclass(slots=True)
class _PrefixState:
    """What ``prepare`` learned, read by every attempt's ``choose``.

    Matches are lists in the strategy's deployment order, not dicts: building a dict per
    request cost more than the rest of the decision on large fleets.
    """

    fingerprint: Fingerprint
    matched_tokens: list[int]
    matched_blocks: list[int]
    best_match_tokens: int


#: Candidates listed in a decision's explanation, at most.
_EXPLAINED_CANDIDATES = 8


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
            "matched_tokens": _tokens(matched[pick]),
            **({"returned_home": True} if returned_home else {}),
            "candidates": {
                candidates[i].id: {"matched_tokens": _tokens(matched[i]), "load": loads[i],
                                   "eligible": i in eligible,
                                   **(details or {}).get(candidates[i], {})}
                for i in _shown(matched, pick, uniform)
            },
        }
        return RouteDecision(candidates[pick], explanation), pick


def _in_flight_loads(stats: Sequence[DeploymentStats]) -> list[float]:
    """``InFlightLoad.load`` of each candidate, inline; ``b if b > a else a`` is exactly what
    ``max(a, b)`` returns (the first of equals, and ``a`` against NaN)."""
    return [queue if (queue := each.engine_running + each.engine_waiting) > each.in_flight
            else each.in_flight for each in stats]


def _shown(matched: Sequence[float], pick: int, uniform: bool) -> Sequence[int]:
    """The candidates an explanation names, in candidate order: the chosen one and the
    ``_EXPLAINED_CANDIDATES - 1`` best matches, earlier candidates first among equals.

    NOTE: building an entry per replica dominated decisions on large fleets. The same set as
    ``heapq.nlargest(k, range(n), key=matched.__getitem__)``, found by C loops: everything above
    the k-th best value, then the first candidates at it. ``uniform``: every value is the same.
    """
    if len(matched) <= _EXPLAINED_CANDIDATES:
        return range(len(matched))
    best_count = _EXPLAINED_CANDIDATES - 1
    if uniform:  # all equal: the first ones
        return sorted({pick, *range(best_count)})
    kth = sorted(matched, reverse=True)[best_count - 1]
    everyone = range(len(matched))
    above = list(compress(everyone, map(gt, matched, repeat(kth))))
    at = islice(compress(everyone, map(eq, matched, repeat(kth))), best_count - len(above))
    return sorted({pick, *above, *at})


def _tokens(value: float) -> float | int:
    """Whole tokens stay ints in the explanation; weighted (CPU-tier) sums keep one decimal."""
    return int(value) if float(value).is_integer() else round(value, 1)


class PrefixKVAware(StrategyDefaults):
    name = "prefix_kv_aware"

    def __init__(
        self,
        deployments: Sequence[Deployment],
        settings: PrefixRoutingSettings,
        index: AffinityIndex,
        load: LoadView,
    ) -> None:
        self._deployments = list(deployments)
        self._ids = tuple(d.id for d in deployments)
        self._position = {d: i for i, d in enumerate(self._deployments)}
        self._stats = [d.stats for d in self._deployments]
        self._memo = MessageMemo()
        self._settings = settings
        self._index = index
        self._scorer = LoadGuardedScorer(
            self.name, settings, load, tie_tokens=max(1, settings.block_chars // 4)
        )

    async def prepare(self, call: Call) -> None:
        fp = fingerprint(call, block_chars=self._settings.block_chars, memo=self._memo)
        if fp.hashes:
            counts = await self._index.match(fp.hashes, self._ids)
            # NOTE: tokens per distinct count, summed on demand: a few groups of deployments
            # match alike, and a running total of every link costs more than the lookup.
            tokens_at = {count: fp.tokens_in_first(count) for count in set(counts)}
            call.routing_state = _PrefixState(fp, list(map(tokens_at.__getitem__, counts)),
                                              counts, max(tokens_at.values(), default=0))
        else:
            none = [0] * len(self._deployments)
            call.routing_state = _PrefixState(fp, none, none, 0)

    def choose(self, call: Call, candidates: Sequence[Deployment]) -> RouteDecision:
        state: _PrefixState = call.routing_state
        stats: Sequence[DeploymentStats] | None = None
        if candidates == self._deployments:  # the first attempt, usually: no reordering
            matched: Sequence[int] = state.matched_tokens
            stats = self._stats
        else:
            matched = [state.matched_tokens[self._position[d]] for d in candidates]
        prompt_tokens = state.fingerprint.total_tokens
        decision, _ = self._scorer.choose_listed(
            candidates, matched, state.best_match_tokens, state.best_match_tokens,
            prompt_tokens=prompt_tokens, stats=stats)
        explanation = decision.explanation
        explanation["matched_blocks"] = state.matched_blocks[
            self._position[decision.deployment]]
        explanation["prompt_tokens_est"] = prompt_tokens
        return decision

    def on_dispatched(self, call: Call, deployment: Deployment) -> None:
        state: _PrefixState | None = call.routing_state
        if state is not None and state.fingerprint.hashes:
            self._index.record(deployment.id, state.fingerprint.hashes)

    def affinity_entries(self) -> int:
        """(deployment, block) pairs the affinity index tracks; -1 when the backend can't tell."""
        return self._index.size()


def cumulative_tokens(tokens: Sequence[int]) -> list[int]:
    """``out[k]`` = tokens in the first ``k`` links."""
    return list(accumulate(tokens, initial=0))
