"""Prefix-cache semantics of the engine, as vLLM implements them."""

from __future__ import annotations

import random

from kvgate.sim.kv_manager import KVCacheManager
from kvgate.sim.request import RequestStatus
from kvgate.vllm_compat.hashing import MMPlaceholder, to_event_hash
from kvgate.vllm_compat.kv_events import BlockRemoved, BlockStored
from tests.sim.conftest import LLAMA, LLAVA, make_engine, request, run_alone

B = 16


def blocks(*ids: int) -> list[int]:
    """Tokens of whole blocks, block k filled with 1000 + k."""
    return [1000 + i for i in ids for _ in range(B)]


def test_hit_only_on_a_leading_run() -> None:
    engine, _ = make_engine()
    run_alone(engine, request([*blocks(0, 1, 2, 3, 4), 7]))
    # Same blocks 0-2, different block 3, same blocks 4: only the leading run can hit.
    stats = run_alone(engine, request([*blocks(0, 1, 2, 9, 4), 7]))
    assert stats.num_cached_tokens == 3 * B
    # Nothing in common at the start means no hit at all, even if later blocks match.
    stats = run_alone(engine, request([*blocks(9, 1, 2, 3, 4), 7]))
    assert stats.num_cached_tokens == 0


def test_hit_is_capped_below_the_full_prompt() -> None:
    engine, _ = make_engine()
    prompt = blocks(0, 1, 2, 3)  # exactly 4 full blocks
    run_alone(engine, request(prompt))
    # vLLM recomputes at least one token, so a fully cached aligned prompt hits 3 blocks.
    assert run_alone(engine, request(prompt)).num_cached_tokens == 3 * B
    assert run_alone(engine, request([*prompt, 5])).num_cached_tokens == 4 * B


def test_decode_blocks_are_cached() -> None:
    engine, _ = make_engine()
    first = request(blocks(0, 1) + [3] * 8, num_output=40)
    run_alone(engine, first)
    # The follow-up turn = prompt + generated answer: blocks filled while decoding hit too.
    follow_up = request(first.all_token_ids + [4] * 20)
    stats = run_alone(engine, follow_up)
    full_blocks_before_last_token = (len(first.all_token_ids) - 1) // B
    assert stats.num_cached_tokens == full_blocks_before_last_token * B
    assert stats.num_cached_tokens > len(first.prompt_token_ids)


def test_lru_eviction_order() -> None:
    engine, _ = make_engine(num_gpu_blocks=13)  # 12 usable blocks
    old = blocks(0, 1, 2, 3)
    new = blocks(10, 11, 12, 13)
    run_alone(engine, request([*old, 1], num_output=1))   # 5 blocks, freed
    run_alone(engine, request([*new, 1], num_output=1))   # 5 blocks, freed later
    # Later requests take blocks from the front of the free queue: the least recently used
    # chain loses blocks first, and from its tail (vLLM frees a request's blocks in reverse).
    run_alone(engine, request([*blocks(20, 21, 22), 1], num_output=1))
    assert run_alone(engine, request([*new, 1], num_output=1)).num_cached_tokens == 4 * B
    assert run_alone(engine, request([*old, 1], num_output=1)).num_cached_tokens == 2 * B


def test_running_requests_are_pinned() -> None:
    engine, _ = make_engine(num_gpu_blocks=9)  # 8 usable
    long = request([*blocks(0, 1, 2), 1], num_output=30)
    engine.submit(long, 0.0)
    step, _ = engine.step(0.0)
    assert step is not None
    pinned = list(long.blocks)
    # Meanwhile other requests churn through the remaining blocks.
    for k in range(5):
        other = request([*blocks(50 + k, 60 + k), 1], num_output=1)
        engine.submit(other, step.end_s)
        while not other.is_finished:
            step, _ = engine.step(step.end_s)
            assert step is not None
        assert all(block.ref_cnt >= 1 for block in pinned)
        assert long.blocks[:len(pinned)] == pinned
        assert all(block.block_hash is not None for block in pinned[:3])


def test_image_hash_changes_the_blocks_it_covers() -> None:
    engine, _ = make_engine(LLAVA, num_gpu_blocks=200)
    image_tokens = [LLAVA.prompt_format.image_token_id] * (3 * B)
    prompt = blocks(0, 1) + image_tokens + blocks(5) + [9]
    first = MMPlaceholder("image-a", 2 * B, 3 * B)
    run_alone(engine, request(prompt, mm=[first]))
    same = run_alone(engine, request(prompt, mm=[first]))
    other = run_alone(engine, request(prompt, mm=[MMPlaceholder("image-b", 2 * B, 3 * B)]))
    assert same.num_cached_tokens == 6 * B
    # Identical token ids, different image: the hit stops where the image starts.
    assert other.num_cached_tokens == 2 * B


