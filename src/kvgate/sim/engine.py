"""One simulated vLLM replica's engine, driven step by step on a clock the caller owns.

    engine = Engine(get_profile("llava-onevision-7b-a40"), EngineConfig(num_gpu_blocks=4096))
    engine.submit(request, now_s=0.0)
    step = engine.begin_step(now_s=0.0)           # schedule a batch; nothing has run yet
    outputs = engine.finish_step(step)            # ...the batch ran; at step.end_s
    # or: step, outputs = engine.step(now_s)

The same two calls drive both modes: the HTTP replica sleeps `step.duration_s / time_scale` of
real time between them (server.py), and `virtual.VirtualCluster` jumps a virtual clock so that
64+ engines can be swept in-process without waiting. Requests arriving while a step runs wait
for the next one, as in vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvgate.sim.block_pool import BlockPool
from kvgate.sim.cost_model import CostModel, FrontendQueue, ScheduledChunk
from kvgate.sim.encoder_cache import EncoderCache
from kvgate.sim.events import EventLog, KVEventSink
from kvgate.sim.kv_manager import KVCacheManager
from kvgate.sim.offload import CpuOffloadTier
from kvgate.sim.profiles import Profile
from kvgate.sim.request import EngineRequest, RequestOutput, RequestStatus
from kvgate.sim.scheduler import Scheduler
from kvgate.sim.stats import EngineStats
from kvgate.vllm_compat.hashing import (
    DEFAULT_NONE_HASH_SEED,
    BlockHasher,
    HashAlgo,
)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Per-replica settings on top of a profile (the vLLM flags they mirror in comments)."""

    num_gpu_blocks: int | None = None  # --num-gpu-blocks-override; None = profile's
    cpu_offload_blocks: int = 0  # LMCache-like CPU tier size in blocks; 0 = off
    hash_algo: HashAlgo = "sha256"  # --prefix-caching-hash-algo
    none_hash_seed: str = DEFAULT_NONE_HASH_SEED
    enable_prefix_caching: bool = True
    enable_kv_events: bool = False
    frontend_workers: int = 1


class RequestRejected(ValueError):
    """The engine refuses a request outright (vLLM answers these with HTTP 400)."""


@dataclass(frozen=True, slots=True)
class PlannedStep:
    """A scheduled batch: it starts at `start_s` and its outputs exist at `end_s`."""

    start_s: float
    duration_s: float
    chunks: list[ScheduledChunk]

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


