"""A request as the simulated engine sees it: tokens in, a fixed plan of tokens out.

The engine never invents text: the caller decides up front which token ids the request will
generate (`output_token_ids`, e.g. from `filler.plan_answer`) and why it stops. The engine decides
*when* each of them appears, from its cache, its batch and its cost model.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from kvgate.vllm_compat.hashing import BlockHash, LoraKey, MMPlaceholder

if TYPE_CHECKING:
    from kvgate.sim.block_pool import KVBlock

FinishReason = Literal["stop", "length", "abort"]


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED = "finished"


@dataclass(slots=True, eq=False)
class EngineRequest:
    """Mutable engine-side state of one request. Times are simulated seconds."""

    request_id: str
    prompt_token_ids: list[int]
    output_token_ids: Sequence[int]
    final_finish_reason: Literal["stop", "length"] = "length"
    mm_items: tuple[MMPlaceholder, ...] = ()
    cache_salt: str | None = None
    lora: LoraKey | None = None
    arrival_s: float = 0.0

    all_token_ids: list[int] = field(init=False)
    status: RequestStatus = field(init=False, default=RequestStatus.WAITING)
    num_computed_tokens: int = field(init=False, default=0)
    block_hashes: list[BlockHash] = field(init=False, default_factory=list)
    blocks: list[KVBlock] = field(init=False, default_factory=list)
    num_cached_blocks: int = field(init=False, default=0)
    num_preemptions: int = field(init=False, default=0)
    encoded_items: set[str] = field(init=False, default_factory=set)
    finish_reason: FinishReason | None = field(init=False, default=None)
    # Set once, at first admission: prompt tokens served from the GPU cache / the CPU tier.
    num_cached_tokens: int = field(init=False, default=-1)
    num_offloaded_tokens: int = field(init=False, default=0)
    ready_s: float = field(init=False, default=0.0)
    first_scheduled_s: float | None = field(init=False, default=None)
    first_token_s: float | None = field(init=False, default=None)
    last_token_s: float | None = field(init=False, default=None)
    finished_s: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if not self.output_token_ids:
            raise ValueError("a request must plan at least one output token")
        self.all_token_ids = list(self.prompt_token_ids)
        self.ready_s = self.arrival_s

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.all_token_ids) - len(self.prompt_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED


@dataclass(frozen=True, slots=True)
class RequestStats:
    """Per-request outcome, in simulated seconds (what vLLM's histograms would observe)."""

    request_id: str
    arrival_s: float
    ready_s: float
    first_scheduled_s: float | None
    first_token_s: float | None
    finished_s: float
    num_prompt_tokens: int
    num_cached_tokens: int
    num_offloaded_tokens: int
    num_output_tokens: int
    num_preemptions: int
    finish_reason: FinishReason

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def e2e_s(self) -> float:
        return self.finished_s - self.arrival_s


@dataclass(frozen=True, slots=True)
class RequestOutput:
    """What one engine step produced for one request."""

    request_id: str
    new_token_ids: tuple[int, ...]
    first_output_index: int
    finished: bool
    stats: RequestStats | None = None


def snapshot_stats(request: EngineRequest) -> RequestStats:
    """Freeze a finished request's timings and counts."""
    assert request.finish_reason is not None and request.finished_s is not None
    return RequestStats(
        request_id=request.request_id,
        arrival_s=request.arrival_s,
        ready_s=request.ready_s,
        first_scheduled_s=request.first_scheduled_s,
        first_token_s=request.first_token_s,
        finished_s=request.finished_s,
        num_prompt_tokens=request.num_prompt_tokens,
        num_cached_tokens=max(request.num_cached_tokens, 0),
        num_offloaded_tokens=request.num_offloaded_tokens,
        num_output_tokens=request.num_output_tokens,
        num_preemptions=request.num_preemptions,
        finish_reason=request.finish_reason,
    )
