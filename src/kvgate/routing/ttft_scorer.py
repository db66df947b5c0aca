"""The choice both KV-aware strategies make: the replica with the lowest predicted cost of
serving this request, in seconds.

For candidate replica ``i``, with ``U_i`` the request's tokens that replica does not hold::

    ahead_i = prefill tokens dispatched there whose first token has not come back
              (+ the engine's own waiting requests this gateway did not send, at the
              replica's mean uncached tokens per request)
    ttft_i  = fixed_i + s_per_token_i x (ahead_i + U_i) + step_i x (1 + (ahead_i + U_i) / chunk)
              (+ offloaded_i x load_s_per_token: CPU-tier tokens are loaded, not recomputed)
    evict_i = s_per_token_i x min(U_i, max(0, placed_i + U_i - capacity_i))
              x (placed_i + U_i) / capacity_i
    cost_i  = ttft_i + evict_i

``fixed_i`` and ``s_per_token_i`` are learned per replica from observed TTFTs
(:class:`~kvgate.routing.calibration.PrefillFit`), ``step_i`` from observed token gaps,
``chunk`` is the engine's prefill budget per step (vLLM's ``max_num_batched_tokens``).
``placed_i`` is the prefix tokens sent there within the eviction horizon
(:class:`~kvgate.routing.footprint.PlacedTokens`) and ``capacity_i`` its KV size: taking a
prefix that does not fit evicts tokens someone was sent recently, charged as one recompute,
scaled by how far beyond its size the replica was already sent (the more over-committed, the
younger, and likelier reused, its victims).

So a cached prefix matters only through the tokens it saves, a busy replica only through the
seconds its queue adds, and a hot prefix is copied to a second replica exactly when a cold
prefill there (plus what it evicts) beats waiting behind the queue where it is cached.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from operator import eq, le
from typing import Any, overload

from kvgate.config.schema import PrefixRoutingSettings
from kvgate.core.deployment import Deployment, RouteDecision
from kvgate.routing.calibration import PrefillFit, StepTimer
from kvgate.routing.explain import shown_candidates, tokens_value
from kvgate.routing.footprint import PlacedTokens

#: How often engine figures (queue, KV capacity) are re-read and old placements expire, in
#: clock seconds: the scraper refreshes them once a second, decisions come far more often.
_REFRESH_S = 0.05
#: Weight of a new request in a replica's mean uncached tokens per request.
_MEAN_ALPHA = 0.1


@dataclass(slots=True)
class Ticket:
    """One dispatched attempt, from ``dispatched`` to ``released``."""

    position: int
    uncached_tokens: float
    #: Prefill tokens ahead of this request's first token at dispatch, its own included.
    work_tokens: float
    dispatched_s: float
    first_token_s: float | None = None
    released: bool = False


class _Replica:
    """What the scorer knows of one deployment."""

    __slots__ = ("capacity_tokens", "configured_capacity", "fit", "mean_tokens", "queued",
                 "step", "waiting")

    def __init__(self, settings: PrefixRoutingSettings, configured_capacity: int | None
                 ) -> None:
        self.fit = PrefillFit(s_per_token=1.0 / settings.prefill_tokens_per_s_prior,
                              fixed_s=0.0, span_tokens=settings.prefill_chunk_tokens)
        self.step = StepTimer(step_s=settings.decode_step_ms_prior / 1000.0)
        self.queued = 0.0  # prefill tokens dispatched, first token not back
        self.waiting = 0  # requests in that state
        self.mean_tokens = 0.0
        self.configured_capacity = configured_capacity
        self.capacity_tokens = math.inf if configured_capacity is None else configured_capacity


class _Remaining(Sequence[float]):
    """``prompt_tokens - matched[i]``, computed for the few candidates a decision reads it
    of, instead of a list over the whole fleet."""

    __slots__ = ("_matched", "_prompt")

    def __init__(self, prompt_tokens: float, matched: Sequence[float]) -> None:
        self._prompt = prompt_tokens
        self._matched = matched

    def __len__(self) -> int:
        return len(self._matched)

    @overload
    def __getitem__(self, i: int) -> float: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[float]: ...

    def __getitem__(self, i: int | slice) -> float | Sequence[float]:
        if isinstance(i, slice):
            return [self._prompt - m for m in self._matched[i]]
        return self._prompt - self._matched[i]


class TTFTScorer:
    """Predicts each candidate's cost (above) and keeps the ledger and fits it needs."""

    def __init__(self, name: str, deployments: Sequence[Deployment],
                 settings: PrefixRoutingSettings, *, block_tokens: float,
                 load_s_per_token: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``load_s_per_token``: time to bring one CPU-tier (offloaded) token back."""
        self.name = name
        self._deployments = list(deployments)
        self._position = {d: i for i, d in enumerate(self._deployments)}
        self._clock = clock
        self._chunk = float(settings.prefill_chunk_tokens)
        self._load_s_per_token = load_s_per_token
        #: Matches within one block of the best count as the best (for the outcome label).
        self._block_tokens = block_tokens
        self._replicas = [_Replica(settings, d.settings.kv_capacity_tokens)
                          for d in self._deployments]
        self._placed = PlacedTokens(len(self._deployments), settings.ttl_s)
        # Per replica, refreshed on every ledger change: cost = base + rate x uncached.
        self._base = [0.0] * len(self._deployments)
        self._rate = [0.0] * len(self._deployments)
        self._headroom = [math.inf] * len(self._deployments)
        self._min_headroom = math.inf
        #: Replicas whose KV size is not known (see _footprint).
        self._unknown_capacity = len(self._deployments)
        self._refreshed_s = -math.inf
        self._rotation = 0
        #: Replicas with prefill queued (waiting > 0), kept by the ledger.
        self._busy_replicas = 0
        for position in range(len(self._deployments)):
            self._update(position)

    # -- the ledger -------------------------------------------------------------------------

    def _update(self, position: int) -> None:
        replica = self._replicas[position]
        stats = self._deployments[position].stats
        others = max(0.0, stats.engine_waiting - replica.waiting) * replica.mean_tokens
        fit, step_s = replica.fit, replica.step.step_s
        rate = fit.s_per_token + step_s / self._chunk
        self._rate[position] = rate
        self._base[position] = fit.fixed_s + step_s + rate * (replica.queued + others)
        headroom = replica.capacity_tokens - self._placed.totals()[position]
        previous, self._headroom[position] = self._headroom[position], headroom
        if headroom < self._min_headroom:
            self._min_headroom = headroom
        elif previous == self._min_headroom and headroom > previous:
            self._min_headroom = min(self._headroom)

    def _refresh(self, now_s: float) -> None:
        """Engine figures and expired placements, every replica; at most every _REFRESH_S."""
        self._refreshed_s = now_s
        self._placed.expire(now_s)
        for position, (replica, deployment) in enumerate(
                zip(self._replicas, self._deployments, strict=True)):
            if replica.configured_capacity is None:
                scraped = deployment.stats.engine_kv_capacity_tokens
                replica.capacity_tokens = scraped if scraped > 0 else math.inf
            self._update(position)
        self._min_headroom = min(self._headroom, default=math.inf)
        self._unknown_capacity = sum(math.isinf(r.capacity_tokens) for r in self._replicas)

    def dispatched(self, position: int, uncached_tokens: float) -> Ticket:
        now_s = self._clock()
        replica = self._replicas[position]
        stats = self._deployments[position].stats
        others = max(0.0, stats.engine_waiting - replica.waiting) * replica.mean_tokens
        ticket = Ticket(position, uncached_tokens, replica.queued + others + uncached_tokens,
                        now_s)
        replica.queued += uncached_tokens
        replica.waiting += 1
        if replica.waiting == 1:
            self._busy_replicas += 1
        replica.mean_tokens += _MEAN_ALPHA * (uncached_tokens - replica.mean_tokens)
        self._placed.add(position, uncached_tokens, now_s)
        self._update(position)
        return ticket

    def first_token(self, ticket: Ticket) -> None:
        """The ticket's first token arrived (a stream): its prefill is done, and its time is a
        calibration sample."""
        if ticket.released or ticket.first_token_s is not None:
            return
        now_s = self._clock()
        ticket.first_token_s = now_s
        replica = self._replicas[ticket.position]
        self._leave_queue(replica, ticket)
        self._observe_ttft(replica, ticket, now_s - ticket.dispatched_s)
        self._update(ticket.position)

    def released(self, ticket: Ticket, output_tokens: int) -> None:
        """The attempt ended (answered, failed or abandoned) after ``output_tokens``."""
        if ticket.released:
            return
        ticket.released = True
        now_s = self._clock()
        replica = self._replicas[ticket.position]
        if ticket.first_token_s is None:
            self._leave_queue(replica, ticket)
            if output_tokens > 0:
                # A blocking answer: its TTFT is the whole time less the decode steps after
                # the first token, at the replica's current step time.
                self._observe_ttft(replica, ticket, now_s - ticket.dispatched_s
                                   - (output_tokens - 1) * replica.step.step_s)
        elif output_tokens >= 2:
            replica.step.observe((now_s - ticket.first_token_s) / (output_tokens - 1))
        self._update(ticket.position)

    def _leave_queue(self, replica: _Replica, ticket: Ticket) -> None:
        replica.waiting -= 1
        replica.queued -= ticket.uncached_tokens
        if replica.waiting == 0:
            replica.queued = 0.0  # no float drift on an idle replica
            self._busy_replicas -= 1

    def _observe_ttft(self, replica: _Replica, ticket: Ticket, ttft_s: float) -> None:
        work = ticket.work_tokens
        steps_s = replica.step.step_s * (1.0 + work / self._chunk)
        replica.fit.observe(work, max(0.0, ttft_s - steps_s), self._clock())

    # -- the choice -------------------------------------------------------------------------

    def choose(self, candidates: Sequence[Deployment], prompt_tokens: float,
               matched: Sequence[float], best_match: float, *,
               positions: Sequence[int] | None = None,
               offloaded: Sequence[float] | None = None,
               details: Mapping[Deployment, Mapping[str, Any]] | None = None,
               ) -> tuple[RouteDecision, int]:
        """The decision and the chosen candidate's index in ``candidates``.

        ``matched[i]``: tokens of the prompt ``candidates[i]`` already holds (on its GPU);
        ``offloaded[i]``: tokens after those it holds in the CPU tier, loaded instead of
        computed; it computes the rest. ``best_match`` is the most any deployment of the
        model holds (a failover attempt away from it is a spill). ``positions``: the
        candidates' places in the deployment list (None: the candidates are the whole list,
        in order).
        """
        now_s = self._clock()
        if now_s - self._refreshed_s >= _REFRESH_S:
            self._refresh(now_s)
        if positions is None:
            base, rate = self._base, self._rate
        else:
            base = [self._base[p] for p in positions]
            rate = [self._rate[p] for p in positions]
        uncached: Sequence[float]
        if offloaded is None:
            uncached = _Remaining(prompt_tokens, matched)
        else:
            uncached = [max(0.0, prompt_tokens - m - o)
                        for m, o in zip(matched, offloaded, strict=True)]
        # NOTE: the prefill a request adds delays whatever arrives behind it there. With the
        # fleet idle nobody waits, so only this request's TTFT counts; the busier the fleet,
        # the more a recompute costs others: weighted by the share of replicas with prefill
        # queued. Without it a burst for one prefix copies it onto every replica whose queue
        # is a little shorter, evicting others' prefixes to do it.
        factor = 1.0 + self._busy_replicas / len(self._replicas)
        if offloaded is None:  # one pass over the fleet: the common case
            costs = [b + r * (prompt_tokens - m) * factor
                     for b, r, m in zip(base, rate, matched, strict=True)]
        else:
            load = self._load_s_per_token
            costs = [b + r * u * factor + load * o
                     for b, r, u, o in zip(base, rate, uncached, offloaded, strict=True)]
        evict_s: dict[int, float] = {}
        if prompt_tokens - min(matched) > self._least_headroom(positions):  # someone evicts
            # Eviction only adds cost, so only candidates already below the cheapest one's
            # total can still win: price those (usually a handful), not the whole fleet.
            first = costs.index(min(costs))
            evict_s[first] = self._eviction_s(positions, first, uncached[first])
            bound = costs[first] + evict_s[first]
            for i in compress(range(len(costs)), map(le, costs, repeat(bound))):
                if i not in evict_s:
                    evict_s[i] = self._eviction_s(positions, i, uncached[i])
            for i, e in evict_s.items():
                costs[i] += e
        best = min(costs)
        ties = costs.count(best)
        if ties == 1:
            pick = costs.index(best)
        else:
            tied = list(compress(range(len(costs)), map(eq, costs, repeat(best))))
            least = min(uncached[i] for i in tied)
            tied = [i for i in tied if uncached[i] == least]  # equal cost: the least work,
            if len(tied) > 1:  # then the emptiest KV, then in turn
                headroom, capacity = self._footprint(positions)
                fill = [0.0 if math.isinf(capacity[i]) else (capacity[i] - headroom[i])
                        / capacity[i] for i in tied]
                emptiest = min(fill)
                tied = [i for i, f in zip(tied, fill, strict=True) if f == emptiest]
            self._rotation += 1
            pick = tied[self._rotation % len(tied)]
        runner_up = (best if ties > 1 else min(costs[:pick] + costs[pick + 1:], default=best))
        outcome = ("cold" if best_match < 0.5 * (matched[pick] + uncached[pick])
                   else "hit" if matched[pick] >= best_match - self._block_tokens
                   else "spill")
        shown = shown_candidates(costs, pick, ties == len(costs), lowest=True)
        explanation: dict[str, Any] = {
            "strategy": self.name,
            "outcome": outcome,
            "matched_tokens": tokens_value(matched[pick]),
            "predicted_ttft_ms": round((base[pick] + rate[pick] * uncached[pick] + (
                self._load_s_per_token * offloaded[pick] if offloaded is not None else 0.0))
                * 1e3, 3),
            "runner_up_margin_ms": round((runner_up - best) * 1e3, 3),
            "candidates": {
                candidates[i].id: {
                    "matched_tokens": tokens_value(matched[i]),
                    "uncached_tokens": tokens_value(uncached[i]),
                    "predicted_cost_ms": round(costs[i] * 1e3, 3),
                    **({"eviction_ms": round(evict_s[i] * 1e3, 3)} if evict_s.get(i) else {}),
                    **(details or {}).get(candidates[i], {}),
                }
                for i in shown
            },
        }
        return RouteDecision(candidates[pick], explanation), pick

    def _eviction_s(self, positions: Sequence[int] | None, i: int, uncached: float) -> float:
        """Candidate ``i``'s eviction cost: the tokens taking ``uncached`` would push out,
        each one recompute later, and the more so the more the replica was already sent
        beyond its size (an over-committed replica's victims are younger):
        ``(placed + U) / capacity``."""
        p = i if positions is None else positions[i]
        replica = self._replicas[p]
        capacity = replica.capacity_tokens
        placed = self._placed.totals()
        if math.isinf(capacity):
            capacity = sum(placed) / len(placed) or math.inf  # see _footprint
        headroom = capacity - placed[p]
        if uncached <= headroom:
            return 0.0
        return (replica.fit.s_per_token * min(uncached, uncached - headroom)
                * (capacity - headroom + uncached) / capacity)

    def _least_headroom(self, positions: Sequence[int] | None) -> float:
        """The least KV headroom (tokens) among the candidates, cheaply: a decision builds
        the per-candidate lists only when some candidate would have to evict."""
        if not self._unknown_capacity:
            if positions is None:
                return self._min_headroom
            return min(self._headroom[p] for p in positions)
        if self._unknown_capacity == len(self._replicas):
            placed = self._placed.totals()
            return sum(placed) / len(placed) - max(placed) if any(placed) else math.inf
        return min(self._footprint(positions)[0])

    def _footprint(self, positions: Sequence[int] | None
                   ) -> tuple[Sequence[float], Sequence[float]]:
        """The candidates' KV headroom and capacity, in tokens.

        NOTE: a replica whose KV size is unknown (an engine that publishes no
        ``vllm:cache_config_info``, no ``kv_capacity_tokens`` set) is assumed to hold its
        fair share of what the fleet was sent: without it, prompts arriving one at a time
        would all follow the replica holding a few shared tokens, and nothing would spread
        the working set until a queue formed.
        """
        ps: Sequence[int] = positions if positions is not None else range(len(self._replicas))
        if not self._unknown_capacity:
            if positions is None:
                return self._headroom, [r.capacity_tokens for r in self._replicas]
            return ([self._headroom[p] for p in ps],
                    [self._replicas[p].capacity_tokens for p in ps])
        placed = self._placed.totals()
        fair = sum(placed) / len(placed) or math.inf
        capacity = [c if (c := self._replicas[p].capacity_tokens) != math.inf else fair
                    for p in ps]
        return [c - placed[p] for c, p in zip(capacity, ps, strict=True)], capacity

    # -- observability ----------------------------------------------------------------------

    def describe(self) -> dict[str, dict[str, Any]]:
        """Per deployment id: the learned figures and the ledger, for ``/admin/stats``."""
        placed = self._placed.totals()
        out: dict[str, dict[str, Any]] = {}
        for position, (replica, deployment) in enumerate(
                zip(self._replicas, self._deployments, strict=True)):
            fit = replica.fit
            out[deployment.id] = {
                "prefill_tokens_per_s": round(1.0 / fit.s_per_token, 1),
                "ttft_fixed_ms": round(fit.fixed_s * 1e3, 3),
                "decode_step_ms": round(replica.step.step_s * 1e3, 3),
                "ttft_samples": fit.samples,
                "step_samples": replica.step.samples,
                "queued_prefill_tokens": round(replica.queued, 1),
                "waiting_requests": replica.waiting,
                "placed_tokens": round(placed[position], 1),
                "kv_capacity_tokens": (None if math.isinf(replica.capacity_tokens)
                                       else int(replica.capacity_tokens)),
            }
        return out
