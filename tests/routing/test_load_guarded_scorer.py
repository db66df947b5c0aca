"""LoadGuardedScorer and prefix_kv_aware decide exactly as the straightforward scorer did.

The fast scorer computes its lists with C loops and lists matches in candidate order; these
properties compare it, decision by decision (pick, outcome, explanation, rotation), with the
readable version it replaced, over random loads, matches, candidate subsets and settings.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from kvgate.config.schema import PrefixRoutingSettings
from kvgate.core.deployment import Deployment, RouteDecision
from kvgate.request.parse import parse_call
from kvgate.routing.affinity import MemoryAffinityIndex
from kvgate.routing.fingerprint import fingerprint
from kvgate.routing.load import InFlightLoad, LoadView
from kvgate.routing.prefix_kv_aware import cumulative_tokens
from kvgate.routing.prefix_kv_aware_v1 import LoadGuardedScorer, PrefixKVAwareV1
from tests.routing.factories import deployment

EXPLAINED_CANDIDATES = 8

class ReferenceScorer:
    """``LoadGuardedScorer`` as it was before it was made fast: one readable pass per step."""

    __slots__ = ("_rotation", "_settings", "_tie_tokens", "load", "name")

    def __init__(self, name: str, settings: PrefixRoutingSettings, load: LoadView,
                 tie_tokens: int) -> None:
        self.name = name
        self.load = load
        self._settings = settings
        self._tie_tokens = tie_tokens
        self._rotation = 0

    def choose(
        self,
        candidates: Sequence[Deployment],
        matched_tokens: Mapping[Deployment, float],
        details: Mapping[Deployment, Mapping[str, Any]] | None = None,
        prompt_tokens: float = 0.0,
        history_tokens: Mapping[Deployment, float] | None = None,
        covered_tokens: Mapping[Deployment, float] | None = None,
    ) -> tuple[RouteDecision, int]:
        loads = [self.load.load(d) for d in candidates]
        least = min(loads)
        mean = sum(loads) / len(loads)
        slack = max(self._settings.max_excess_requests, self._settings.max_excess_ratio * mean)
        matched = [matched_tokens.get(d, 0) for d in candidates]
        best_match = max(matched_tokens.values(), default=0)
        eligible = [i for i, load in enumerate(loads) if load <= least + slack]
        best_eligible_match = max(matched[i] for i in eligible)
        covered = covered_tokens if covered_tokens is not None else matched_tokens
        # NOTE: a prefix shared by many prompts but short next to each (a system prompt before
        # a long per-user context) would otherwise pull every new conversation onto the
        # replicas that already hold it, starving the rest; SGLang's cache_threshold.
        follow_tokens = self._settings.min_match_ratio * prompt_tokens
        cold = best_match == 0 or max(covered.values(), default=0) < follow_tokens
        eligible_cold = best_eligible_match == 0 or max(
            covered.get(candidates[i], 0) for i in eligible) < follow_tokens
        # Cold and tied prompts: everything within one block of the best counts as equal.
        window = best_eligible_match if eligible_cold else self._tie_tokens
        tied = [i for i in eligible if matched[i] >= best_eligible_match - window]
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
        # The explanation names at most EXPLAINED_CANDIDATES candidates (the chosen one and the
        # best matches): building an entry per replica dominated decisions on large fleets.
        shown = range(len(candidates))
        if len(candidates) > EXPLAINED_CANDIDATES:
            best = heapq.nlargest(EXPLAINED_CANDIDATES - 1, shown, key=matched.__getitem__)
            shown = sorted({pick, *best})  # type: ignore[assignment]
        eligible_set = set(eligible)
        explanation: dict[str, Any] = {
            "strategy": self.name,
            "outcome": outcome,
            "matched_tokens": _tokens(matched[pick]),
            **({"returned_home": True} if returned_home else {}),
            "candidates": {
                candidates[i].id: {"matched_tokens": _tokens(matched[i]), "load": loads[i],
                                   "eligible": i in eligible_set,
                                   **(details or {}).get(candidates[i], {})}
                for i in shown
            },
        }
        return RouteDecision(candidates[pick], explanation), pick


def _tokens(value: float) -> float | int:
    """Whole tokens stay ints in the explanation; weighted (CPU-tier) sums keep one decimal."""
    return int(value) if float(value).is_integer() else round(value, 1)


class LoadByCall:
    """A load view that is not ``InFlightLoad``: the scorer must call it."""

    def load(self, deployment: Deployment) -> float:
        return InFlightLoad().load(deployment)


FLEET = [deployment(f"d{i}") for i in range(12)]
#: Few distinct values, so ties, equal loads and "within one block" cases are common.
TOKENS = st.sampled_from([0, 0, 16, 32, 40, 64, 128, 129, 1000, 2.5])


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    # Past EXPLAINED_CANDIDATES often: the explanation then names a subset.
    size = draw(st.sampled_from([1, 2, 3, 8, 9, 12]))
    fleet = FLEET[:size]
    order = draw(st.permutations(fleet))
    candidates = order[:draw(st.sampled_from([1, size // 2 + 1, size]))]
    optional = st.none() | st.fixed_dictionaries({d: TOKENS for d in fleet})
    return {
        "loads": [(draw(st.integers(0, 40)), draw(st.sampled_from([0.0, 3.0, 30.5])))
                  for _ in fleet],
        "candidates": candidates,
        "matched": draw(st.fixed_dictionaries({d: TOKENS for d in fleet})),
        "covered": draw(optional),
        "history": draw(optional),
        "prompt_tokens": draw(st.sampled_from([0.0, 100.0, 2000.0])),
        "settings": PrefixRoutingSettings(
            max_excess_requests=draw(st.sampled_from([0.0, 2.0, 16.0])),
            max_excess_ratio=draw(st.sampled_from([0.0, 0.5])),
            min_match_ratio=draw(st.sampled_from([0.0, 0.5]))),
        "details": draw(st.booleans()),
    }


@given(scenario=scenarios(), by_call=st.booleans())
@settings(max_examples=400, deadline=None)
def test_scorer_decides_as_the_reference(scenario: dict[str, Any], by_call: bool) -> None:
    for d, (in_flight, engine) in zip(FLEET, scenario["loads"], strict=False):
        d.stats.in_flight, d.stats.engine_running = in_flight, engine
    load: LoadView = LoadByCall() if by_call else InFlightLoad()
    fast = LoadGuardedScorer("s", scenario["settings"], load, tie_tokens=16)
    reference = ReferenceScorer("s", scenario["settings"], load, tie_tokens=16)
    details = {d: {"tier": d.id} for d in FLEET} if scenario["details"] else None
    try:
        for _ in range(3):  # the rotation advances the same way
            args = (scenario["candidates"], scenario["matched"], details,
                    scenario["prompt_tokens"], scenario["history"], scenario["covered"])
            (got, got_pick), (want, want_pick) = fast.choose(*args), reference.choose(*args)
            assert got_pick == want_pick and got.deployment is want.deployment
            assert got.explanation == want.explanation
            assert list(got.explanation["candidates"]) == list(want.explanation["candidates"])
    finally:
        for d in FLEET:
            d.stats.in_flight, d.stats.engine_running = 0, 0.0


def _call(system: int, user: int) -> Any:
    text = f"system prompt {system} " * 40 + f"question {user} " * (user % 5)
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": text}]})
    return parse_call(body, "chat", models={"m"}, max_image_bytes=1 << 20)


@given(history=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 9), st.integers(0, 11)),
                        max_size=30),
       prompt=st.tuples(st.integers(0, 3), st.integers(0, 9)),
       drop=st.integers(0, 11), loads=st.lists(st.integers(0, 30), min_size=12, max_size=12))
@settings(max_examples=150, deadline=None)
def test_prefix_kv_aware_decides_as_the_reference(
        history: list[tuple[int, int, int]], prompt: tuple[int, int], drop: int,
        loads: list[int]) -> None:
    prefix = PrefixRoutingSettings(block_chars=64, max_excess_requests=4.0)
    index = MemoryAffinityIndex(max_blocks_per_deployment=10_000, ttl_s=300)
    strategy = PrefixKVAwareV1(FLEET, prefix, index, InFlightLoad())
    reference = ReferenceScorer(strategy.name, prefix, InFlightLoad(), tie_tokens=16)
    for system, user, where in history:
        strategy.on_dispatched(_prepared(strategy, _call(system, user)), FLEET[where])
    for d, in_flight in zip(FLEET, loads, strict=True):
        d.stats.in_flight = in_flight
    try:
        for candidates in (FLEET, [d for i, d in enumerate(FLEET) if i != drop]):
            call = _prepared(strategy, _call(*prompt))
            fp = fingerprint(call, block_chars=64)
            counts = index.match_now(fp.hashes, [d.id for d in FLEET])
            cumulative = cumulative_tokens(fp.tokens)
            matched = {d: cumulative[c] for d, c in zip(FLEET, counts, strict=True)}
            want, _ = reference.choose(candidates, matched if fp.hashes else {},
                                       prompt_tokens=fp.total_tokens)
            got = strategy.choose(call, candidates)
            assert got.deployment is want.deployment
            assert got.explanation == {
                **want.explanation, "prompt_tokens_est": fp.total_tokens,
                "matched_blocks": dict(zip(FLEET, counts, strict=True))[want.deployment]}
    finally:
        for d in FLEET:
            d.stats.in_flight = 0


def _prepared(strategy: PrefixKVAwareV1, call: Any) -> Any:
    asyncio.run(strategy.prepare(call))
    return call