class Engine:
    """Scheduler + KV cache + cost model of one replica."""

    def __init__(
        self,
        profile: Profile,
        config: EngineConfig | None = None,
        sink: KVEventSink | None = None,
    ) -> None:
        self.profile = profile
        self.config = config = config or EngineConfig()
        self.stats = EngineStats()
        self._sink = sink
        self._events = EventLog(enabled=config.enable_kv_events and sink is not None)
        self.offload = (
            CpuOffloadTier(config.cpu_offload_blocks, profile.block_size, self._events)
            if config.cpu_offload_blocks > 0
            else None
        )
        self.pool = BlockPool(
            config.num_gpu_blocks or profile.num_gpu_blocks,
            self._events,
            enable_caching=config.enable_prefix_caching,
            on_evict=self.offload.store if self.offload is not None else None,
        )
        self.hasher = BlockHasher(config.hash_algo, config.none_hash_seed)
        self.kv = KVCacheManager(
            self.pool, profile.block_size, self.hasher, self._events, self.offload
        )
        self.encoder_cache = EncoderCache(profile.encoder_cache_tokens)
        self.scheduler = Scheduler(profile, self.kv, self.encoder_cache, self.stats)
        self.cost_model = CostModel(profile)
        self.frontend = FrontendQueue(config.frontend_workers)
        self._requests: dict[str, EngineRequest] = {}
        self._in_flight: PlannedStep | None = None

    # -- requests ---------------------------------------------------------------------------

    def frontend_ready_s(self, arrival_s: float, num_image_tokens: int = 0) -> float:
        """When a request arriving at `arrival_s` clears the API server and can be submitted."""
        cost_s = self.cost_model.frontend_cost_s(num_image_tokens)
        return self.frontend.ready_at_s(arrival_s, cost_s)

    def validate(self, request: EngineRequest) -> None:
        """Raise RequestRejected for a request this engine could never run."""
        if request.num_prompt_tokens >= self.profile.max_model_len:
            raise RequestRejected(
                f"prompt has {request.num_prompt_tokens} tokens; the maximum context length is "
                f"{self.profile.max_model_len}"
            )
        # vLLM sizes max_model_len to fit the KV cache at start-up; a simulator started with a
        # tiny --kv-blocks must refuse what could never fit rather than wait forever.
        num_tokens = request.num_prompt_tokens + len(request.output_token_ids)
        num_blocks = -(-num_tokens // self.profile.block_size)
        if num_blocks > self.pool.num_usable_blocks:
            raise RequestRejected(
                f"request needs {num_blocks} KV blocks ({num_tokens} tokens); this replica has "
                f"{self.pool.num_usable_blocks}"
            )

    def submit(self, request: EngineRequest, now_s: float) -> None:
        """Queue a request; `now_s` is when the engine receives it (after the front end)."""
        if request.request_id in self._requests:
            raise RequestRejected(f"duplicate request id {request.request_id!r}")
        self.validate(request)
        request.ready_s = now_s
        self._requests[request.request_id] = request
        self.scheduler.add(request)

    def abort(self, request_id: str, now_s: float) -> bool:
        """Abort a request (client gone); frees its blocks at once. False if unknown/finished."""
        request = self._requests.pop(request_id, None)
        if request is None or request.status is RequestStatus.FINISHED:
            return False
        self.scheduler.abort(request, now_s)
        return True

    def get_request(self, request_id: str) -> EngineRequest | None:
        return self._requests.get(request_id)

    # -- stepping ---------------------------------------------------------------------------

    def has_unfinished_requests(self) -> bool:
        return bool(self.scheduler.running or self.scheduler.waiting)

    def begin_step(self, now_s: float) -> PlannedStep | None:
        """Schedule the next batch at `now_s`; None when nothing can run."""
        assert self._in_flight is None, "finish_step() the previous step first"
        output = self.scheduler.schedule(now_s)
        if not output.chunks:
            return None
        step = PlannedStep(now_s, self.cost_model.step_duration_s(output.chunks), output.chunks)
        self._in_flight = step
        return step

    def finish_step(self, step: PlannedStep) -> list[RequestOutput]:
        """Complete `step` at its end time; returns the tokens it produced."""
        assert self._in_flight is step, "not the step in flight"
        self._in_flight = None
        self.stats.num_steps += 1
        self.stats.busy_time_s += step.duration_s
        outputs = self.scheduler.update(step.chunks, step.end_s)
        for output in outputs:
            if output.finished:
                self._requests.pop(output.request_id, None)
        self._publish_events(step.end_s)
        return outputs

    def step(self, now_s: float) -> tuple[PlannedStep | None, list[RequestOutput]]:
        """begin_step + finish_step at once (virtual-clock use)."""
        step = self.begin_step(now_s)
        return (step, self.finish_step(step)) if step is not None else (None, [])

    # -- state ------------------------------------------------------------------------------

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def kv_usage(self) -> float:
        return self.pool.usage

    def reset_prefix_cache(self, now_s: float) -> bool:
        """Drop every cached block (refused while requests hold blocks), like vLLM."""
        if not self.pool.reset_prefix_cache():
            return False
        self.encoder_cache.clear()
        self._publish_events(now_s)
        return True

    def _publish_events(self, ts_s: float) -> None:
        if self._sink is not None and self._events.enabled:
            events = self._events.take()
            if events:
                self._sink.publish(events, ts_s)
