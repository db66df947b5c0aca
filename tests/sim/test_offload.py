"""The LMCache-like CPU tier: evicted blocks spill there and load back cheaper than recompute."""

from __future__ import annotations

from kvgate.vllm_compat.kv_events import BlockRemoved, BlockStored
from tests.sim.conftest import LLAMA, make_engine, request, run_alone

B = 16


def _prefix(seed: int, num_blocks: int = 200) -> list[int]:
    return [seed * 1000 + i for i in range(num_blocks * B)]


def _revisit(cpu_offload_blocks: int) -> tuple[float, int, int]:
    engine, _ = make_engine(LLAMA, num_gpu_blocks=260, cpu_offload_blocks=cpu_offload_blocks)
    run_alone(engine, request([*_prefix(1), 1], num_output=1))
    run_alone(engine, request([*_prefix(2), 1], num_output=1), at_s=1.0)  # evicts prefix 1
    stats = run_alone(engine, request([*_prefix(1), 2], num_output=1), at_s=2.0)
    assert stats.ttft_s is not None
    return stats.ttft_s, stats.num_cached_tokens, stats.num_offloaded_tokens


def test_offload_hit_is_cheaper_than_recompute() -> None:
    recompute_ttft, gpu_hit, cpu_hit = _revisit(cpu_offload_blocks=0)
    assert gpu_hit + cpu_hit < 100 * B  # most of prefix 1 was evicted from the GPU
    offload_ttft, gpu_hit2, cpu_hit2 = _revisit(cpu_offload_blocks=400)
    assert gpu_hit2 + cpu_hit2 == 200 * B  # GPU remainder + CPU tier cover the whole prefix
    assert cpu_hit2 > 100 * B
    assert offload_ttft < recompute_ttft / 3


def test_offload_counts_as_external_prefix_cache_hits() -> None:
    engine, _ = make_engine(LLAMA, num_gpu_blocks=40, cpu_offload_blocks=100)
    run_alone(engine, request([*_prefix(1, 30), 1], num_output=1))
    run_alone(engine, request([*_prefix(2, 30), 1], num_output=1))
    run_alone(engine, request([*_prefix(1, 30), 2], num_output=1))
    assert engine.offload is not None and engine.offload.num_loaded_blocks_total > 0
    assert engine.stats.external_prefix_cache_hits == engine.offload.num_loaded_blocks_total * B


def test_cpu_tier_is_bounded_and_reports_events() -> None:
    engine, sink = make_engine(LLAMA, num_gpu_blocks=40, cpu_offload_blocks=8, events=True)
    for seed in range(1, 5):
        run_alone(engine, request([*_prefix(seed, 30), 1], num_output=1), at_s=float(seed))
    assert engine.offload is not None and engine.offload.usage == 1.0
    events = [e for _, batch in sink.batches for e in batch]
    cpu_stored = [e for e in events if isinstance(e, BlockStored) and e.medium == "CPU"]
    cpu_removed = [e for e in events if isinstance(e, BlockRemoved) and e.medium == "CPU"]
    assert cpu_stored and cpu_removed
    assert len(cpu_stored) - len(cpu_removed) == 8  # exactly the tier's capacity is resident
    assert all(len(e.token_ids) == B for e in cpu_stored)


def test_cpu_hit_survives_spills_from_its_own_allocation() -> None:
    # A's head stays on the GPU, the next 8 blocks of A sit in a CPU tier of exactly 8; A's
    # revisit must evict B's blocks to make room, and those spills refill the whole tier.
    engine, _ = make_engine(LLAMA, num_gpu_blocks=40, cpu_offload_blocks=8)
    run_alone(engine, request([*_prefix(1, 30), 1], num_output=1))
    run_alone(engine, request([*_prefix(2, 30), 1], num_output=1), at_s=1.0)
    stats = run_alone(engine, request([*_prefix(1, 30), 2], num_output=1), at_s=2.0)
    assert stats.num_offloaded_tokens == 8 * B
    assert engine.offload is not None and engine.offload.num_loaded_blocks_total == 8
