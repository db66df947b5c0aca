"""/metrics text, checked with prometheus_client's own parser."""

from __future__ import annotations

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from kvgate.sim.metrics import render_metrics
from tests.sim.conftest import LLAMA, make_engine, request, run_alone

REQUIRED = {
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:prefix_cache_queries": "counter",
    "vllm:prefix_cache_hits": "counter",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:num_preemptions": "counter",
    "vllm:request_success": "counter",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:request_queue_time_seconds": "histogram",
    "vllm:request_prefill_time_seconds": "histogram",
}


def _families(text: str) -> dict[str, Metric]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def _value(text: str, sample_name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == sample_name and all(sample.labels.get(k) == v
                                                  for k, v in labels.items()):
                return float(sample.value)
    raise KeyError(sample_name)


def test_metrics_parse_and_match_engine_state() -> None:
    engine, _ = make_engine(LLAMA, num_gpu_blocks=200)
    prompt = [300 + i for i in range(100)]
    run_alone(engine, request(prompt, num_output=5))
    run_alone(engine, request([*prompt, 1], num_output=3), at_s=1.0)
    waiting = request([7] * 40)
    engine.submit(waiting, 2.0)
    text = render_metrics(engine, "m").decode()
    families = _families(text)
    for name, kind in REQUIRED.items():
        assert families[name].type == kind, name
    labels = {"model_name": "m", "engine": "0"}
    assert _value(text, "vllm:num_requests_waiting", **labels) == 1
    assert _value(text, "vllm:num_requests_running", **labels) == 0
    assert _value(text, "vllm:prefix_cache_queries_total", **labels) == 100 + 101
    assert _value(text, "vllm:prefix_cache_hits_total", **labels) == 6 * 16
    assert _value(text, "vllm:generation_tokens_total", **labels) == 8
    assert _value(text, "vllm:prompt_tokens_total", **labels) == 201
    assert _value(text, "vllm:request_success_total", finished_reason="length", **labels) == 2
    assert _value(text, "vllm:time_to_first_token_seconds_count", **labels) == 2
    assert _value(text, "vllm:inter_token_latency_seconds_count", **labels) == 4 + 2
    assert _value(text, "vllm:time_to_first_token_seconds_bucket", le="+Inf", **labels) == 2
    buckets = [s for s in families["vllm:e2e_request_latency_seconds"].samples
               if s.name.endswith("_bucket")]
    counts = [s.value for s in buckets]
    assert counts == sorted(counts) and counts[-1] == 2


def test_kv_usage_gauge_tracks_blocks_in_use() -> None:
    engine, _ = make_engine(LLAMA, num_gpu_blocks=11)
    engine.submit(request([5] * 80, num_output=10), 0.0)
    engine.step(0.0)
    text = render_metrics(engine, "m").decode()
    # 80 prompt tokens = 5 of the 10 usable blocks (block 0 is vLLM's null block).
    assert _value(text, "vllm:kv_cache_usage_perc") == engine.kv_usage == 0.5
    assert _value(text, "vllm:gpu_cache_usage_perc") == 0.5