def test_capacity_never_exceeded_and_accounting_holds() -> None:
    rng = random.Random(7)
    engine, _ = make_engine(num_gpu_blocks=40, max_num_batched_tokens=64, max_num_seqs=6)
    prefixes = [blocks(*range(k * 10, k * 10 + 3)) for k in range(4)]
    now = 0.0
    pending = 0
    for _ in range(400):
        if rng.random() < 0.3 and pending < 12:
            suffix = [rng.randrange(300, 900) for _ in range(rng.randrange(1, 40))]
            prompt = rng.choice(prefixes) + suffix
            engine.submit(request(prompt, num_output=rng.randrange(1, 30)), now)
            pending += 1
        step, outputs = engine.step(now)
        if step is not None:
            now = step.end_s
        pending -= sum(1 for o in outputs if o.finished)
        running = engine.scheduler.running
        held = {id(b): b for r in running for b in r.blocks}
        assert len(held) <= engine.pool.num_usable_blocks
        assert engine.pool.num_free_blocks + len(held) == engine.pool.num_usable_blocks
        for r in running:
            assert r.status is RequestStatus.RUNNING
            assert all(b.ref_cnt >= 1 for b in r.blocks)
            assert len(r.blocks) * B >= r.num_computed_tokens
    while engine.has_unfinished_requests():
        step, _ = engine.step(now)
        assert step is not None
        now = step.end_s
    assert engine.pool.num_free_blocks == engine.pool.num_usable_blocks


def test_preemption_when_kv_is_full_and_everyone_finishes() -> None:
    engine, _ = make_engine(num_gpu_blocks=12)  # 11 usable: not enough for 3 x 5 blocks
    reqs = [request(blocks(10 * k) + [k] * 10, num_output=50) for k in range(3)]
    for r in reqs:
        engine.submit(r, 0.0)
    now = 0.0
    while engine.has_unfinished_requests():
        step, _ = engine.step(now)
        assert step is not None
        now = step.end_s
    assert engine.stats.num_preemptions > 0
    assert all(r.num_output_tokens == 50 and r.finish_reason == "length" for r in reqs)


def test_abort_frees_blocks() -> None:
    engine, _ = make_engine()
    r = request([*blocks(0, 1, 2), 1], num_output=100)
    engine.submit(r, 0.0)
    engine.step(0.0)
    assert engine.pool.num_free_blocks < engine.pool.num_usable_blocks
    assert engine.abort(r.request_id, 1.0)
    assert r.finish_reason == "abort" and engine.num_running == 0
    assert engine.pool.num_free_blocks == engine.pool.num_usable_blocks
    assert engine.stats.request_success["abort"] == 1
    assert not engine.abort(r.request_id, 1.0)


def test_kv_events_describe_cached_and_evicted_blocks() -> None:
    engine, sink = make_engine(num_gpu_blocks=6, events=True)  # 5 usable
    first = request([*blocks(0, 1, 2), 1], num_output=1)
    run_alone(engine, first)
    stored = [e for _, batch in sink.batches for e in batch if isinstance(e, BlockStored)]
    expected = [to_event_hash(h) for h in first.block_hashes[:3]]
    assert [h for e in stored for h in e.block_hashes] == expected
    assert stored[0].parent_block_hash is None and stored[0].token_ids == blocks(0, 1, 2)
    assert stored[0].extra_keys == [None, None, None] and stored[0].medium == "GPU"
    sink.batches.clear()
    run_alone(engine, request([*blocks(7, 8, 9), 1], num_output=1))
    removed = [e for _, batch in sink.batches for e in batch if isinstance(e, BlockRemoved)]
    # Lazy eviction: blocks are reported removed only when reused, one hash per event.
    assert all(len(e.block_hashes) == 1 for e in removed)
    assert {e.block_hashes[0] for e in removed} <= set(expected) and removed


def test_chunked_prefill_respects_the_token_budget() -> None:
    engine, _ = make_engine(LLAMA, num_gpu_blocks=2000, max_num_batched_tokens=512)
    r = request([5] * 2000, num_output=2)
    engine.submit(r, 0.0)
    chunks = []
    now = 0.0
    while not r.is_finished:
        step, _ = engine.step(now)
        assert step is not None
        chunks.append(sum(c.num_new_tokens for c in step.chunks))
        now = step.end_s
    assert chunks[:4] == [512, 512, 512, 464] and chunks[4:] == [1]


def test_max_num_seqs_bounds_the_batch() -> None:
    engine, _ = make_engine(LLAMA, num_gpu_blocks=500, max_num_seqs=3)
    for k in range(6):
        engine.submit(request([k + 300] * 20, num_output=5), 0.0)
    step, _ = engine.step(0.0)
    assert step is not None and len(step.chunks) == 3
    assert engine.num_running == 3 and engine.num_waiting == 3


def test_hashes_match_the_shared_block_hasher() -> None:
    engine, _ = make_engine()
    r = request([*blocks(0, 1, 2), 1])
    run_alone(engine, r)
    assert isinstance(engine.kv, KVCacheManager)
    assert r.block_hashes[:3] == engine.hasher.hash_blocks(blocks(0, 1, 2), B)
