"""``prefix_kv_aware``: send a request where it is predicted to get its first token soonest,
counting what each replica probably still holds in KV cache.

Per request:
1. ``prepare`` (once, before the first attempt): fingerprint the prompt and ask the affinity
   index how many leading links each deployment served recently (an estimate of its cache).
2. ``choose`` (per attempt, sync): the request's uncached tokens on each candidate go to the
   predicted-TTFT scorer (:mod:`kvgate.routing.ttft_scorer`), which adds each replica's queued
   prefill, learned speed and KV footprint and picks the lowest predicted cost.
3. ``on_dispatched``: record the prompt's links for the chosen deployment and open a ledger
   ticket; ``on_first_token`` / ``on_released`` close it and feed the replica's calibration.
   In the gateway these run write-behind (:mod:`kvgate.routing.write_behind`): after the
   request's task yields, or before the next ``prepare`` / ``choose``, whichever is first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from kvgate.config.schema import PrefixRoutingSettings
from kvgate.core.deployment import Deployment, RouteDecision
from kvgate.routing import floats
from kvgate.routing.affinity import AffinityIndex, ServedTimes, SharesPlacements
from kvgate.routing.base import StrategyDefaults
from kvgate.routing.fingerprint import (
    Fingerprint,
    MessageMemo,
    declared_image_tokens,
    fingerprint,
)
from kvgate.routing.ticket_hooks import TicketHooks
from kvgate.routing.ttft_replica import Ticket
from kvgate.routing.ttft_scorer import TTFTScorer
from kvgate.routing.write_behind import WriteBehind

if TYPE_CHECKING:
    from kvgate.core.call import Call


@dataclass(slots=True)
class PrefixState:
    """What ``prepare`` learned, read by every attempt's ``choose``.

    Matches are lists in the strategy's deployment order, not dicts: building a dict per
    request cost more than the rest of the decision on large fleets.
    """

    fingerprint: Fingerprint
    matched_tokens: list[int]
    matched_blocks: list[int]
    best_match_tokens: int
    #: Per deployment: leading tokens beyond the match that it was sent within the horizon
    #: but has likely evicted (TTFTScorer.choose's ``known``); None: nowhere.
    known_tokens: list[int] | None = None
    #: The current attempt's ledger entry (attempts are sequential).
    ticket: Ticket | None = None
    #: Where the prompt's links were recorded at the decision (a cold one under the
    #: workers' lock): its dispatch there need not record them again.
    recorded_on: Deployment | None = None


class PrefixKVAware(TicketHooks, StrategyDefaults):
    name = "prefix_kv_aware"

    def __init__(
        self,
        deployments: Sequence[Deployment],
        settings: PrefixRoutingSettings,
        index: AffinityIndex,
        *,
        clock: Callable[[], float] = time.monotonic,
        write_behind: bool = False,
    ) -> None:
        """``write_behind``: queue the bookkeeping after each decision off the request's path
        (the gateway); off, it runs in line (simulators, which read state in line)."""
        #: What ``on_dispatched`` / ``on_first_token`` / ``on_released`` queued (write-behind).
        self.bookkeeping = WriteBehind(enabled=write_behind)
        self._deployments = list(deployments)
        self._ids = tuple(d.id for d in deployments)
        self._position = {d: i for i, d in enumerate(self._deployments)}
        self._stats = [d.stats for d in self._deployments]
        self._memo = MessageMemo()
        self._settings = settings
        self._image_tokens = declared_image_tokens(deployments)
        self._index = index
        #: When the index can tell when a block was last served: matches are cut to the links
        #: recent enough to have survived the replica's own eviction (_resident_links).
        self._served = index.served_s if isinstance(index, ServedTimes) else None
        self._clock = clock
        # With workers sharing the index, they share what they placed on each replica too:
        # otherwise each prices KV footprints with its own placements only.
        shared, self._match_now = None, None
        if isinstance(index, SharesPlacements):
            shared = index.shared_placements(self._ids, settings.ttl_s)
            if shared is not None:  # cold decisions are then taken under the workers' lock
                self._match_now = index.match_now
        self._scorer = TTFTScorer(self.name, deployments, settings,
                                  block_tokens=max(1, settings.block_chars // 4), clock=clock,
                                  shared_placements=shared)

    async def prepare(self, call: Call) -> None:
        self.bookkeeping.flush()  # the index and the ledger as every earlier attempt left them
        fp = fingerprint(call, block_chars=self._settings.block_chars, memo=self._memo,
                         image_tokens=self._image_tokens)
        counts = await self._index.match(fp.hashes, self._ids) if fp.hashes else []
        call.routing_state = self._state(fp, counts)

    def _state(self, fp: Fingerprint, counts: list[int]) -> PrefixState:
        """What ``counts`` (the index's links per deployment) say each holds of ``fp``."""
        if not fp.hashes:
            none = [0] * len(self._deployments)
            return PrefixState(fp, none, none, 0)
        sent = counts
        if self._served is not None and self._scorer.ledger.turning_over:
            counts = self._resident_links(fp.hashes, counts)
        if counts and counts.count(counts[0]) == len(counts):  # cold, or held by all
            tokens = fp.tokens_in_first(counts[0])
            state = PrefixState(fp, [tokens] * len(counts), counts, tokens)
        else:  # tokens in the first k links, for each deployment's k (one C pass)
            matched = floats.prefix_sums(fp.tokens, counts)
            # The most links hold the most tokens (no link has fewer than none).
            state = PrefixState(fp, matched, counts, floats.maximum(matched) if matched else 0)
        if sent is not counts and sent != counts:
            state.known_tokens = [
                fp.tokens_in_first(s) - m if s > c else 0
                for s, c, m in zip(sent, counts, state.matched_tokens, strict=True)]
        return state

    def _resident_links(self, hashes: Sequence[int], counts: list[int]) -> list[int]:
        """``counts`` (leading links each deployment served within the TTL) cut, on replicas
        whose KV turns over faster than the TTL, to the links served within their residency
        (:attr:`~kvgate.routing.ttft_ledger.Ledger.residency_s`).

        NOTE: a prompt's links are recorded together and a head is recorded whenever its
        tail is, so along a chain the last-served times never increase: the resident links
        are a leading run, found by bisection (a few dict reads per replica).
        """
        ledger = self._scorer.ledger
        served = self._served
        assert served is not None
        now_s = self._clock()
        counts = list(counts)
        for position in ledger.turning_over:
            if counts[position]:
                # Served ticks are whole seconds (floored): one second of slack.
                kept = _links_served_since(
                    served, self._ids[position], hashes, counts[position],
                    now_s - ledger.residency_s[position] - 1.0)
                if kept < counts[position]:
                    kept = max(kept, min(counts[position],
                                         ledger.pinned_links(position, hashes)))
                counts[position] = kept
        return counts

    def choose(self, call: Call, candidates: Sequence[Deployment]) -> RouteDecision:
        self.bookkeeping.flush()
        state: PrefixState = call.routing_state
        if (self._match_now is None
                or 2 * state.best_match_tokens >= state.fingerprint.total_tokens):
            return self._choose(state, candidates)
        # NOTE: where a cold prefix goes depends on what the other workers did a moment ago:
        # read the index and their placements again, decide, and publish both as one step
        # across workers. Otherwise two workers deciding at once both take the same emptiest
        # replica (an opening burst of 12 images on 2 workers: 7/5 in one run of two), or
        # two first requests for one image place it on both replicas (13 cold decisions
        # for 12 images, the 13th evicting one).
        with self._scorer.ledger.placed.exclusive():
            fp, ticket = state.fingerprint, state.ticket
            state = call.routing_state = self._state(fp, self._match_now(fp.hashes, self._ids))
            state.ticket = ticket  # a previous attempt's, until this one is dispatched
            decision = self._choose(state, candidates, reserve=True)
            self._index.record(decision.deployment.id, fp.hashes)
            state.recorded_on = decision.deployment
        return decision

    def _choose(self, state: PrefixState, candidates: Sequence[Deployment], *,
                reserve: bool = False) -> RouteDecision:
        positions: list[int] | None = None
        if candidates == self._deployments:  # the first attempt, usually: no reordering
            matched: Sequence[int] = state.matched_tokens
        else:
            positions = [self._position[d] for d in candidates]
            matched = [state.matched_tokens[p] for p in positions]
        known = state.known_tokens
        if known is not None and positions is not None:
            known = [known[p] for p in positions]
        prompt_tokens = state.fingerprint.total_tokens
        decision, _ = self._scorer.choose(
            candidates, prompt_tokens, matched, state.best_match_tokens, positions=positions,
            known=known, reserve=reserve)
        explanation = decision.explanation
        explanation["matched_blocks"] = state.matched_blocks[
            self._position[decision.deployment]]
        explanation["prompt_tokens_est"] = prompt_tokens
        return decision

    # -- after the decision: queued on the write-behind, each with the time it happened -----

    def on_dispatched(self, call: Call, deployment: Deployment) -> None:
        state: PrefixState | None = call.routing_state
        if state is not None:
            self.bookkeeping(self._dispatched, state, deployment, self._clock())

    def _record(self, state: PrefixState, deployment: Deployment) -> None:
        hashes = state.fingerprint.hashes
        if hashes and state.recorded_on is not deployment:
            self._index.record(deployment.id, hashes)

    def _dispatched(self, state: PrefixState, deployment: Deployment, now_s: float) -> None:
        self._record(state, deployment)
        hashes = state.fingerprint.hashes
        position = self._position[deployment]
        prompt_tokens = state.fingerprint.total_tokens
        matched = state.matched_tokens[position]
        links = state.matched_blocks[position]
        state.ticket = self._scorer.ledger.dispatched(
            position, prompt_tokens - matched, prompt_tokens=prompt_tokens,
            # The chain's last matched link names the whole matched prefix.
            shared_key=hashes[links - 1] if links else None,
            shared_tokens=matched, hashes=hashes, now_s=now_s)

    def describe(self) -> dict[str, dict[str, Any]]:
        self.bookkeeping.flush()
        return self._scorer.ledger.describe()

    def affinity_entries(self) -> int:
        """(deployment, block) pairs the affinity index tracks; -1 when the backend can't tell."""
        self.bookkeeping.flush()
        return self._index.size()


def cumulative_tokens(tokens: Sequence[int]) -> list[int]:
    """``out[k]`` = tokens in the first ``k`` links."""
    return list(accumulate(tokens, initial=0))


def _links_served_since(served: Callable[[str, int], float | None], deployment_id: str,
                        hashes: Sequence[int], links: int, oldest_s: float) -> int:
    """How many of the first ``links`` links ``deployment_id`` served at ``oldest_s`` or
    later (a leading run: served times never increase along a chain)."""

    def fresh(link: int) -> bool:
        served_s = served(deployment_id, hashes[link])
        return served_s is not None and served_s >= oldest_s

    if fresh(links - 1):
        return links
    low, high = 0, links - 1  # links before ``low`` are fresh; ``high`` is not
    while low < high:
        middle = (low + high) // 2
        if fresh(middle):
            low = middle + 1
        else:
            high = middle
    return low
