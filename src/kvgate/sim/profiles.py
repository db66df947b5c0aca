"""Hardware/model profiles: the numbers behind the simulator's timing and capacity.

Every GPU profile constant is derived in a comment from a public spec or a first-principles
estimate (see docs/SIMULATOR.md, "GPU profiles"); none is a measurement of a real GPU unless it
says so. The two anchors the issue fixes are the seed's measured LLaVA-OneVision-7B on A40
figures: a cold request with ~6.5k vision tokens has a TTFT of 1.3-2.7 s and a warm repeat
about 250 ms. The ``cpu-tiny-*`` profiles are different: fitted to measurements of the real vLLM
CPU replicas the test suite starts (``kvgate bench scenario simfit``; docs/SIMULATOR.md,
"Fitted CPU profiles").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from kvgate.vllm_compat.sim_prompt import (
    LLAMA_31,
    LLAVA_ONEVISION_QWEN2,
    TINY_CHATML,
    TINY_LLAVA_CHATML,
    PromptFormat,
)


@dataclass(frozen=True, slots=True)
class Profile:
    """One model on one GPU type. All times are simulated seconds at --time-scale 1."""

    name: str
    served_model_name: str
    # Chat template, image token and vision-token rule: shared with a gateway that routes
    # in front of simulated replicas, so they live in the neutral package.
    prompt_format: PromptFormat
    # Capacity and scheduler limits (vLLM names).
    block_size: int
    num_gpu_blocks: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    # Engine step cost: a roofline with a fixed overhead (cost_model.py has the formula).
    step_overhead_s: float
    weight_read_s: float
    compute_s_per_token: float
    attn_s_per_token_pair: float
    kv_read_s_per_token: float
    per_seq_overhead_s: float
    # Front end (API server process): runs before the engine sees a request, serially.
    frontend_s: float
    image_preprocess_s_per_token: float
    # Vision.
    vision_encoder_s_per_token: float
    encoder_cache_tokens: int
    # KV geometry and the CPU offload link.
    kv_bytes_per_token: int
    offload_bandwidth_bytes_per_s: float
    offload_latency_s: float

    @property
    def block_load_s(self) -> float:
        """Time to bring one block back from the CPU tier over the host link."""
        return self.block_size * self.kv_bytes_per_token / self.offload_bandwidth_bytes_per_s

    def image_tokens(self, width: int | None, height: int | None) -> int:
        """Placeholder tokens one image occupies (the image's size when known)."""
        return self.prompt_format.image_tokens(width, height)

    def with_overrides(self, **changes: object) -> Profile:
        """A copy with some fields replaced (e.g. num_gpu_blocks from --kv-blocks)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def slowed(self, factor: float) -> Profile:
        """A copy whose engine and front end take ``factor`` times as long (a replica sharing
        its cores with other work); capacity and the offload link are unchanged."""
        return replace(self, **{name: getattr(self, name) * factor for name in _TIMES})


#: The fields that are durations (per step, token, pair, sequence or request).
_TIMES = ("step_overhead_s", "weight_read_s", "compute_s_per_token", "attn_s_per_token_pair",
          "kv_read_s_per_token", "per_seq_overhead_s", "frontend_s",
          "image_preprocess_s_per_token", "vision_encoder_s_per_token")


# --- LLaVA-OneVision-7B (Qwen2-7B LM + SigLIP-400M) on one A40 (48 GB, 696 GB/s, ~150 TFLOPS) ---
# KV: 28 layers x 4 KV heads x 128 dims x 2 (K, V) x 2 bytes = 57,344 B/token.
# Weights ~16.1 GB bf16 -> reading them once takes 16.1e9 / 696e9 ~= 23 ms, the floor of every
# forward pass and, with overhead, the ~25 ms batch-1 decode step.
# Prefill: 2 x 7.6e9 FLOPs/token at ~75 TFLOPS sustained ~= 200 us/token (~5k tok/s, inside the
# 4.5-6.5k estimate); attention adds 4 x 3584 x 28 FLOPs per (query, key) pair ~= 5.4 ns.
# Cold 6.5k-vision-token request: ~1.3 s prefill + ~0.1 s attention + ~0.1 s vision encoder
# + ~0.2 s front end ~= 1.75 s (target 1.3-2.7 s). Warm: one ~25 ms step + ~0.22 s front end
# (image decode, resize, hash; it runs even on a cache hit) ~= 0.25 s (target ~250 ms).
# KV capacity: 0.9 x 48 GB - 16.1 GB weights - ~3 GB activations ~= 24 GB -> 26,000 blocks of 16.
LLAVA_ONEVISION_7B_A40 = Profile(
    name="llava-onevision-7b-a40",
    served_model_name="llava-hf/llava-onevision-qwen2-7b-ov-hf",
    prompt_format=LLAVA_ONEVISION_QWEN2,  # 6,561 tokens (9 crops x 729) for an unsized image
    block_size=16,
    num_gpu_blocks=26_000,
    max_num_seqs=256,
    max_num_batched_tokens=2048,  # vLLM's API-server default on GPUs under 70 GiB
    max_model_len=32_768,
    step_overhead_s=0.0015,
    weight_read_s=0.0231,
    compute_s_per_token=200e-6,
    attn_s_per_token_pair=5.4e-9,
    kv_read_s_per_token=57_344 / 696e9,
    per_seq_overhead_s=0.0002,
    frontend_s=0.004,
    image_preprocess_s_per_token=33.5e-6,
    vision_encoder_s_per_token=15e-6,  # SigLIP-400M: 2 x 0.4e9 FLOPs/patch at ~55 TFLOPS
    encoder_cache_tokens=16_384,
    kv_bytes_per_token=57_344,
    offload_bandwidth_bytes_per_s=25e9,  # PCIe 4.0 x16, pinned memory
    offload_latency_s=0.0005,
)

# --- Llama-3.1-8B-Instruct on one H100 SXM (80 GB, 3.35 TB/s, ~989 TFLOPS dense bf16) ---
# KV: 32 layers x 8 KV heads x 128 x 2 x 2 B = 131,072 B/token. Weights 16.1 GB -> 4.8 ms read;
# with ~0.6 ms overhead that is the ~5.5 ms batch-1 decode step. Prefill ~35k tok/s (28.6 us/token,
# inside the 28-42k estimate). Attention 4 x 4096 x 32 FLOPs/pair at ~400 TFLOPS ~= 1.3 ns.
# KV capacity: 0.9 x 80 GB - 16.1 GB - ~4 GB ~= 52 GB -> 24,800 blocks of 16 (2 MiB each).
LLAMA_31_8B_H100 = Profile(
    name="llama-3.1-8b-h100",
    served_model_name="meta-llama/Llama-3.1-8B-Instruct",
    prompt_format=LLAMA_31,  # text-only: image parts are rejected with 400, as vLLM does
    block_size=16,
    num_gpu_blocks=24_800,
    max_num_seqs=1024,
    max_num_batched_tokens=8192,  # vLLM's API-server default on >= 70 GiB GPUs
    max_model_len=131_072,
    step_overhead_s=0.0006,
    weight_read_s=0.0048,
    compute_s_per_token=28.6e-6,
    attn_s_per_token_pair=1.3e-9,
    kv_read_s_per_token=131_072 / 3.35e12,
    per_seq_overhead_s=0.00005,
    frontend_s=0.0015,
    image_preprocess_s_per_token=0.0,
    vision_encoder_s_per_token=0.0,
    encoder_cache_tokens=0,
    kv_bytes_per_token=131_072,
    offload_bandwidth_bytes_per_s=50e9,  # PCIe 5.0 x16
    offload_latency_s=0.0003,
)

# --- The tiny random-weight models of kvgate.testing.vllm on real vLLM 0.32's CPU build -------
# Fitted to measurements, not estimated: `kvgate bench scenario simfit` started one replica of
# each model with the options the realvllm scenario uses (5,120 KV tokens, --block-size 32) and
# wrote benchmarks/results/simfit.json (2026-12-06 17:54 UTC, 2 cores, load average 0.5-1.7,
# every process of the replica on core 0 as the harness now runs each replica on its core; the
# fit before, 2026-12-05 03:00 UTC at load 3-5 with only the worker pinned, is in git
# history). Each timing constant is models.<kind>.profile_constants there: one fit of all 3
# rounds x 3 repeats (each probe's median); each round's own fit gives the range in
# models.<kind>.spread, quoted in docs/SIMULATOR.md. Capacity is the replica's
# vllm:cache_config_info. Wall seconds of tiny models on CPU: these profiles model the test
# suite's replicas, not a GPU. weight_read_s is 0: the weights are a few MB, and a step's fixed
# cost is step_overhead_s (the decode fit's intercept).
_TINY_SCHEDULER = {
    # vLLM 0.32's `vllm serve` defaults on CPU (engine/arg_utils.py) and its encoder cache
    # (config/scheduler.py: sized to max_num_batched_tokens). From the source, not measured.
    "max_num_seqs": 128,
    "max_num_batched_tokens": 2048,
    "max_model_len": 5120,  # ReplicaOptions.model_len at realvllm's 5,120-token budget
    "num_gpu_blocks": 161,  # cache_config_info num_gpu_blocks (5,120 tokens / 32 + null block)
    "block_size": 32,  # cache_config_info block_size (the CPU backend needs a multiple of 32)
    # Not measured: the real replicas have no CPU tier. A host memory copy (~10 GB/s).
    "offload_bandwidth_bytes_per_s": 10e9,
    "offload_latency_s": 0.0001,
    "weight_read_s": 0.0,
}
CPU_TINY_LLAMA = Profile(
    name="cpu-tiny-llama",
    served_model_name="tiny-llama",
    prompt_format=TINY_CHATML,
    step_overhead_s=0.00339,  # mean inter-token gap vs batch size 1-8: intercept
    compute_s_per_token=3.02e-05,  # cold prefill (engine) vs [1, n, n(n+1)/2]: the n term
    attn_s_per_token_pair=5.64e-08,  # the same fit: the n(n+1)/2 term
    kv_read_s_per_token=4.08e-07,  # batch-1 inter-token gap vs context 78-4,014: slope
    per_seq_overhead_s=0.000112,  # gap vs batch slope - compute - KV read at its context
    frontend_s=0.00613,  # client TTFT - engine queue - engine prefill, cold text: median
    image_preprocess_s_per_token=0.0,
    vision_encoder_s_per_token=0.0,
    encoder_cache_tokens=0,
    kv_bytes_per_token=2048,  # cache_config_info kv_cache_memory_bytes / kv_cache_size_tokens
    **_TINY_SCHEDULER,  # type: ignore[arg-type]
)
CPU_TINY_LLAVA = Profile(
    name="cpu-tiny-llava",
    served_model_name="tiny-llava",
    prompt_format=TINY_LLAVA_CHATML,  # 576 vision tokens per image
    step_overhead_s=0.0026,  # as for cpu-tiny-llama, on tiny-llava's 2-layer decoder
    compute_s_per_token=1.34e-05,
    attn_s_per_token_pair=3.1e-08,
    kv_read_s_per_token=1.52e-07,
    per_seq_overhead_s=0.000114,
    frontend_s=0.00605,
    # A cold 512x512 image prompt's front end beyond the text front end, per vision token.
    image_preprocess_s_per_token=9.3e-06,
    # Its engine prefill beyond what the text prefill fit predicts for its length, per token.
    vision_encoder_s_per_token=9.98e-06,
    encoder_cache_tokens=2048,  # vLLM: encoder_cache_size = max_num_batched_tokens (source)
    kv_bytes_per_token=1024,  # cache_config_info kv_cache_memory_bytes / kv_cache_size_tokens
    **_TINY_SCHEDULER,  # type: ignore[arg-type]
)

PROFILES: Mapping[str, Profile] = MappingProxyType(
    {profile.name: profile for profile in (LLAVA_ONEVISION_7B_A40, LLAMA_31_8B_H100,
                                           CPU_TINY_LLAMA, CPU_TINY_LLAVA)}
)
DEFAULT_PROFILE = LLAVA_ONEVISION_7B_A40.name


def get_profile(name: str) -> Profile:
    """The named profile; raises KeyError listing the known names."""
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}") from None
