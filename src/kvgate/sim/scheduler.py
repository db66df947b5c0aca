"""Continuous batching with chunked prefill (vllm/v1/core/sched/scheduler.py, FCFS policy).

Each step has a token budget (`max_num_batched_tokens`):

1. Running requests first, in order: each gets its remaining tokens (1 while decoding, the rest
   of its prompt while prefilling), capped by the budget. If the pool cannot supply blocks, the
   *last* running request is preempted (blocks freed, progress dropped, put back at the head of
   the queue to recompute later) until the allocation fits or the request itself was preempted.
2. Only if nothing was preempted, waiting requests are admitted in arrival order while budget,
   `max_num_seqs` and free blocks allow; each starts after its prefix-cache hit. The first one
   that does not fit stops admission (head-of-line, as in vLLM).

`update` applies a finished step: computed tokens advance, requests whose known tokens are all
computed sample their next planned token, and finished requests release their blocks.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from kvgate.sim.cost_model import ScheduledChunk
from kvgate.sim.encoder_cache import EncoderCache
from kvgate.sim.kv_manager import KVCacheManager
from kvgate.sim.profiles import Profile
from kvgate.sim.request import (
    EngineRequest,
    FinishReason,
    RequestOutput,
    RequestStatus,
    snapshot_stats,
)
from kvgate.sim.stats import EngineStats


@dataclass(frozen=True, slots=True)
class SchedulerOutput:
    chunks: list[ScheduledChunk]
    preempted: list[EngineRequest]


class Scheduler:
    """Waiting queue, running batch and the per-step scheduling decision."""

    def __init__(
        self, profile: Profile, kv: KVCacheManager, encoder: EncoderCache, stats: EngineStats
    ) -> None:
        self.max_num_seqs = profile.max_num_seqs
        self.max_num_batched_tokens = profile.max_num_batched_tokens
        self.max_model_len = profile.max_model_len
        self.kv = kv
        self.encoder = encoder
        self.stats = stats
        self.waiting: deque[EngineRequest] = deque()
        self.running: list[EngineRequest] = []

    def add(self, request: EngineRequest) -> None:
        request.status = RequestStatus.WAITING
        self.waiting.append(request)

    def schedule(self, now_s: float) -> SchedulerOutput:
        budget = self.max_num_batched_tokens
        chunks: list[ScheduledChunk] = []
        preempted: list[EngineRequest] = []
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            while not self.kv.allocate_slots(request, num_new):
                victim = self.running.pop()
                self._preempt(victim)
                preempted.append(victim)
                if victim is request:
                    break
            else:
                chunks.append(self._chunk(request, num_new, request.num_computed_tokens))
                budget -= num_new
                index += 1
                continue
            break
        if not preempted:
            budget = self._admit_waiting(now_s, budget, chunks)
        return SchedulerOutput(chunks, preempted)

    def _admit_waiting(self, now_s: float, budget: int, chunks: list[ScheduledChunk]) -> int:
        kv = self.kv
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            request = self.waiting[0]
            hit = kv.find_prefix_hit(request)
            num_computed = hit.num_blocks * kv.block_size
            num_new = min(request.num_tokens - num_computed, budget)
            if not kv.allocate_slots(request, num_new, hit):
                break
            self.waiting.popleft()
            gpu_hit_tokens = len(hit.gpu_blocks) * kv.block_size
            self.stats.record_admission(
                request.num_tokens, gpu_hit_tokens, hit.num_offload_blocks * kv.block_size,
                kv.offload is not None,
            )
            if request.num_cached_tokens < 0:  # first admission, not a resume after preemption
                request.num_cached_tokens = gpu_hit_tokens
                request.num_offloaded_tokens = hit.num_offload_blocks * kv.block_size
                request.first_scheduled_s = now_s
            request.num_computed_tokens = num_computed
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            chunks.append(self._chunk(request, num_new, num_computed, hit.num_offload_blocks))
            budget -= num_new
        return budget

    def _chunk(
        self, request: EngineRequest, num_new: int, num_context: int, num_loaded_blocks: int = 0
    ) -> ScheduledChunk:
        encoder_tokens = 0
        if request.mm_items:
            end = num_context + num_new
            for item in request.mm_items:
                if item.offset >= end or item.offset + item.length <= num_context:
                    continue
                if item.identifier not in request.encoded_items:
                    request.encoded_items.add(item.identifier)
                    encoder_tokens += self.encoder.encode(item.identifier, item.length)
        return ScheduledChunk(request, num_new, num_context, encoder_tokens, num_loaded_blocks)

    def _preempt(self, request: EngineRequest) -> None:
        """Recompute-style preemption: drop the blocks and progress, requeue at the head."""
        self.kv.free(request)
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        request.encoded_items.clear()
        request.status = RequestStatus.PREEMPTED
        self.stats.num_preemptions += 1
        self.waiting.appendleft(request)

    def update(self, chunks: list[ScheduledChunk], now_s: float) -> list[RequestOutput]:
        """Apply a completed step at `now_s`; returns the tokens it produced."""
        outputs: list[RequestOutput] = []
        for chunk in chunks:
            request = chunk.request
            if request.status is not RequestStatus.RUNNING:
                continue  # aborted while the step ran
            request.num_computed_tokens += chunk.num_new_tokens
            if request.num_computed_tokens < request.num_tokens:
                continue  # a prefill chunk that did not reach the end of the prompt
            index = request.num_output_tokens
            token_id = request.output_token_ids[index]
            request.all_token_ids.append(token_id)
            is_first = request.first_token_s is None
            if is_first:
                request.first_token_s = now_s
            self.stats.record_token(request, now_s, is_first)
            request.last_token_s = now_s
            finished: FinishReason | None = None
            if request.num_output_tokens >= len(request.output_token_ids):
                finished = request.final_finish_reason
            elif request.num_tokens >= self.max_model_len:
                finished = "length"
            if finished is None:
                outputs.append(RequestOutput(request.request_id, (token_id,), index, False))
                continue
            self.running.remove(request)
            self._finish(request, finished, now_s)
            outputs.append(
                RequestOutput(request.request_id, (token_id,), index, True, snapshot_stats(request))
            )
        return outputs

    def abort(self, request: EngineRequest, now_s: float) -> None:
        """Stop a request wherever it is and release its blocks at once."""
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self._finish(request, "abort", now_s)

    def _finish(self, request: EngineRequest, reason: FinishReason, now_s: float) -> None:
        self.kv.free(request)
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason
        request.finished_s = now_s
        self.stats.record_finished(request)
