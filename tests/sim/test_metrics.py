"""/metrics text, checked with prometheus_client's own parser."""

from __future__ import annotations

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from kvgate.bench.simfit_probe import parse_info_labels
from kvgate.sim.engine import Engine
from kvgate.sim.metrics import render_metrics
from kvgate.sim.profiles import get_profile
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


#: Every label of ``vllm:cache_config_info`` on a real vLLM 0.32 CPU replica (read from one
#: started by kvgate.testing.vllm, tiny-llava, --block-size 32, 5 MiB of KV).
VLLM_032_CACHE_CONFIG_LABELS = frozenset({
    "_block_size_resolved", "block_size", "cache_dtype", "cache_hit_alignment_tokens",
    "effective_attention_block_size", "enable_mamba_shared_prefix_checkpoint",
    "enable_prefix_caching", "engine", "gpu_memory_utilization", "hash_block_size",
    "is_attention_free", "kv_cache_dtype_skip_layers", "kv_cache_layout",
    "kv_cache_max_concurrency", "kv_cache_memory_bytes", "kv_cache_size_tokens",
    "kv_offloading_backend", "kv_offloading_size", "kv_sharing_fast_prefill",
    "mamba_block_size", "mamba_cache_dtype", "mamba_cache_mode", "mamba_page_size_padded",
    "mamba_ssm_cache_dtype", "num_cpu_blocks", "num_gpu_blocks", "num_gpu_blocks_override",
    "prefix_cache_retention_interval", "prefix_caching_hash_algo", "prefix_match_unit",
    "replayssm_buffer_len", "skip_page_size_padded", "sliding_window", "swa_bounded_replay",
    "use_kda_recoverssm", "use_replayssm", "user_specified_block_size",
})


def test_cache_config_info_publishes_kv_capacity_like_vllm() -> None:
    engine, _ = make_engine(LLAMA, num_gpu_blocks=161)
    text = render_metrics(engine, "m").decode()
    family = _families(text)["vllm:cache_config_info"]
    assert family.type == "gauge"
    (sample,) = family.samples
    assert sample.value == 1.0
    labels = sample.labels
    # vLLM labels this gauge by engine only; values are str() of the config fields.
    assert "model_name" not in labels and labels["engine"] == "0"
    assert set(labels) <= VLLM_032_CACHE_CONFIG_LABELS
    assert labels["num_gpu_blocks"] == "161" and labels["block_size"] == "16"
    assert labels["kv_cache_size_tokens"] == str(161 * 16)
    assert labels["enable_prefix_caching"] == "True"
    assert labels["prefix_caching_hash_algo"] == "sha256"
    # What a reader of real replicas' /metrics (the simfit probe's) gets back.
    assert parse_info_labels(text)["num_gpu_blocks"] == "161"


def test_cache_config_info_follows_the_profile_and_defaults() -> None:
    engine = Engine(get_profile("cpu-tiny-llava"))
    labels = parse_info_labels(render_metrics(engine, "tiny-llava").decode())
    assert labels["block_size"] == "32"
    assert labels["num_gpu_blocks"] == str(get_profile("cpu-tiny-llava").num_gpu_blocks)
    assert labels["num_gpu_blocks_override"] == "None"
