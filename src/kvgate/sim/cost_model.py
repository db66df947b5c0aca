"""How long an engine step and a request's front-end processing take (simulated seconds).

One step runs every scheduled chunk in one forward pass:

    step = overhead
         + max(weight_read, scheduled_tokens x compute_per_token)   # memory- vs compute-bound
         + prefill attention pairs x attn_per_pair                  # quadratic in the chunk
         + decode context tokens x kv_read_per_token                # each decode reads its KV
         + sequences x per_seq_overhead                             # sampling, bookkeeping
         + vision tokens encoded x encoder_per_token                # only uncached images
         + CPU-tier blocks loaded x block_load (+ one link latency)  # offload hits

So decode steps get slower as the batch grows (KV reads and per-sequence work), a small prefill
costs about one decode step, and a large one is compute-bound and linear in its uncached tokens,
plus the attention term that grows with the context it attends to.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from kvgate.sim.profiles import Profile
from kvgate.sim.request import EngineRequest


@dataclass(frozen=True, slots=True)
class ScheduledChunk:
    """The part of one request computed in one step."""

    request: EngineRequest
    num_new_tokens: int
    num_context_tokens: int  # tokens already in the KV cache before this chunk
    num_encoder_tokens: int = 0  # vision tokens whose encoder runs in this step
    num_loaded_blocks: int = 0  # blocks read back from the CPU tier in this step


class CostModel:
    """Step durations from a profile; stateless."""

    def __init__(self, profile: Profile) -> None:
        self._p = profile
        self._block_load_s = profile.block_load_s

    def step_duration_s(self, chunks: Sequence[ScheduledChunk]) -> float:
        p = self._p
        num_tokens = 0
        attn_pairs = 0
        decode_context = 0
        encoder_tokens = 0
        loaded_blocks = 0
        for chunk in chunks:
            new, context = chunk.num_new_tokens, chunk.num_context_tokens
            num_tokens += new
            if new == 1:
                decode_context += context + 1
            else:
                attn_pairs += new * context + new * (new + 1) // 2
            encoder_tokens += chunk.num_encoder_tokens
            loaded_blocks += chunk.num_loaded_blocks
        duration = (
            p.step_overhead_s
            + max(p.weight_read_s, num_tokens * p.compute_s_per_token)
            + attn_pairs * p.attn_s_per_token_pair
            + decode_context * p.kv_read_s_per_token
            + len(chunks) * p.per_seq_overhead_s
            + encoder_tokens * p.vision_encoder_s_per_token
        )
        if loaded_blocks:
            duration += p.offload_latency_s + loaded_blocks * self._block_load_s
        return duration

    def frontend_cost_s(self, num_image_tokens: int) -> float:
        """API-server work before the engine sees a request: templating, image decode + hash."""
        return self._p.frontend_s + num_image_tokens * self._p.image_preprocess_s_per_token


class FrontendQueue:
    """The API server as a FIFO queue with `num_workers` servers.

    vLLM's front end renders prompts and runs the image processor on its event loop, so
    concurrent image requests wait for each other there before the engine sees them.
    """

    def __init__(self, num_workers: int = 1) -> None:
        self._free_at_s = [0.0] * max(1, num_workers)

    def ready_at_s(self, arrival_s: float, cost_s: float) -> float:
        """When a request arriving at `arrival_s` reaches the engine."""
        start_s = max(arrival_s, heapq.heappop(self._free_at_s))
        heapq.heappush(self._free_at_s, start_s + cost_s)
        return start_s + cost_s
