"""The choice both KV-aware strategies make: the replica with the lowest predicted cost of
serving this request, in seconds.

For candidate replica ``i``, with ``U_i`` the request's tokens that replica does not hold::

    ahead_i = prefill tokens dispatched there whose first token has not come back
              (+ the engine's own waiting requests this gateway did not send, at the
              replica's mean uncached tokens per request)
    ttft_i  = fixed_i + s_per_token_i x (ahead_i + U_i) + step_i x (1 + (ahead_i + U_i) / chunk)
              (+ offloaded_i x load_s_per_token: CPU-tier tokens are loaded, not recomputed)
    evict_i = s_per_token_i x min(U_i, max(0, placed_i + U_i - capacity_i))
              x (placed_i + U_i) / max(capacity_i, the fleet's mean placed)
    wait_i  = the wait for KV space when what runs there and U_i do not fit
              (:meth:`~kvgate.routing.ttft_ledger.Ledger.admission_wait_s`)
    cost_i  = ttft_i + evict_i + wait_i

``fixed_i`` and ``s_per_token_i`` are learned per replica from observed TTFTs
(:class:`~kvgate.routing.calibration.LineFit`), ``step_i`` from observed token gaps,
``chunk`` is the engine's prefill budget per step (vLLM's ``max_num_batched_tokens``).
``placed_i`` is the prefix tokens sent there within the eviction horizon
(:class:`~kvgate.routing.footprint.PlacedTokens`) and ``capacity_i`` its KV size: taking a
prefix that does not fit evicts tokens someone was sent recently, charged as one recompute,
scaled by how far beyond its size the replica was already sent (the more over-committed, the
younger, and likelier reused, its victims).

So a cached prefix matters only through the tokens it saves, a busy replica only through the
seconds its queue and batch add, and a hot prefix is copied to a second replica exactly when a
cold prefill there (plus what it evicts) beats staying where it is cached.
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Callable, Mapping, MutableSequence, Sequence
from typing import Any

from kvgate.config.schema import PrefixRoutingSettings
from kvgate.core.deployment import Deployment, RouteDecision
from kvgate.routing import calibration, fingerprint, floats
from kvgate.routing.explain import explained, ms, shown_candidates, tokens_value
from kvgate.routing.placed_shm import SharedPlacements
from kvgate.routing.ttft_ledger import Ledger

native_decide: Callable[..., tuple[int, int, dict[str, Any], float]] | None
try:
    from kvgate.routing._floats_native import decide as native_decide
except ImportError:  # built without a C compiler (floats.warn_if_python says so)
    native_decide = None

#: How often engine figures (queue, KV capacity) are re-read and old placements expire, in
#: clock seconds: the scraper refreshes them once a second, decisions come far more often.
_REFRESH_S = 0.05
#: Relative difference below which two predicted costs are the same (float rounding).
_SAME = 1e-9


class TTFTScorer:
    """Predicts each candidate's cost (above) from the ledger the attempts keep."""

    def __init__(self, name: str, deployments: Sequence[Deployment],
                 settings: PrefixRoutingSettings, *, block_tokens: float,
                 load_s_per_token: float = 0.0,
                 clock: Callable[[], float] = time.monotonic,
                 shared_placements: SharedPlacements | None = None) -> None:
        """``load_s_per_token``: time to bring one CPU-tier (offloaded) token back;
        ``shared_placements``: the placed-KV counts shared with the other workers."""
        floats.warn_if_python()
        fingerprint.warn_if_python()
        calibration.warn_if_python()
        self.name = name
        self.ledger = Ledger(deployments, settings, clock=clock,
                             shared_placements=shared_placements)
        self._clock = clock
        self._load_s_per_token = load_s_per_token
        #: Matches within one block of the best count as the best (for the outcome label).
        self._block_tokens = block_tokens
        #: (an array: the C decision reads it in place, like the ledger's figures)
        self._capacity = array("d", [math.inf]) * len(self.ledger.replicas)
        #: Replicas whose KV size is not known (see _footprint).
        self._unknown_capacity = len(self._capacity)
        #: (an array: the tie rule's fill reads it in one pass, kvgate.routing.floats)
        self._inverse_capacity = floats.zeros(len(self._capacity))
        self._refreshed_s = -math.inf
        self._rotation = 0

    def _refresh(self, now_s: float) -> None:
        """Engine figures and expired placements, every replica; at most every _REFRESH_S."""
        self._refreshed_s = now_s
        ledger = self.ledger
        ledger.placed.expire(now_s)
        ledger.refresh(now_s)
        self._capacity = array("d", [r.capacity_tokens for r in ledger.replicas])
        self._unknown_capacity = sum(map(math.isinf, self._capacity))
        self._inverse_capacity = array("d", [0.0 if math.isinf(c) or c <= 0 else 1.0 / c
                                             for c in self._capacity])
        ledger.placed.set_capacity(self._capacity)

    # -- the choice -------------------------------------------------------------------------

    def choose(self, candidates: Sequence[Deployment], prompt_tokens: float,
               matched: Sequence[float], best_match: float, *,
               positions: Sequence[int] | None = None,
               offloaded: Sequence[float] | None = None,
               details: Mapping[Deployment, Mapping[str, Any]] | None = None,
               known: Sequence[float] | None = None,
               reserve: bool = False,
               ) -> tuple[RouteDecision, int]:
        """The decision and the chosen candidate's index in ``candidates``.

        ``matched[i]``: tokens of the prompt ``candidates[i]`` already holds (on its GPU);
        ``offloaded[i]``: tokens after those it holds in the CPU tier, loaded instead of
        computed; it computes the rest. ``best_match`` is the most any deployment of the
        model holds (a failover attempt away from it is a spill). ``positions``: the
        candidates' places in the deployment list (None: the candidates are the whole list,
        in order). ``known[i]``: tokens of the prompt beyond those it holds that
        ``candidates[i]`` was sent within the horizon (its placed tokens count them already):
        taking them there again restores its working set instead of growing it.
        ``reserve``: the pick's uncached tokens are placed at once, for the other workers
        to see (call within ``ledger.placed.exclusive()``; the dispatch does not count
        them again).
        """
        now_s = self._clock()
        ledger = self.ledger
        # NOTE: the other workers' placements are read at each refresh, and at once by a
        # decision within ``placed.exclusive()`` (a cold prefix's: where it goes depends on
        # what they placed a moment ago). Read at every decision, with two busy workers each
        # found the other's totals changed and re-read them: ~6% of a worker's time at 64
        # replicas; a warm decision sees them at most _REFRESH_S old.
        if now_s - self._refreshed_s >= _REFRESH_S:
            self._refresh(now_s)
        # NOTE: the prefill a request adds delays whatever arrives behind it there. With the
        # fleet idle nobody waits, so only this request's TTFT counts; the busier the fleet,
        # the more a recompute costs others: weighted by the share of replicas with prefill
        # queued. Without it a burst for one prefix copies it onto every replica whose queue
        # is a little shorter, evicting others' prefixes to do it.
        factor = 1.0 + ledger.busy_replicas / len(ledger.replicas)
        sized = not self._unknown_capacity
        if (native_decide is not None and positions is None and offloaded is None
                and (details is None or type(details) is dict)
                and (sized or self._unknown_capacity == len(self._capacity))
                and type(candidates) is list):
            # NOTE: the common case (every deployment a candidate, no CPU-tier tokens, every
            # KV size known, or none; precise mode's details or not) in one C call,
            # kvgate/routing/_floats_decide.h: the same operations as the code below in the
            # same order, so the same pick and explanation (the tests hold it to this code),
            # at a fraction of the cost: at 64 replicas this code took ~25 us, the most of
            # anything KV-aware routing adds to a request (issue 15).
            placements = ledger.placed
            pick, self._rotation, route, uncached_pick = native_decide(
                self.name, candidates, prompt_tokens, matched, best_match, known,
                ledger.base, ledger.rate, ledger.room if sized else None, ledger.ttft_base,
                factor, placements.least_headroom if sized else math.inf, placements.totals(),
                self._capacity, self._inverse_capacity if sized else None, ledger.replicas,
                ledger.admission_wait_s, self._block_tokens, self._rotation, details or None)
            if reserve:
                placements.reserve(pick, max(0.0, uncached_pick), now_s)
            return RouteDecision(candidates[pick], route), pick
        base: Sequence[float]
        rate: Sequence[float]
        if positions is None:
            base, rate = ledger.base, ledger.rate
        else:
            base = [ledger.base[p] for p in positions]
            rate = [ledger.rate[p] for p in positions]
        uniform = offloaded is None and matched.count(matched[0]) == len(matched)
        uncached: Sequence[float]
        if uniform:  # every candidate holds the same (cold prompts, or a prefix all serve)
            uncached = [prompt_tokens - matched[0]] * len(matched)
        elif offloaded is None:  # prompt - matched, exactly (x -1.0 only flips the sign)
            uncached = floats.add_scaled([prompt_tokens] * len(matched), matched, -1.0)
        else:
            uncached = [max(0.0, prompt_tokens - m - o)
                        for m, o in zip(matched, offloaded, strict=True)]
        # NOTE: the passes over every candidate are kvgate.routing.floats' (C where built):
        # at 256 replicas, boxing a Python float per candidate per pass was most of a decision.
        costs: MutableSequence[float]
        if uniform:  # one product per candidate
            costs = floats.add_scaled(base, rate, uncached[0] * factor)
        elif offloaded is None:
            costs = floats.add_product(base, rate, uncached, factor)
        else:
            load = self._load_s_per_token
            costs = [b + r * u * factor + load * o
                     for b, r, u, o in zip(base, rate, uncached, offloaded, strict=True)]
        wait_s: dict[int, float] = {}
        if self._unknown_capacity < len(self._capacity):
            # NOTE: a replica whose running requests fill its KV admits a prompt only as they
            # finish (vLLM queues or preempts): without this, prompts that match best pile
            # onto a replica with no room, which preempts and recomputes all of them.
            # Only where the uncached tokens do not fit in what is left (the output's room is
            # checked in admission_wait_s).
            room = ledger.room if positions is None else [ledger.room[p] for p in positions]
            # (uniform: one number to fit, so the fullest replica says whether any lacks room)
            short = ([] if uniform and floats.minimum(room) >= uncached[0]
                     else floats.where_lt(room, uncached))
            for i in short:
                w = ledger.admission_wait_s(i if positions is None else positions[i],
                                            uncached[i])
                if w > 0.0:
                    wait_s[i] = w
                    costs[i] += w
        # NOTE: what a replica must hold grows by the uncached tokens it was not sent within
        # the horizon: a prefix it lost and takes back is already counted there. Priced as
        # growth everywhere, a prefix evicted from its replica moved to another, which then
        # lost one of its own, and so on (a simulated images run: 5 re-placements, p95 4.5x).
        growth = uncached if known is None else [
            max(0.0, u - k) for u, k in zip(uncached, known, strict=True)]
        evict_s: dict[int, float] = {}
        least_matched = matched[0] if uniform else floats.minimum(matched)
        if prompt_tokens - least_matched > self._least_headroom(positions):  # evicts
            # Eviction only adds cost, so only candidates already below the cheapest one's
            # total can still win: price those (usually a handful), not the whole fleet.
            placed = ledger.placed.totals()
            fair = sum(placed) / len(placed)
            first = floats.argmin(costs)
            evict_s[first] = self._eviction_s(positions, first, uncached[first], growth[first],
                                              placed, fair)
            bound = costs[first] + evict_s[first]
            # Of those, only the ones that would overflow cost anything (the order they are
            # priced in does not matter).
            headroom = self._footprint(positions)[0]
            for i in floats.where_le(costs, bound, floats.where_lt(headroom, growth)):
                if i not in evict_s:
                    evict_s[i] = self._eviction_s(positions, i, uncached[i], growth[i],
                                                  placed, fair)
            for i, e in evict_s.items():
                costs[i] += e
        first = floats.argmin(costs)
        best = costs[first]
        # Costs closer than the replicas' own prediction error are a tie (the model cannot
        # tell them apart): among those the replica computing the least wins (it keeps the
        # prefix where it is cached: a copy elsewhere must pay for itself clearly), then the
        # emptiest KV, then each in turn.
        p_first = first if positions is None else positions[first]
        limit = best + 2.0 * ledger.replicas[p_first].error_s + abs(best) * _SAME
        tied = floats.where_le(costs, limit)
        ties = len(tied)
        if ties == 1:
            pick = tied[0]
        else:
            # Each filter below passes `among` (the tied ones) unless every candidate is
            # tied, when the whole-list pass gives the same answer without an index per item.
            if not uniform:
                # The least work = the most of the prompt held (ties can be the fleet).
                held = (matched if offloaded is None
                        else [prompt_tokens - u for u in uncached])
                among = None if len(tied) == len(costs) else tied
                most = floats.maximum(held, among)
                tied = floats.where_ge(held, most - self._block_tokens, among)
            if len(tied) > 1:
                fill = self._fill(positions, None if known is None else growth)
                among = None if len(tied) == len(costs) else tied
                tied = floats.where_le(fill, floats.minimum(fill, among), among)
            if len(tied) > 1:
                among = None if len(tied) == len(costs) else tied
                lowest = floats.minimum(costs, among)
                tied = floats.where_le(costs, lowest + abs(lowest) * _SAME, among)
            self._rotation += 1
            pick = tied[self._rotation % len(tied)]
        chosen_cost = costs[pick]
        costs[pick] = math.inf  # the runner-up: the best of the others (no copy of the list)
        runner_up = floats.minimum(costs) if len(costs) > 1 else chosen_cost
        costs[pick] = chosen_cost
        outcome = ("cold" if best_match < 0.5 * (matched[pick] + uncached[pick])
                   else "hit" if matched[pick] >= best_match - self._block_tokens
                   else "spill")
        shown = shown_candidates(costs, pick, ties == len(costs), lowest=True)
        p_pick = pick if positions is None else positions[pick]
        explanation: dict[str, Any] = {
            "strategy": self.name,
            "outcome": outcome,
            "matched_tokens": tokens_value(matched[pick]),
            "predicted_ttft_ms": ms(ledger.ttft_base[p_pick] + rate[pick] * uncached[pick] + (
                self._load_s_per_token * offloaded[pick] if offloaded is not None else 0.0)),
            "runner_up_margin_ms": ms(runner_up - costs[pick]),
            "candidates": self._shown_entries(shown, candidates, matched, uncached, costs,
                                              evict_s, wait_s, details),
        }
        if reserve:
            ledger.placed.reserve(p_pick, max(0.0, uncached[pick]), now_s)
        return RouteDecision(candidates[pick], explanation), pick

    @staticmethod
    def _shown_entries(shown: Sequence[int], candidates: Sequence[Deployment],
                       matched: Sequence[float], uncached: Sequence[float],
                       costs: Sequence[float], evict_s: Mapping[int, float],
                       wait_s: Mapping[int, float],
                       details: Mapping[Deployment, Mapping[str, Any]] | None
                       ) -> dict[str, dict[str, Any]]:
        """The named candidates' entries in the explanation (no entry for a zero eviction or
        no wait). The common part in one C call (:func:`kvgate.routing.explain.explained`);
        evictions, waits and details are rare and few."""
        entries = explained(shown, candidates, matched, uncached, costs)
        if evict_s or wait_s or details:
            for i in shown:
                entry = entries[candidates[i].id]
                if evict := evict_s.get(i):
                    entry["eviction_ms"] = ms(evict)
                if (wait := wait_s.get(i)) is not None:
                    entry["kv_wait_ms"] = ms(wait)
                if details and (extra := details.get(candidates[i])):
                    entry.update(extra)
        return entries

    def _eviction_s(self, positions: Sequence[int] | None, i: int, uncached: float,
                    growth: float, placed: Sequence[float], fair: float) -> float:
        """Candidate ``i``'s eviction cost: of the ``uncached`` tokens it takes in, those
        beyond what it can hold once its working set grows by ``growth`` push others out,
        each one recompute later, and the more so the more the replica was sent beyond its
        share (an over-committed replica's victims are younger):
        ``(placed + G) / max(capacity, the fleet's mean placed)``. When every replica was
        sent far more than it holds, the factor is about 1 everywhere and the queues decide:
        the cache thrashes wherever the request goes. ``placed``, ``fair``: every
        replica's placed tokens and their mean, read once per decision."""
        p = i if positions is None else positions[i]
        capacity = self._capacity[p]
        if math.isinf(capacity):
            return 0.0  # unknown size: only the tie rule's fill balances it (_footprint)
        over = placed[p] + growth - capacity
        if over <= 0.0:
            return 0.0
        return (self.ledger.replicas[p].prefill.slope * min(uncached, over)
                * (placed[p] + growth) / max(capacity, fair))

    def _least_headroom(self, positions: Sequence[int] | None) -> float:
        """The least KV headroom (tokens) among the candidates whose KV size is known,
        cheaply: a decision prices evictions only when some candidate would have to evict."""
        if self._unknown_capacity == len(self._capacity):
            return math.inf
        if positions is None:
            return self.ledger.placed.least_headroom
        placed = self.ledger.placed.totals()
        return min(self._capacity[p] - placed[p] for p in positions)

    def _fill(self, positions: Sequence[int] | None,
              growth: Sequence[float] | None = None) -> Sequence[float]:
        """The share of its KV each candidate was sent (the tie rule's "emptiest"). With
        ``growth`` (per candidate, when some differ), the share once it takes the request.

        NOTE: for every candidate, though only the tied ones are compared: ties are often the
        whole fleet, and one C pass over all costs less than picking the tied ones out."""
        placed: Sequence[float] = self.ledger.placed.totals()
        if positions is not None:
            placed = [placed[p] for p in positions]
        if growth is not None and not self._unknown_capacity:
            placed = floats.add_scaled(placed, growth, 1.0)  # exact: growth x 1.0
        if self._unknown_capacity == len(self._capacity):
            # Every size unknown: each is taken to hold the fleet's mean (_footprint), so the
            # fill orders as the tokens placed.
            return placed
        if not self._unknown_capacity:
            inverse: Sequence[float] = self._inverse_capacity
            if positions is not None:
                inverse = [inverse[p] for p in positions]
            return floats.multiply(placed, inverse)
        headroom, capacity = self._footprint(positions)
        return [0.0 if math.isinf(c) else (c - h) / c for h, c in zip(headroom, capacity,
                                                                        strict=True)]

    def _footprint(self, positions: Sequence[int] | None
                   ) -> tuple[Sequence[float], Sequence[float]]:
        """The candidates' KV headroom and capacity, in tokens.

        NOTE: a replica whose KV size is unknown (an engine that publishes no
        ``vllm:cache_config_info``, no ``kv_capacity_tokens`` set) is assumed to hold its
        fair share of what the fleet was sent, for the tie rule's "emptiest KV" (no eviction
        is priced without a known size): without it, prompts arriving one at a time would
        all follow the replica holding a few shared tokens, and nothing would spread the
        working set until a queue formed.
        """
        placed = self.ledger.placed.totals()
        if positions is None and not self._unknown_capacity:  # every size known
            # capacity - placed, exactly (x -1.0 only flips the sign)
            return floats.add_scaled(self._capacity, placed, -1.0), self._capacity
        ps: Sequence[int] = positions if positions is not None else range(len(placed))
        fair = sum(placed) / len(placed) or math.inf
        capacity = [fair if math.isinf(c := self._capacity[p]) else c for p in ps]
        return [c - placed[p] for c, p in zip(capacity, ps, strict=True)], capacity
