"""The realvllm scenario's design, without vLLM: its cases cap KV so that routing matters, and
hit rates are the replicas' own counter deltas. (`kvgate bench scenario realvllm` runs it.)"""

from __future__ import annotations

import pytest

from kvgate.bench.engine_counters import EngineCounters
from kvgate.bench.scenarios import SCENARIOS
from kvgate.bench.scenarios.realvllm import _hit_rate
from kvgate.bench.scenarios.realvllm_cases import cases
from kvgate.bench.workloads import WorkloadOptions
from kvgate.testing.vllm import MODELS

BLOCK = 32


def test_registered() -> None:
    assert SCENARIOS["realvllm"].module == "kvgate.bench.scenarios.realvllm"


@pytest.mark.parametrize("quick", [False, True])
def test_cases_are_deterministic_and_sized(quick: bool) -> None:
    for case in cases(quick):
        options = WorkloadOptions(model="m", seed=0, num_requests=case.num_requests)
        first = case.workload.build(options)
        assert [r.body for r in first] == [r.body for r in case.workload.build(options)]
        assert len(first) == case.num_requests
        assert case.kv_cache_tokens % BLOCK == 0
        assert case.model in MODELS


def test_working_sets_exceed_one_replica_but_fit_the_pair() -> None:
    """Round robin sends every prefix to both replicas; affinity can partition it."""
    multimodal, text = cases(quick=False)
    per_replica_blocks = multimodal.kv_cache_tokens // BLOCK
    image_blocks = (MODELS["vision"].image_tokens + 4) // BLOCK
    working = multimodal.workload.num_images * image_blocks  # type: ignore[union-attr]
    assert per_replica_blocks < working <= 2 * per_replica_blocks
    doc_blocks = text.workload.system_prompt_tokens // BLOCK  # type: ignore[union-attr]
    working = text.workload.num_groups * doc_blocks  # type: ignore[union-attr]
    assert per_replica_blocks < working <= 2 * per_replica_blocks


def test_hit_rate_is_the_counter_delta_over_both_replicas() -> None:
    before = [EngineCounters(prefix_cache_queries=10.0, prefix_cache_hits=10.0,
                             prompt_tokens=10.0, preemptions=10.0, requests=10.0),
              EngineCounters()]
    after = [EngineCounters(prefix_cache_queries=110.0, prefix_cache_hits=60.0,
                            prompt_tokens=110.0, preemptions=10.0, requests=13.0),
             EngineCounters(prefix_cache_queries=100.0, prefix_cache_hits=30.0,
                            prompt_tokens=100.0, requests=4.0)]
    figures = _hit_rate(before, after)
    assert figures["prefix_cache_hit_rate"] == pytest.approx(80 / 200)
    assert figures["prefix_cache_hit_tokens"] == 80
    assert figures["prompt_tokens"] == 200 and figures["preemptions"] == 0
    assert figures["requests_per_replica"] == [3, 4]
    assert _hit_rate([EngineCounters()], [EngineCounters()])["prefix_cache_hit_rate"] is None
