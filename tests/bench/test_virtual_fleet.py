"""The virtual fleet: bodies on in-process engines, the closed loop, the summary, routing."""

from __future__ import annotations

from collections.abc import Iterator

from kvgate.bench.request import NO_SESSION
from kvgate.bench.virtual_loads import RequestBuilder, run_closed_loop
from kvgate.bench.virtual_stats import records_from_stats, summarize_stats
from kvgate.bench.workloads import SharedPrefixWorkload, WorkloadOptions
from kvgate.sim.engine import Engine, EngineConfig
from kvgate.sim.profiles import get_profile
from kvgate.sim.request import EngineRequest

PROFILE = get_profile("llama-3.1-8b-h100")


def _bodies(model: str, count: int) -> list[bytes]:
    workload = SharedPrefixWorkload(num_groups=2, system_prompt_tokens=64, question_tokens=8,
                                    output_tokens=4)
    options = WorkloadOptions(model=model, num_requests=count, ignore_eos=True)
    return [bench_request.body for bench_request in workload.build(options)]


def _requests(builder: RequestBuilder, count: int) -> Iterator[tuple[EngineRequest, int]]:
    for index, body in enumerate(_bodies(builder.model, count)):
        request, generation = builder.build(body, f"r{index}")
        yield request, generation.prompt.num_image_tokens


def test_builder_renders_like_a_replica() -> None:
    builder = RequestBuilder(PROFILE)
    request, generation = builder.build(_bodies(builder.model, 1)[0], "r0")
    assert request.request_id == "r0"
    assert request.prompt_token_ids == generation.prompt.token_ids
    assert len(request.output_token_ids) == 4  # ignore_eos: exactly max_tokens
    assert request.num_prompt_tokens > 64


def test_closed_loop_keeps_concurrency_and_finishes_everything() -> None:
    builder = RequestBuilder(PROFILE)
    engines = [Engine(PROFILE, EngineConfig(num_gpu_blocks=200)) for _ in range(2)]
    cluster = run_closed_loop(engines, _requests(builder, 12), concurrency=3)
    assert len(cluster.finished) == 12
    # Requests alternate between the engines; the first 3 arrive together at t=0.
    assert {index for index, _ in cluster.finished} == {0, 1}
    assert sorted(s.arrival_s for _, s in cluster.finished)[:3] == [0.0, 0.0, 0.0]
    arrivals = sorted(s.arrival_s for _, s in cluster.finished)
    finishes = sorted(s.finished_s for _, s in cluster.finished)
    # Closed loop: the k-th refill (request 3 + k) arrives when the k-th request finishes.
    assert arrivals[3:] == finishes[:9]


def test_summary_splits_prompt_tokens_by_where_they_came_from() -> None:
    builder = RequestBuilder(PROFILE)
    engine = Engine(PROFILE, EngineConfig(num_gpu_blocks=400))
    cluster = run_closed_loop([engine], _requests(builder, 8), concurrency=1)
    stats = [s for _, s in cluster.finished]
    summary = summarize_stats(stats)
    assert summary["requests"] == 8
    assert summary["prompt_tokens"] == sum(s.num_prompt_tokens for s in stats)
    # Two groups, one at a time: all but each group's first request hit its system prompt.
    assert 0.5 < summary["gpu_hit_ratio"] < 1.0
    assert summary["cpu_hit_ratio"] == 0.0
    assert summary["hit_ratio"] == summary["gpu_hit_ratio"]
    assert summary["ttft_ms"]["count"] == 8
    assert summary["output_tokens_per_s"] > 0
    records = records_from_stats(cluster.finished, {"r0": "group0"})
    assert records[0].deployment == "replica-0" and records[0].session == NO_SESSION
    assert [r.ttft_s for r in records] == [s.ttft_s for s in stats]
    assert summarize_stats([]) == {"requests": 0}
