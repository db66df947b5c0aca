"""``prefix_kv_aware``: send a request where its prompt prefix is most likely still in KV cache.

Per request, in order:
1. ``prepare`` (once, before the first attempt): fingerprint the prompt and ask the affinity
   index how many leading links each deployment served recently.
2. ``choose`` (per attempt, sync): the load guard first — a deployment is *eligible* while its
   load is within ``max(max_excess_requests, max_excess_ratio x mean load)`` of the least
   loaded candidate — then the eligible deployment with the most matched tokens; matches within
   one block of each other count as a tie, and ties (including cold prompts that match nowhere)
   go to the least loaded, rotating among equals.
3. ``on_dispatched``: record the prompt's links for the chosen deployment. A request spilled by
   the load guard warms its new deployment, so a hot prefix ends up cached on several replicas
   instead of queueing on one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvgate.config.schema import PrefixRoutingSettings
from kvgate.routing.affinity import AffinityIndex
from kvgate.routing.base import RouteDecision
from kvgate.routing.deployment import Deployment
from kvgate.routing.fingerprint import Fingerprint, fingerprint
from kvgate.routing.load import LoadView

if TYPE_CHECKING:
    from kvgate.gateway.call import Call


@dataclass(slots=True)
class _PrefixState:
    """What ``prepare`` learned, read by every attempt's ``choose``."""

    fingerprint: Fingerprint
    matched_tokens: dict[Deployment, int]
    matched_blocks: dict[Deployment, int]


class PrefixKVAware:
    name = "prefix_kv_aware"

    def __init__(
        self,
        deployments: Sequence[Deployment],
        settings: PrefixRoutingSettings,
        index: AffinityIndex,
        load: LoadView,
    ) -> None:
        self._deployments = list(deployments)
        self._ids = [d.id for d in deployments]
        self._settings = settings
        self._index = index
        self._load = load
        self._rotation = 0
        self._tie_tokens = max(1, settings.block_chars // 4)

    async def prepare(self, call: Call) -> None:
        fp = fingerprint(call, block_chars=self._settings.block_chars)
        matched_tokens: dict[Deployment, int] = {}
        matched_blocks: dict[Deployment, int] = {}
        if fp.hashes:
            counts = await self._index.match(fp.hashes, self._ids)
            cumulative = _cumulative(fp.tokens)
            for deployment, count in zip(self._deployments, counts, strict=True):
                matched_blocks[deployment] = count
                matched_tokens[deployment] = cumulative[count]
        call.routing_state = _PrefixState(fp, matched_tokens, matched_blocks)

    def choose(self, call: Call, candidates: Sequence[Deployment]) -> RouteDecision:
        state: _PrefixState = call.routing_state
        loads = [self._load.load(d) for d in candidates]
        least = min(loads)
        mean = sum(loads) / len(loads)
        slack = max(self._settings.max_excess_requests, self._settings.max_excess_ratio * mean)
        matched = [state.matched_tokens.get(d, 0) for d in candidates]
        # Against every deployment, not just the candidates: a failover attempt away from the
        # replica holding the prefix is a spill, not a cold prompt.
        best_match = max(state.matched_tokens.values(), default=0)
        eligible = [i for i, load in enumerate(loads) if load <= least + slack]
        best_eligible_match = max(matched[i] for i in eligible)
        # Cold and tied prompts: everything within one block of the best counts as equal.
        tied = [i for i in eligible if matched[i] >= best_eligible_match - self._tie_tokens]
        lowest = min(loads[i] for i in tied)
        least_loaded = [i for i in tied if loads[i] == lowest]
        self._rotation += 1
        pick = least_loaded[self._rotation % len(least_loaded)]
        chosen = candidates[pick]
        outcome = (
            "cold" if best_match == 0
            else "hit" if matched[pick] > 0 and matched[pick] >= best_match - self._tie_tokens
            else "spill"
        )
        explanation: dict[str, Any] = {
            "strategy": self.name,
            "outcome": outcome,
            "matched_blocks": state.matched_blocks.get(chosen, 0),
            "matched_tokens": matched[pick],
            "prompt_tokens_est": state.fingerprint.total_tokens,
            "candidates": {
                d.id: {"matched_tokens": matched[i], "load": loads[i], "eligible": i in eligible}
                for i, d in enumerate(candidates)
            },
        }
        return RouteDecision(chosen, explanation)

    def on_dispatched(self, call: Call, deployment: Deployment) -> None:
        state: _PrefixState | None = call.routing_state
        if state is not None and state.fingerprint.hashes:
            self._index.record(deployment.id, state.fingerprint.hashes)


def _cumulative(tokens: Sequence[int]) -> list[int]:
    """``out[k]`` = tokens in the first ``k`` links."""
    out = [0]
    total = 0
    for count in tokens:
        total += count
        out.append(total)
    return out
