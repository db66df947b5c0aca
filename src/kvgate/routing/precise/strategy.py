"""``precise_kv``: route by what each vLLM replica's KV cache holds *now*, from its KV events.

Per request:
1. ``prepare`` (once): fingerprint the prompt (kept for the approximate fallback) and compute
   its vLLM block hashes once per tokenizer/hash configuration (``request_hasher``); for every
   deployment take the number of leading tokens it holds:
   - *precise* (events in sync, hashes reproducible): exact GPU hit tokens from the index, plus
     offloaded (CPU-tier) tokens weighted by ``cpu_hit_weight``;
   - *precise, no tokenizer*: the fingerprint with the replica's eviction clock
     (``event_clock``), see there;
   - *degraded* (events out of sync) and *approximate* (no events configured): the
     ``prefix_kv_aware`` affinity estimate.
2. ``choose`` (per attempt): ``prefix_kv_aware``'s load guard and tie rule, unchanged.
3. ``on_dispatched``: the request's blocks become *pending* on the chosen replica until its
   events confirm them; the fingerprint is recorded for the fallbacks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zmq.asyncio

from kvgate.config.schema import RoutingSettings
from kvgate.core.deployment import Deployment, RouteDecision
from kvgate.routing.affinity import AffinityIndex
from kvgate.routing.base import StrategyDefaults
from kvgate.routing.fingerprint import CHARS_PER_TOKEN, Fingerprint, fingerprint
from kvgate.routing.load import LoadView
from kvgate.routing.precise.event_clock import EventClockedAffinity
from kvgate.routing.precise.index import ReplicaKVIndex
from kvgate.routing.precise.replica import ReplicaEventState
from kvgate.routing.precise.request_hasher import (
    RequestBlocks,
    RequestHasher,
    build_request_hasher,
    hasher_key,
    unreproducible_reason,
)
from kvgate.routing.precise.subscriber import KVEventSubscriber
from kvgate.routing.prefix_kv_aware import LoadGuardedScorer, cumulative_tokens

if TYPE_CHECKING:
    from kvgate.core.call import Call


@dataclass(frozen=True, slots=True)
class _Plan:
    """How one deployment is matched, fixed at start-up."""

    state: ReplicaEventState | None
    #: Index into the strategy's hashers; None when hashes cannot be reproduced.
    hasher: int | None
    #: Why hashes cannot be reproduced (for /admin/stats); None when they can.
    unhashed_reason: str | None


@dataclass(slots=True)
class _PreciseState:
    fingerprint: Fingerprint
    blocks: list[RequestBlocks]
    #: Scored hit tokens per deployment (offloaded ones weighted by ``cpu_hit_weight``).
    matched_tokens: dict[Deployment, float]
    #: Hit tokens per deployment in any tier, unweighted (for ``min_match_ratio``).
    covered_tokens: dict[Deployment, float]
    details: dict[Deployment, dict[str, Any]]
    #: The prompt's length in the engines' tokens when known, else the estimate.
    prompt_tokens: float
    #: For a prompt cached nowhere: tokens of it each deployment served recently (routing
    #: history), so it goes back home when that is among the least loaded.
    history_tokens: dict[Deployment, float] | None


class PreciseKVAware(StrategyDefaults):
    name = "precise_kv"

    def __init__(
        self,
        deployments: Sequence[Deployment],
        settings: RoutingSettings,
        affinity: AffinityIndex,
        load: LoadView,
        *,
        zmq_context: zmq.asyncio.Context | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._deployments = list(deployments)
        self._ids = [d.id for d in deployments]
        self._prefix = settings.prefix
        self._precise = precise = settings.precise
        self._affinity = affinity
        self._hashers: list[RequestHasher] = []
        self._subscribers: list[KVEventSubscriber] = []
        self._plans: dict[Deployment, _Plan] = {}
        groups: dict[tuple[object, ...], int] = {}
        for deployment in deployments:
            ds = deployment.settings
            reason = unreproducible_reason(ds)
            # A tokenizer but no reproducible hash: key blocks by their tokens instead.
            token_blocks = reason is not None and ds.tokenizer is not None
            state = None
            if ds.kv_events is not None:
                state = ReplicaEventState(ReplicaKVIndex(
                    max_blocks=precise.max_blocks_per_deployment,
                    pending_ttl_s=precise.pending_ttl_s, clock=clock, token_blocks=token_blocks,
                ))
                self._subscribers.append(KVEventSubscriber(
                    deployment.id, ds.kv_events, state,
                    replay_timeout_s=precise.replay_timeout_s, idle_probe_s=precise.idle_probe_s,
                    context=zmq_context,
                ))
            group = None
            if ds.tokenizer is not None and state is not None:
                key = (*hasher_key(ds), token_blocks)
                if key not in groups:
                    groups[key] = len(self._hashers)
                    self._hashers.append(build_request_hasher(ds, token_blocks=token_blocks))
                group = groups[key]
            self._plans[deployment] = _Plan(state, group, reason)
        self._event_clock = EventClockedAffinity(
            max_links_per_deployment=precise.max_blocks_per_deployment
        )
        block_size = max((d.settings.block_size for d in deployments), default=16)
        self._scorer = LoadGuardedScorer(self.name, settings.prefix, load, tie_tokens=block_size)
        self._offload_tokens = precise.offload_chars // CHARS_PER_TOKEN

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start following every replica's events (needs a running event loop)."""
        for subscriber in self._subscribers:
            subscriber.start()

    async def stop(self) -> None:
        for subscriber in self._subscribers:
            await subscriber.stop()

    # -- routing ----------------------------------------------------------------------------

    async def prepare(self, call: Call) -> None:
        fp = fingerprint(call, block_chars=self._prefix.block_chars)
        blocks = await self._hash(call, fp)
        plans = self._plans
        approximate = None
        if fp.hashes and any(p.state is None or not p.state.is_precise for p in plans.values()):
            approximate = await self._affinity.match(fp.hashes, self._ids)
        cumulative = cumulative_tokens(fp.tokens)
        weight = self._precise.cpu_hit_weight
        matched: dict[Deployment, float] = {}
        covered: dict[Deployment, float] = {}
        details: dict[Deployment, dict[str, Any]] = {}
        for position, deployment in enumerate(self._deployments):
            plan = plans[deployment]
            state = plan.state
            if state is not None and state.is_precise and plan.hasher is not None:
                request = blocks[plan.hasher]
                match = state.index.match(request.keys)
                gpu_tokens = request.hit_tokens(match.gpu_blocks)
                offloaded_tokens = (
                    request.hit_tokens(match.gpu_blocks + match.offloaded_blocks) - gpu_tokens
                )
                matched[deployment] = gpu_tokens + weight * offloaded_tokens
                covered[deployment] = gpu_tokens + offloaded_tokens
                details[deployment] = {"source": "precise", "gpu_tokens": gpu_tokens,
                                       "offloaded_tokens": offloaded_tokens}
            elif state is not None and state.is_precise:
                links = self._event_clock.match(fp.hashes, deployment.id, state.index)
                matched[deployment] = covered[deployment] = cumulative[links]
                details[deployment] = {"source": "event_clock"}
            else:
                links = approximate[position] if approximate is not None else 0
                matched[deployment] = covered[deployment] = cumulative[links]
                details[deployment] = {"source": "approximate" if state is None else "degraded"}
        history: dict[Deployment, float] | None = None
        prompt_tokens = max((b.num_prompt_tokens for b in blocks), default=fp.total_tokens)
        if fp.hashes and max(covered.values(), default=0) < (
                self._prefix.min_match_ratio * prompt_tokens or 1):
            if approximate is None:
                approximate = await self._affinity.match(fp.hashes, self._ids)
            history = {d: cumulative[links]
                       for d, links in zip(self._deployments, approximate, strict=True) if links}
        call.routing_state = _PreciseState(fp, blocks, matched, covered, details, prompt_tokens,
                                           history)

    async def _hash(self, call: Call, fp: Fingerprint) -> list[RequestBlocks]:
        if not self._hashers:
            return []
        if fp.total_tokens > self._offload_tokens:
            # Tokenizing and hashing a long prompt takes milliseconds: keep it off the loop.
            return await asyncio.to_thread(lambda: [h.hash_call(call) for h in self._hashers])
        return [hasher.hash_call(call) for hasher in self._hashers]

    def choose(self, call: Call, candidates: Sequence[Deployment]) -> RouteDecision:
        state: _PreciseState = call.routing_state
        # The same score as prefix_kv_aware, min_match_ratio included: a best match covering
        # little of the prompt (a shared system prompt) is placed by load, not followed.
        decision, _ = self._scorer.choose(candidates, state.matched_tokens, state.details,
                                          prompt_tokens=state.prompt_tokens,
                                          history_tokens=state.history_tokens,
                                          covered_tokens=state.covered_tokens)
        plan = self._plans[decision.deployment]
        prompt_tokens = (state.blocks[plan.hasher].num_prompt_tokens if plan.hasher is not None
                         else state.fingerprint.total_tokens)
        decision.explanation["source"] = state.details[decision.deployment]["source"]
        decision.explanation["prompt_tokens"] = prompt_tokens
        return decision

    def on_dispatched(self, call: Call, deployment: Deployment) -> None:
        state: _PreciseState | None = call.routing_state
        if state is None:
            return
        hashes = state.fingerprint.hashes
        if hashes:
            # Always: the approximate fallback must be warm when a replica degrades.
            self._affinity.record(deployment.id, hashes)
        plan = self._plans[deployment]
        if plan.state is None:
            return
        if plan.hasher is not None:
            plan.state.index.add_pending(state.blocks[plan.hasher].keys)
        elif hashes:
            self._event_clock.record(deployment.id, hashes, plan.state.index)

    # -- observability ----------------------------------------------------------------------

    def describe(self) -> dict[str, dict[str, Any]]:
        """Per deployment id: how it is matched and where its event stream stands."""
        out: dict[str, dict[str, Any]] = {}
        for deployment, plan in self._plans.items():
            if plan.state is None:
                out[deployment.id] = {"mode": "approximate", "reason": "no kv_events configured"}
                continue
            ds = deployment.settings
            if plan.hasher is None:
                entry = {**plan.state.describe(), "matching": "event_clock",
                         "hashing": f"off ({plan.unhashed_reason}): fingerprint affinity "
                                    "expired by the replica's eviction clock",
                         "links_tracked": self._event_clock.size(deployment.id)}
            elif plan.unhashed_reason is not None:
                entry = {**plan.state.describe(), "matching": "token_blocks",
                         "hashing": f"blocks keyed by the events' token ids ({ds.tokenizer}); "
                                    f"replica hashes not used: {plan.unhashed_reason}"}
            else:
                entry = {**plan.state.describe(), "matching": "block_hashes",
                         "hashing": f"{ds.hash_algo}, block {ds.block_size}, {ds.tokenizer}"}
            out[deployment.id] = entry
        return out

