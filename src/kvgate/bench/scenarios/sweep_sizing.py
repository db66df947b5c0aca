"""How the sweep sizes a regime: a workload's working set, the fleet's no-cache capacity and
the TTFT SLO, from the requests the replicas will see and the profile's own cost model.

- **Request shapes.** Every body goes through a replica's own parser
  (:class:`~kvgate.bench.virtual_loads.RequestBuilder`), so prompt tokens, vision tokens,
  planned outputs and KV block identities (the engine's chained block hashes, image keys
  included) are exactly what the engines get.
- **Working set** (:func:`live_working_set_blocks`): the *reusable* KV, i.e. the distinct full
  blocks that occur in the prompts of two or more requests (shared prefixes, images,
  conversation histories, a trace's shared hash ids; a request's own question never counts),
  and only while it is *live*: a block counts from its first use to its last. The figure is
  the mean, over arrivals, of the blocks live at that arrival (time-averaged, since Poisson
  arrivals see time averages). A replica whose KV is ``r`` times this holds ``r`` of what the
  traffic can reuse at any moment.
- **No-cache capacity** (:func:`fleet_capacity_per_s`): what the fleet could serve per second
  if nothing were ever cached. Each request's engine cost is the cost model's *marginal* cost
  of its chunks (its prefill chunks, then one decode token per step) added to a full,
  compute-bound step: ``CostModel.step_duration_s([full, chunk]) - step_duration_s([full])``.
  That is compute for every token, the prefill's attention, each decode's KV read and the
  per-sequence overhead; the step overhead and the weight-read floor are shared by a full
  batch and left out, so this is the throughput of a saturated replica (an upper bound:
  lighter steps cost more per token). The API server is a second, serial bottleneck
  (``frontend_cost_s``: image decode and hash for multimodal requests). Capacity =
  replicas / max(mean engine cost, mean front-end cost).
- **Cold TTFT and the SLO** (:func:`slo_ttft_s`): a request's TTFT on an idle replica with
  nothing cached (front end, then its prefill chunks alone, each a full cost-model step). The
  SLO is :data:`SLO_FACTOR` x the workload's mean cold TTFT: met means the request waited no
  longer than about one more cold prefill.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from kvgate.bench.virtual_loads import RequestBuilder
from kvgate.sim.cost_model import CostModel, ScheduledChunk
from kvgate.sim.request import EngineRequest
from kvgate.vllm_compat.hashing import BlockHasher

#: TTFT SLO = this x the workload's mean TTFT on an idle replica with nothing cached.
SLO_FACTOR = 2.0


@dataclass(frozen=True, slots=True)
class RequestShape:
    """One request as an engine sees it, and what it costs without a cache."""

    prompt_tokens: int
    output_tokens: int
    image_tokens: int
    #: Identities of the prompt's full KV blocks (chained block hashes).
    blocks: tuple[bytes, ...]
    #: On an idle replica with nothing cached: arrival to first token, and to the last one.
    cold_ttft_s: float
    cold_e2e_s: float
    #: Engine time the request adds to a saturated replica with nothing cached.
    engine_s: float
    #: API-server time before the engine sees it (serial per replica).
    frontend_s: float


class ShapeMeter:
    """Request shapes for one profile (a builder for its parser, its cost model)."""

    def __init__(self, builder: RequestBuilder) -> None:
        self._builder = builder
        profile = builder.profile
        self._block_size = profile.block_size
        self._chunk_tokens = profile.max_num_batched_tokens
        self._cost = CostModel(profile)
        # NOTE: block identity only, never compared with an engine's: the cheaper algorithm.
        self._hasher = BlockHasher("xxhash")
        filler = EngineRequest("full-step", [0], [0])
        self._full_step = [ScheduledChunk(filler, self._chunk_tokens, 0)]
        self._full_step_s = self._cost.step_duration_s(self._full_step)
        if self._chunk_tokens * profile.compute_s_per_token < profile.weight_read_s:
            raise ValueError(f"{profile.name}: a full step is not compute-bound")

    def shape(self, body: bytes, request_id: str) -> RequestShape:
        request, generation = self._builder.build(body, request_id)
        image_tokens = generation.prompt.num_image_tokens
        frontend_s = self._cost.frontend_cost_s(image_tokens)
        cold_s = frontend_s
        cold_ttft_s = 0.0
        engine_s = 0.0
        for chunk in self._chunks(request, image_tokens):
            cold_s += self._cost.step_duration_s([chunk])
            engine_s += self._cost.step_duration_s([*self._full_step, chunk]) - self._full_step_s
            if chunk.num_context_tokens + chunk.num_new_tokens == request.num_prompt_tokens:
                cold_ttft_s = cold_s
        blocks = self._hasher.hash_blocks(request.prompt_token_ids, self._block_size,
                                          mm_items=request.mm_items,
                                          cache_salt=request.cache_salt)
        return RequestShape(
            prompt_tokens=request.num_prompt_tokens,
            output_tokens=len(request.output_token_ids), image_tokens=image_tokens,
            blocks=tuple(blocks), cold_ttft_s=cold_ttft_s, cold_e2e_s=cold_s,
            engine_s=engine_s, frontend_s=frontend_s)

    def _chunks(self, request: EngineRequest, image_tokens: int) -> Iterator[ScheduledChunk]:
        """The request's work on an idle replica: prefill chunks of at most a step's token
        budget (the vision encoder in the first: images lead their message), then one token
        per decode step (the first output token comes with the last prefill chunk)."""
        prompt_tokens = request.num_prompt_tokens
        done = 0
        while done < prompt_tokens:
            new = min(self._chunk_tokens, prompt_tokens - done)
            yield ScheduledChunk(request, new, done, image_tokens if done == 0 else 0)
            done += new
        for context in range(prompt_tokens, prompt_tokens + len(request.output_token_ids) - 1):
            yield ScheduledChunk(request, 1, context)


def request_shapes(builder: RequestBuilder, bodies: Sequence[bytes]) -> list[RequestShape]:
    meter = ShapeMeter(builder)
    return [meter.shape(body, f"shape{i}") for i, body in enumerate(bodies)]


def fleet_capacity_per_s(shapes: Sequence[RequestShape], replicas: int) -> float:
    """Requests per second ``replicas`` replicas serve with nothing cached (module docstring)."""
    engine_s = statistics.fmean(s.engine_s for s in shapes)
    frontend_s = statistics.fmean(s.frontend_s for s in shapes)
    return replicas / max(engine_s, frontend_s)


def slo_ttft_s(shapes: Sequence[RequestShape]) -> float:
    return SLO_FACTOR * statistics.fmean(s.cold_ttft_s for s in shapes)


def live_working_set_blocks(shapes: Sequence[RequestShape], arrivals_s: Sequence[float]
                            ) -> float:
    """Mean over arrivals of the reusable blocks live then: blocks in two or more prompts,
    counted from their first use to their last (``arrivals_s[i]`` is request ``i``'s)."""
    first_s: dict[bytes, float] = {}
    last_s: dict[bytes, float] = {}
    uses: dict[bytes, int] = {}
    for index in sorted(range(len(shapes)), key=arrivals_s.__getitem__):
        at_s = arrivals_s[index]
        for block in set(shapes[index].blocks):
            first_s.setdefault(block, at_s)
            last_s[block] = at_s
            uses[block] = uses.get(block, 0) + 1
    reusable = [block for block, count in uses.items() if count > 1]
    firsts = sorted(first_s[b] for b in reusable)
    lasts = sorted(last_s[b] for b in reusable)
    live = [bisect.bisect_right(firsts, t) - bisect.bisect_left(lasts, t) for t in arrivals_s]
    return statistics.fmean(live) if live else 0.0


def max_request_blocks(shapes: Sequence[RequestShape], block_size: int) -> int:
    """KV blocks the largest request needs (prompt and output): a replica smaller than this
    would refuse it."""
    return max(math.ceil((s.prompt_tokens + s.output_tokens) / block_size) for s in shapes)
