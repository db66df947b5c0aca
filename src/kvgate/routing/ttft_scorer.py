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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from kvgate.config.schema import PrefixRoutingSettings
from kvgate.core.deployment import Deployment, RouteDecision
from kvgate.routing.explain import shown_candidates, tokens_value
from kvgate.routing.ttft_ledger import Floats, Ledger, Positions

#: How often engine figures (queue, KV capacity) are re-read and old placements expire, in
#: clock seconds: the scraper refreshes them once a second, decisions come far more often.
_REFRESH_S = 0.05
#: Relative difference below which two predicted costs are the same (float rounding).
_SAME = 1e-9
#: The ufuncs' reductions, without the Python wrapper of ``ndarray.min`` (a decision makes
#: a handful of these on arrays of a few hundred: the wrapper cost as much as the pass).
_min = np.minimum.reduce
_max = np.maximum.reduce


class TTFTScorer:
    """Predicts each candidate's cost (above) from the ledger the attempts keep."""

    def __init__(self, name: str, deployments: Sequence[Deployment],
                 settings: PrefixRoutingSettings, *, block_tokens: float,
                 load_s_per_token: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``load_s_per_token``: time to bring one CPU-tier (offloaded) token back."""
        self.name = name
        self.ledger = Ledger(deployments, settings, clock=clock)
        self._clock = clock
        self._load_s_per_token = load_s_per_token
        #: Matches within one block of the best count as the best (for the outcome label).
        self._block_tokens = block_tokens
        self._capacity: Floats = np.full(len(self.ledger.replicas), math.inf)
        #: Replicas whose KV size is not known (see _footprint).
        self._unknown_capacity = len(self._capacity)
        self._inverse_capacity: Floats = np.zeros(len(self._capacity))
        self._refreshed_s = -math.inf
        self._rotation = 0

    def _refresh(self, now_s: float) -> None:
        """Engine figures and expired placements, every replica; at most every _REFRESH_S."""
        self._refreshed_s = now_s
        ledger = self.ledger
        ledger.placed.expire(now_s)
        ledger.refresh(now_s)
        self._capacity = np.array([r.capacity_tokens for r in ledger.replicas])
        known = np.isfinite(self._capacity) & (self._capacity > 0)
        self._unknown_capacity = int(np.isinf(self._capacity).sum())
        self._inverse_capacity = np.zeros(len(self._capacity))
        np.divide(1.0, self._capacity, out=self._inverse_capacity, where=known)

    # -- the choice -------------------------------------------------------------------------

    def choose(self, candidates: Sequence[Deployment], prompt_tokens: float,
               matched: Sequence[float] | Floats, best_match: float, *,
               positions: Sequence[int] | None = None,
               offloaded: Sequence[float] | Floats | None = None,
               details: Mapping[Deployment, Mapping[str, Any]] | None = None,
               ) -> tuple[RouteDecision, int]:
        """The decision and the chosen candidate's index in ``candidates``.

        ``matched[i]``: tokens of the prompt ``candidates[i]`` already holds (on its GPU);
        ``offloaded[i]``: tokens after those it holds in the CPU tier, loaded instead of
        computed; it computes the rest. ``best_match`` is the most any deployment of the
        model holds (a failover attempt away from it is a spill). ``positions``: the
        candidates' places in the deployment list (None: the candidates are the whole list,
        in order).

        NOTE: every per-candidate figure is a numpy array and every pass over the fleet one
        vectorised operation: a pass costs about 0.4 us whatever the fleet's size, where a
        Python (or even ``map``) pass cost 5-15 us at 256 replicas, and a decision is a dozen
        passes. The arithmetic is the same IEEE double arithmetic in the same order, so the
        choices are the same as a scalar loop's.
        """
        now_s = self._clock()
        if now_s - self._refreshed_s >= _REFRESH_S:
            self._refresh(now_s)
        ledger = self.ledger
        held = np.asarray(matched, dtype=np.float64)
        where = None if positions is None else np.asarray(positions, dtype=np.intp)
        if where is None:
            base, rate = ledger.base, ledger.rate
        else:
            base, rate = ledger.base[where], ledger.rate[where]
        if offloaded is None:
            loaded = None
            uncached = prompt_tokens - held
        else:
            loaded = np.asarray(offloaded, dtype=np.float64)
            uncached = np.maximum(0.0, prompt_tokens - held - loaded)
        # NOTE: the prefill a request adds delays whatever arrives behind it there. With the
        # fleet idle nobody waits, so only this request's TTFT counts; the busier the fleet,
        # the more a recompute costs others: weighted by the share of replicas with prefill
        # queued. Without it a burst for one prefix copies it onto every replica whose queue
        # is a little shorter, evicting others' prefixes to do it.
        factor = 1.0 + ledger.busy_replicas / len(ledger.replicas)
        least_held = float(_min(held))
        uniform = loaded is None and least_held == float(_max(held))
        if uniform:
            # Every candidate holds the same (cold prompts, or a prefix everyone serves).
            costs = base + rate * ((prompt_tokens - least_held) * factor)
        elif loaded is None:
            costs = base + rate * uncached * factor
        else:
            costs = base + rate * uncached * factor + self._load_s_per_token * loaded
        wait_s: dict[int, float] = {}
        if self._unknown_capacity < len(self._capacity):
            # NOTE: a replica whose running requests fill its KV admits a prompt only as they
            # finish (vLLM queues or preempts): without this, prompts that match best pile
            # onto a replica with no room, which preempts and recomputes all of them.
            # Only where the uncached tokens do not fit in what is left (the output's room is
            # checked in admission_wait_s).
            room = ledger.room if where is None else ledger.room[where]
            for i in (room < uncached).nonzero()[0].tolist():
                w = ledger.admission_wait_s(i if positions is None else positions[i],
                                            uncached.item(i))
                if w > 0.0:
                    wait_s[i] = w
                    costs[i] += w
        evict_s: dict[int, float] = {}
        if prompt_tokens - least_held > self._least_headroom(where):  # someone evicts
            # Eviction only adds cost, so only candidates already below the cheapest one's
            # total can still win: price those (usually a handful), not the whole fleet.
            placed = ledger.placed.totals()
            fair = sum(placed.tolist()) / len(placed)
            first = int(costs.argmin())
            evict_s[first] = self._eviction_s(positions, first, uncached.item(first), placed,
                                              fair)
            bound = costs.item(first) + evict_s[first]
            # Of those, only the ones that would overflow cost anything.
            headroom = self._footprint(where)[0]
            for i in ((costs <= bound) & (uncached > headroom)).nonzero()[0].tolist():
                if i not in evict_s:
                    evict_s[i] = self._eviction_s(positions, i, uncached.item(i), placed, fair)
            for i, e in evict_s.items():
                costs[i] += e
        # Costs closer than the replicas' own prediction error are a tie (the model cannot
        # tell them apart): among those the replica computing the least wins (it keeps the
        # prefix where it is cached: a copy elsewhere must pay for itself clearly), then the
        # emptiest KV, then each in turn.
        first = int(costs.argmin())
        best = costs.item(first)
        p_first = first if positions is None else positions[first]
        limit = best + 2.0 * ledger.replicas[p_first].error_s + abs(best) * _SAME
        tied = (costs <= limit).nonzero()[0]
        ties = len(tied)
        if ties == 1:
            pick = int(tied[0])
        else:
            if not uniform:  # the least work = the most of the prompt held
                work_held = (held if loaded is None else prompt_tokens - uncached)[tied]
                tied = tied[work_held >= _max(work_held) - self._block_tokens]
            if len(tied) > 1:
                fill = self._fill(where, tied)
                tied = tied[fill == _min(fill)]
            if len(tied) > 1:
                tied_costs = costs[tied]
                lowest = float(_min(tied_costs))
                tied = tied[tied_costs <= lowest + abs(lowest) * _SAME]
            self._rotation += 1
            pick = int(tied[self._rotation % len(tied)])
        chosen_cost = costs.item(pick)
        costs[pick] = math.inf  # the runner-up: the best of the others (no copy of the array)
        runner_up = float(_min(costs)) if len(costs) > 1 else chosen_cost
        costs[pick] = chosen_cost
        matched_pick, uncached_pick = held.item(pick), uncached.item(pick)
        outcome = ("cold" if best_match < 0.5 * (matched_pick + uncached_pick)
                   else "hit" if matched_pick >= best_match - self._block_tokens
                   else "spill")
        shown = shown_candidates(costs, pick, ties == len(costs), lowest=True)
        p_pick = pick if positions is None else positions[pick]
        explanation: dict[str, Any] = {
            "strategy": self.name,
            "outcome": outcome,
            "matched_tokens": tokens_value(matched_pick),
            "predicted_ttft_ms": round((ledger.ttft_base.item(p_pick)
                                        + rate.item(pick) * uncached_pick + (
                self._load_s_per_token * loaded.item(pick) if loaded is not None else 0.0))
                * 1e3, 3),
            "runner_up_margin_ms": round((runner_up - chosen_cost) * 1e3, 3),
            "candidates": self._explained(candidates, shown, held, uncached, costs, evict_s,
                                          wait_s, details),
        }
        return RouteDecision(candidates[pick], explanation), pick

    @staticmethod
    def _explained(candidates: Sequence[Deployment], shown: Sequence[int], held: Floats,
                   uncached: Floats, costs: Floats, evict_s: Mapping[int, float],
                   wait_s: Mapping[int, float],
                   details: Mapping[Deployment, Mapping[str, Any]] | None
                   ) -> dict[str, dict[str, Any]]:
        """The explanation's entry per shown candidate (a few of them; every decision
        builds one, so each figure is read out of the arrays once)."""
        if len(shown) < len(costs):
            index = np.fromiter(shown, dtype=np.intp, count=len(shown))
            held, uncached, costs = held[index], uncached[index], costs[index]
        out: dict[str, dict[str, Any]] = {}
        for i, matched, left, cost_ms in zip(shown, held.tolist(), uncached.tolist(),
                                             (costs * 1e3).tolist(), strict=True):
            entry = {"matched_tokens": tokens_value(matched),
                     "uncached_tokens": tokens_value(left),
                     "predicted_cost_ms": round(cost_ms, 3)}
            if evict_s.get(i):
                entry["eviction_ms"] = round(evict_s[i] * 1e3, 3)
            if i in wait_s:
                entry["kv_wait_ms"] = round(wait_s[i] * 1e3, 3)
            if details:
                entry.update(details.get(candidates[i], {}))
            out[candidates[i].id] = entry
        return out

    def _eviction_s(self, positions: Sequence[int] | None, i: int, uncached: float,
                    placed: Floats, fair: float) -> float:
        """Candidate ``i``'s eviction cost: the tokens taking ``uncached`` would push out,
        each one recompute later, and the more so the more the replica was sent beyond its
        share (an over-committed replica's victims are younger):
        ``(placed + U) / max(capacity, the fleet's mean placed)``. When every replica was
        sent far more than it holds, the factor is about 1 everywhere and the queues decide:
        the cache thrashes wherever the request goes. ``placed``, ``fair``: every
        replica's placed tokens and their mean, read once per decision."""
        p = i if positions is None else positions[i]
        capacity = self._capacity.item(p)
        if math.isinf(capacity):
            return 0.0  # unknown size: only the tie rule's fill balances it (_footprint)
        placed_p = placed.item(p)
        headroom = capacity - placed_p
        if uncached <= headroom:
            return 0.0
        return (self.ledger.replicas[p].prefill.slope * min(uncached, uncached - headroom)
                * (placed_p + uncached) / max(capacity, fair))

    def _least_headroom(self, where: Positions | None) -> float:
        """The least KV headroom (tokens) among the candidates whose KV size is known,
        cheaply: a decision prices evictions only when some candidate would have to evict."""
        if self._unknown_capacity == len(self._capacity):
            return math.inf
        headroom = self._capacity - self.ledger.placed.totals()
        return float(_min(headroom if where is None else headroom[where]))

    def _fill(self, where: Positions | None, tied: Positions) -> Floats:
        """The share of its KV each ``tied`` candidate was sent (the tie rule's "emptiest"),
        for the tied ones only: ties are often the whole fleet, but often a few."""
        placed = self.ledger.placed.totals()
        ps = tied if where is None else where[tied]
        if self._unknown_capacity == len(self._capacity):
            # Every size unknown: each is taken to hold the fleet's mean (_footprint), so the
            # fill orders as the tokens placed.
            return placed[ps]
        if not self._unknown_capacity:
            return placed[ps] * self._inverse_capacity[ps]
        headroom, capacity = self._footprint(where)
        capacity, headroom = capacity[tied], headroom[tied]
        with np.errstate(invalid="ignore", divide="ignore"):
            share = (capacity - headroom) / capacity
        share[np.isinf(capacity)] = 0.0
        return share

    def _footprint(self, where: Positions | None) -> tuple[Floats, Floats]:
        """The candidates' KV headroom and capacity, in tokens.

        NOTE: a replica whose KV size is unknown (an engine that publishes no
        ``vllm:cache_config_info``, no ``kv_capacity_tokens`` set) is assumed to hold its
        fair share of what the fleet was sent, for the tie rule's "emptiest KV" (no eviction
        is priced without a known size): without it, prompts arriving one at a time would
        all follow the replica holding a few shared tokens, and nothing would spread the
        working set until a queue formed.
        """
        placed = self.ledger.placed.totals()
        fair = sum(placed.tolist()) / len(placed) or math.inf
        capacity = np.where(np.isinf(self._capacity), fair, self._capacity)
        if where is not None:
            capacity, placed = capacity[where], placed[where]
        return capacity - placed, capacity
