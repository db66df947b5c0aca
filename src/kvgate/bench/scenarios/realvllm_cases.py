"""The ``realvllm`` scenario's cases and requests, shared by the real run
(:mod:`kvgate.bench.scenarios.realvllm`) and its fitted-simulator twin
(:mod:`kvgate.bench.scenarios.realvllm_sim`), so neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass

from kvgate.bench.request import BenchRequest
from kvgate.bench.workloads import MultimodalWorkload, SharedPrefixWorkload, WorkloadOptions


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    #: Which tiny model: "vision" (tiny-llava) or "text" (tiny-llama).
    model: str
    kv_cache_tokens: int
    concurrency: int
    workload: MultimodalWorkload | SharedPrefixWorkload
    num_requests: int


def cases(quick: bool) -> list[Case]:
    per_image, per_doc = (2, 3) if quick else (6, 8)
    return [
        # ~20 blocks per image prompt: 12 images need ~240 blocks, a replica holds 160.
        Case("multimodal", "vision", kv_cache_tokens=5120, concurrency=4,
             workload=MultimodalWorkload(num_images=12, resolutions="512x512",
                                         questions_per_image=per_image, question_tokens=24,
                                         output_tokens=16),
             num_requests=12 * per_image),
        # 38 blocks per document: 8 documents need ~300 blocks, a replica holds 160.
        Case("text", "text", kv_cache_tokens=5120, concurrency=4,
             workload=SharedPrefixWorkload(num_groups=8, prompts_per_group=per_doc,
                                           system_prompt_tokens=1200, question_tokens=32,
                                           output_tokens=16),
             num_requests=8 * per_doc),
    ]


def requests_for(case: Case, model_name: str, seed: int) -> list[BenchRequest]:
    """The case's requests, in order; the same for every router, real or simulated."""
    options = WorkloadOptions(model=model_name, seed=seed, stream=True, ignore_eos=True,
                              num_requests=case.num_requests)
    return case.workload.build(options)
