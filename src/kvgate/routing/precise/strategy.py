"""``precise_kv``: route by what each vLLM replica's KV cache holds *now*, from its KV events.

Per request:
1. ``prepare`` (once): fingerprint the prompt (kept for the approximate fallback) and compute
   its vLLM block hashes once per tokenizer/hash configuration (``request_hasher``); for every
   deployment take the number of leading tokens it holds:
   - *precise* (events in sync, hashes reproducible): exact GPU hit tokens from the index, plus
     offloaded (CPU-tier) tokens, which cost their load time instead of a prefill;
   - *precise, no tokenizer*: the fingerprint with the replica's eviction clock
     (``event_clock``), see there;
   - *degraded* (events out of sync) and *approximate* (no events configured): the
     ``prefix_kv_aware`` affinity estimate.
2. ``choose`` (per attempt): ``prefix_kv_aware``'s predicted-TTFT scorer
   (:mod:`kvgate.routing.ttft_scorer`) on those exact hits; only what each replica holds is
   known better.
3. ``on_dispatched``: the request's blocks become *pending* on the chosen replica until its
   events confirm them; the fingerprint is recorded for the fallbacks; the scorer's ledger
   ticket opens (``on_first_token`` / ``on_released`` close it). In the gateway these run
   write-behind (:mod:`kvgate.routing.write_behind`), as ``prefix_kv_aware``'s do: marking an
   8k-token prompt's 500 blocks pending costs about 65 us, now spent while the replica works.
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
from kvgate.routing.fingerprint import (
    CHARS_PER_TOKEN,
    Fingerprint,
    declared_image_tokens,
    fingerprint,
)
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
from kvgate.routing.prefix_kv_aware import cumulative_tokens
from kvgate.routing.ticket_hooks import TicketHooks
from kvgate.routing.ttft_replica import Ticket
from kvgate.routing.ttft_scorer import TTFTScorer
from kvgate.routing.write_behind import WriteBehind

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
    #: Per deployment, in the strategy's order: leading tokens on the GPU (or the estimate),
    #: and leading tokens after those in the CPU tier; it computes the rest.
    matched_tokens: list[float]
    offloaded_tokens: list[float]
    details: dict[Deployment, dict[str, Any]]
    #: The prompt's length in the engines' tokens when known, else the estimate.
    prompt_tokens: float
    #: Per deployment: leading tokens beyond those it holds that it was sent within the
    #: horizon (TTFTScorer.choose's ``known``).
    known_tokens: list[float]
    ticket: Ticket | None = None


class PreciseKVAware(TicketHooks, StrategyDefaults):
    name = "precise_kv"

    def __init__(
        self,
        deployments: Sequence[Deployment],
        settings: RoutingSettings,
        affinity: AffinityIndex,
        *,
        zmq_context: zmq.asyncio.Context | None = None,
        clock: Callable[[], float] = time.monotonic,
        write_behind: bool = False,
    ) -> None:
        """``write_behind``: as :class:`~kvgate.routing.prefix_kv_aware.PrefixKVAware`'s."""
        #: What ``on_dispatched`` / ``on_first_token`` / ``on_released`` queued (write-behind).
        self.bookkeeping = WriteBehind(enabled=write_behind)
        self._clock = clock
        self._deployments = list(deployments)
        self._position = {d: i for i, d in enumerate(self._deployments)}
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
        self._scorer = TTFTScorer(self.name, deployments, settings.prefix,
                                  block_tokens=block_size, clock=clock,
                                  load_s_per_token=1.0 / precise.offload_load_tokens_per_s)
        self._offload_tokens = precise.offload_chars // CHARS_PER_TOKEN
        self._image_tokens = declared_image_tokens(deployments)

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
        fp = fingerprint(call, block_chars=self._prefix.block_chars,
                         image_tokens=self._image_tokens)
        blocks = await self._hash(call, fp)
        self.bookkeeping.flush()  # the indexes and the ledger as earlier attempts left them
        plans = self._plans
        approximate = None
        if fp.hashes:
            # Also where every replica is precise: what each was sent within the horizon
            # (see TTFTScorer.choose's ``known``).
            approximate = await self._affinity.match(fp.hashes, self._ids)
        cumulative = cumulative_tokens(fp.tokens)
        prompt_tokens = max((b.num_prompt_tokens for b in blocks), default=fp.total_tokens)
        # What was sent is counted in the estimate's tokens, the matches in the engine's.
        engine_per_estimated = prompt_tokens / fp.total_tokens if fp.total_tokens else 1.0
        matched: list[float] = []
        offloaded: list[float] = []
        known: list[float] = []
        details: dict[Deployment, dict[str, Any]] = {}
        for position, deployment in enumerate(self._deployments):
            plan = plans[deployment]
            state = plan.state
            cpu_tokens = 0.0
            if state is not None and state.is_precise and plan.hasher is not None:
                request = blocks[plan.hasher]
                match = state.index.match(request.keys)
                gpu_tokens: float = request.hit_tokens(match.gpu_blocks)
                cpu_tokens = (request.hit_tokens(match.gpu_blocks + match.offloaded_blocks)
                              - gpu_tokens)
                details[deployment] = {"source": "precise", "gpu_tokens": gpu_tokens,
                                       "offloaded_tokens": cpu_tokens}
            elif state is not None and state.is_precise:
                gpu_tokens = cumulative[self._event_clock.match(fp.hashes, deployment.id,
                                                                state.index)]
                details[deployment] = {"source": "event_clock"}
            else:
                gpu_tokens = cumulative[approximate[position] if approximate is not None else 0]
                details[deployment] = {"source": "approximate" if state is None else "degraded"}
            matched.append(gpu_tokens)
            offloaded.append(cpu_tokens)
            sent = (cumulative[approximate[position]] * engine_per_estimated
                    if approximate is not None else 0.0)
            known.append(max(0.0, sent - gpu_tokens - cpu_tokens))
        call.routing_state = _PreciseState(fp, blocks, matched, offloaded, details,
                                           prompt_tokens, known)

    async def _hash(self, call: Call, fp: Fingerprint) -> list[RequestBlocks]:
        if not self._hashers:
            return []
        if fp.total_tokens > self._offload_tokens:
            # Tokenizing and hashing a long prompt takes milliseconds: keep it off the loop.
            return await asyncio.to_thread(lambda: [h.hash_call(call) for h in self._hashers])
        return [hasher.hash_call(call) for hasher in self._hashers]

    def choose(self, call: Call, candidates: Sequence[Deployment]) -> RouteDecision:
        self.bookkeeping.flush()
        state: _PreciseState = call.routing_state
        if candidates == self._deployments:
            positions: list[int] | None = None
            matched, offloaded = state.matched_tokens, state.offloaded_tokens
            known = state.known_tokens
        else:
            positions = [self._position[d] for d in candidates]
            matched = [state.matched_tokens[p] for p in positions]
            offloaded = [state.offloaded_tokens[p] for p in positions]
            known = [state.known_tokens[p] for p in positions]
        decision, _ = self._scorer.choose(
            candidates, state.prompt_tokens, matched, max(state.matched_tokens, default=0.0),
            positions=positions, offloaded=offloaded if any(offloaded) else None,
            details=state.details, known=known if any(known) else None)
        plan = self._plans[decision.deployment]
        prompt_tokens = (state.blocks[plan.hasher].num_prompt_tokens if plan.hasher is not None
                         else state.fingerprint.total_tokens)
        decision.explanation["source"] = state.details[decision.deployment]["source"]
        decision.explanation["prompt_tokens"] = prompt_tokens
        return decision

    # -- after the decision: queued on the write-behind, each with the time it happened -----

    def on_dispatched(self, call: Call, deployment: Deployment) -> None:
        state: _PreciseState | None = call.routing_state
        if state is not None:
            self.bookkeeping(self._dispatched, state, deployment, self._clock())

    def _dispatched(self, state: _PreciseState, deployment: Deployment, now_s: float) -> None:
        position = self._position[deployment]
        matched = state.matched_tokens[position]
        hashes = state.fingerprint.hashes
        state.ticket = self._scorer.ledger.dispatched(position, max(
            0.0, state.prompt_tokens - matched - state.offloaded_tokens[position]),
            prompt_tokens=state.prompt_tokens,
            # Requests that start alike and match as much there share that prefix.
            shared_key=(hashes[0], matched) if hashes else None, shared_tokens=matched,
            now_s=now_s)
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
        """Per deployment id: how it is matched, where its event stream stands, and the
        scorer's learned figures."""
        self.bookkeeping.flush()
        out: dict[str, dict[str, Any]] = {}
        scored = self._scorer.ledger.describe()
        for deployment, plan in self._plans.items():
            if plan.state is None:
                out[deployment.id] = {"mode": "approximate", "reason": "no kv_events configured",
                                      **scored[deployment.id]}
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
            out[deployment.id] = {**entry, **scored[deployment.id]}
        return out

