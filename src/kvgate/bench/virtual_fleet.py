"""Bench workloads on in-process simulated engines, on a virtual clock (no HTTP, no sleeping).

The scenarios that need many replicas, or numbers that do not depend on how busy this machine
is, run the simulator's engines in-process (:class:`kvgate.sim.virtual.VirtualCluster`)
instead of ``kvgate sim`` processes. Requests are the same OpenAI bodies the load generator
sends, turned into engine requests by the replica's own parser
(:func:`kvgate.sim.openai_api.parse_generation`), so prompts, images and planned answers are
exactly what an HTTP replica would see. Times are simulated seconds.

    builder = RequestBuilder(get_profile("llama-3.1-8b-h100"))
    request, generation = builder.build(body, "r1")
    cluster.submit(0, request, generation.prompt.num_image_tokens)
    ...
    summary = summarize_stats([stats for _, stats in cluster.finished])
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from kvgate.bench.request import NO_SESSION, RequestRecord
from kvgate.bench.stats import distribution_ms
from kvgate.sim import openai_api
from kvgate.sim.engine import Engine
from kvgate.sim.profiles import Profile
from kvgate.sim.prompt import PromptRenderer
from kvgate.sim.request import EngineRequest, RequestOutput, RequestStats
from kvgate.sim.tokenizer import SimTokenizer
from kvgate.sim.virtual import VirtualCluster


class MemoTokenizer(SimTokenizer):
    """The simulator's tokenizer, remembering the ids of long texts.

    A conversation resends every earlier message each turn and many users share one system
    prompt; the ids are a pure function of the text, so they are computed once. Bounded: the
    memo is dropped whole when it holds ``max_texts``.
    """

    def __init__(self, min_chars: int = 256, max_texts: int = 50_000) -> None:
        super().__init__()
        self._min_chars = min_chars
        self._max_texts = max_texts
        self._texts: dict[str, tuple[int, ...]] = {}

    def encode(self, text: str) -> list[int]:
        if len(text) < self._min_chars:
            return super().encode(text)
        ids = self._texts.get(text)
        if ids is None:
            if len(self._texts) >= self._max_texts:
                self._texts.clear()
            ids = self._texts[text] = tuple(super().encode(text))
        return list(ids)


class RequestBuilder:
    """OpenAI request bodies -> engine requests, as a ``kvgate sim`` replica parses them."""

    def __init__(self, profile: Profile, image_tokens: int | None = None) -> None:
        self.profile = profile
        self.renderer = PromptRenderer(profile, MemoTokenizer(), image_tokens)

    @property
    def model(self) -> str:
        """The model name bodies must carry (the profile's served model name)."""
        return self.profile.served_model_name

    def build(self, body: bytes, request_id: str
              ) -> tuple[EngineRequest, openai_api.Generation]:
        """The engine request for a chat/completions body; raises ``openai_api.ApiError``."""
        generation = openai_api.parse_generation(body, "chat", self.renderer, self.model,
                                                 request_id)
        request = EngineRequest(
            request_id=request_id,
            prompt_token_ids=generation.prompt.token_ids,
            output_token_ids=generation.answer.token_ids,
            final_finish_reason=generation.answer.finish_reason,
            mm_items=generation.prompt.mm_items,
            cache_salt=generation.cache_salt,
        )
        return request, generation


def run_closed_loop(engines: Sequence[Engine], requests: Iterator[tuple[EngineRequest, int]],
                    concurrency: int) -> VirtualCluster:
    """Keep ``concurrency`` requests outstanding until ``requests`` runs out, then drain.

    ``requests`` yields (request, vision tokens) pairs, built lazily so a long run never holds
    every prompt at once; a finished request's slot is refilled the moment it finishes, as a
    closed-loop client (vLLM's ``benchmark_serving --max-concurrency``) does. Requests go to
    the engines in turn. Returns the drained cluster (``finished`` holds the stats).
    """
    sent = 0

    def send_next() -> None:
        nonlocal sent
        item = next(requests, None)
        if item is not None:
            request, num_image_tokens = item
            cluster.submit(sent % len(engines), request, num_image_tokens)
            sent += 1

    def on_output(_: int, output: RequestOutput) -> None:
        # NOTE: runs inside the cluster's event loop; submit only queues an arrival at the
        # current virtual time, so refilling from here is safe.
        if output.finished:
            send_next()

    cluster = VirtualCluster(engines, on_output=on_output)
    for _ in range(concurrency):
        send_next()
    cluster.run_until_idle()
    return cluster


def summarize_stats(stats: Sequence[RequestStats]) -> dict[str, Any]:
    """TTFT/latency distributions, throughput and where prompt tokens came from.

    Throughput is over the makespan, first arrival to last finish. Token shares count each
    request's first admission (a request preempted and re-admitted is not counted twice):
    ``gpu_hit_ratio`` = prompt tokens found in the GPU prefix cache / prompt tokens,
    ``cpu_hit_ratio`` the same for the CPU tier, ``hit_ratio`` both together.
    """
    if not stats:
        return {"requests": 0}
    start_s = min(s.arrival_s for s in stats)
    makespan_s = max(s.finished_s for s in stats) - start_s
    prompt_tokens = sum(s.num_prompt_tokens for s in stats)
    output_tokens = sum(s.num_output_tokens for s in stats)
    gpu_hits = sum(s.num_cached_tokens for s in stats)
    cpu_hits = sum(s.num_offloaded_tokens for s in stats)
    return {
        "requests": len(stats),
        "makespan_s": round(makespan_s, 4),
        "requests_per_s": _per_s(len(stats), makespan_s),
        "output_tokens_per_s": _per_s(output_tokens, makespan_s),
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "gpu_hit_ratio": _ratio(gpu_hits, prompt_tokens),
        "cpu_hit_ratio": _ratio(cpu_hits, prompt_tokens),
        "hit_ratio": _ratio(gpu_hits + cpu_hits, prompt_tokens),
        "preempted_requests": sum(1 for s in stats if s.num_preemptions),
        "ttft_ms": distribution_ms(s.ttft_s for s in stats if s.ttft_s is not None),
        "latency_ms": distribution_ms(s.e2e_s for s in stats),
    }


def records_from_stats(stats: Sequence[tuple[int, RequestStats]], tags: Mapping[str, str]
                       ) -> list[RequestRecord]:
    """Load-generator records of finished engine requests (engine index, stats), so the
    bench's plots and tables take simulated runs too; times are simulated seconds."""
    start_s = min((s.arrival_s for _, s in stats), default=0.0)
    return [
        RequestRecord(
            index=index, tag=tags.get(s.request_id, ""), session=NO_SESSION,
            scheduled_s=s.arrival_s - start_s, start_s=s.arrival_s - start_s,
            end_s=s.finished_s - start_s,
            ttft_s=s.ttft_s, status=200, output_tokens=s.num_output_tokens,
            prompt_tokens=s.num_prompt_tokens, deployment=f"replica-{engine}",
        )
        for index, (engine, s) in enumerate(stats)
    ]


def engine_counters(engine: Engine) -> dict[str, Any]:
    """An engine's vLLM-named counters (what its ``/metrics`` would show), JSON-ready."""
    stats = engine.stats
    counters: dict[str, Any] = {
        "prefix_cache_queries": stats.prefix_cache_queries,
        "prefix_cache_hits": stats.prefix_cache_hits,
        "external_prefix_cache_queries": stats.external_prefix_cache_queries,
        "external_prefix_cache_hits": stats.external_prefix_cache_hits,
        "num_preemptions": stats.num_preemptions,
        "num_steps": stats.num_steps,
        "busy_time_s": round(stats.busy_time_s, 4),
    }
    if engine.offload is not None:
        counters["cpu_tier_blocks_stored"] = engine.offload.num_stored_blocks_total
        counters["cpu_tier_blocks_loaded"] = engine.offload.num_loaded_blocks_total
    return counters


def _per_s(count: float, seconds: float) -> float | None:
    return round(count / seconds, 3) if seconds > 0 else None


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None
