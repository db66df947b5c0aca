"""The timing model's calibration anchors and ratios (virtual time, no sleeping)."""

from __future__ import annotations

from kvgate.sim.cost_model import CostModel, ScheduledChunk
from kvgate.vllm_compat.hashing import MMPlaceholder
from tests.sim.conftest import LLAMA, LLAVA, make_engine, request, run_alone

VISION_TOKENS = 6561  # the "6.5k vision tokens" of the seed's measurements


def _image_prompt(question: int) -> tuple[list[int], list[MMPlaceholder]]:
    head = [400 + i for i in range(24)]
    tokens = head + [LLAVA.prompt_format.image_token_id] * VISION_TOKENS + [900 + question] * 40
    return tokens, [MMPlaceholder("photo", len(head), VISION_TOKENS)]


def test_llava_cold_and_warm_ttft_match_the_seed_measurements() -> None:
    engine, _ = make_engine(LLAVA, num_gpu_blocks=2000)
    tokens, mm = _image_prompt(1)
    cold = run_alone(engine, request(tokens, mm=mm))
    tokens2, mm2 = _image_prompt(2)  # same image and system text, a new question
    warm = run_alone(engine, request(tokens2, mm=mm2), at_s=60.0)
    assert cold.ttft_s is not None and warm.ttft_s is not None
    assert 1.3 <= cold.ttft_s <= 2.7
    assert 0.2 <= warm.ttft_s <= 0.3
    assert cold.ttft_s / warm.ttft_s > 5
    assert warm.num_cached_tokens >= VISION_TOKENS


def test_decode_slows_down_with_batch_size() -> None:
    cost = CostModel(LLAMA)
    def decode_step(batch: int) -> float:
        chunks = [ScheduledChunk(request([1]), 1, 1000) for _ in range(batch)]
        return cost.step_duration_s(chunks)
    one, many = decode_step(1), decode_step(64)
    assert 0.004 < one < 0.008  # ~5.5 ms batch-1 decode on an H100
    assert many > 1.3 * one


def test_inter_token_latency_grows_with_concurrency() -> None:
    def mean_itl(concurrency: int) -> float:
        engine, _ = make_engine(LLAMA, num_gpu_blocks=4000)
        reqs = [request([300 + k] * 2000, num_output=30) for k in range(concurrency)]
        for r in reqs:
            engine.submit(r, 0.0)
        now = 0.0
        while engine.has_unfinished_requests():
            step, _ = engine.step(now)
            assert step is not None
            now = step.end_s
        return engine.stats.inter_token_latency.sum / engine.stats.inter_token_latency.count
    assert mean_itl(48) > 1.3 * mean_itl(1)


def test_prefill_cost_scales_with_uncached_tokens() -> None:
    engine, _ = make_engine(LLAMA, num_gpu_blocks=4000)
    short = run_alone(engine, request([7] * 2000))
    engine2, _ = make_engine(LLAMA, num_gpu_blocks=4000)
    long = run_alone(engine2, request([8] * 16000))
    assert short.ttft_s is not None and long.ttft_s is not None
    assert long.ttft_s > 6 * short.ttft_s


def test_warm_text_prefix_is_much_faster_than_cold() -> None:
    engine, _ = make_engine(LLAMA, num_gpu_blocks=4000)
    system = [500 + (i % 97) for i in range(12000)]
    cold = run_alone(engine, request([*system, 1, 2, 3]))
    warm = run_alone(engine, request([*system, 4, 5, 6]), at_s=10.0)
    assert cold.ttft_s is not None and warm.ttft_s is not None
    assert cold.ttft_s > 10 * warm.ttft_s


def test_front_end_serialises_image_requests() -> None:
    engine, _ = make_engine(LLAVA, num_gpu_blocks=100)
    first = engine.frontend_ready_s(0.0, VISION_TOKENS)
    second = engine.frontend_ready_s(0.0, VISION_TOKENS)
    assert second > first > 0.15
    assert abs(second - 2 * first) < 1e-9
