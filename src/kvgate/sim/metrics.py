"""Prometheus text exposition of one engine's state, under vLLM's metric names.

Written by hand (no prometheus_client registry per replica) in the format prometheus_client
emits -- counters as `<name>_total` in HELP/TYPE, sorted labels, `+Inf` buckets, no `_created`
samples (vLLM disables them) -- so scrapers and parsers see what a vLLM replica serves. Labels are
vLLM's: `model_name` and `engine` ("0"). Times are simulated seconds (equal to wall time at
--time-scale 1). Simulator-only series are prefixed `kvgate_sim_`.
"""

from __future__ import annotations

import math

from kvgate.sim.engine import Engine
from kvgate.sim.stats import Histogram

_HISTOGRAM_HELP: tuple[tuple[str, str, str], ...] = (
    ("vllm:time_to_first_token_seconds", "ttft", "Histogram of time to first token in seconds."),
    ("vllm:inter_token_latency_seconds", "inter_token_latency",
     "Histogram of inter-token latency in seconds."),
    ("vllm:e2e_request_latency_seconds", "e2e_latency",
     "Histogram of e2e request latency in seconds."),
    ("vllm:request_queue_time_seconds", "queue_time",
     "Histogram of time spent in WAITING phase for request."),
    ("vllm:request_prefill_time_seconds", "prefill_time",
     "Histogram of time spent in PREFILL phase for request."),
    ("vllm:request_decode_time_seconds", "decode_time",
     "Histogram of time spent in DECODE phase for request."),
    ("vllm:request_inference_time_seconds", "inference_time",
     "Histogram of time spent in RUNNING phase for request."),
)


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _labels(base: str, **extra: str) -> str:
    pairs = dict(item.split("=", 1) for item in base.split(",")) if base else {}
    pairs.update({key: f'"{value}"' for key, value in extra.items()})
    return "{" + ",".join(f"{key}={pairs[key]}" for key in sorted(pairs)) + "}"


class _Writer:
    def __init__(self, base_labels: str) -> None:
        self.lines: list[str] = []
        self.base = base_labels

    def gauge(self, name: str, help_text: str, value: float) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge",
                       f"{name}{_labels(self.base)} {_num(value)}"]

    def counter(self, name: str, help_text: str, values: dict[str, float] | float,
                label: str = "") -> None:
        total = name + "_total"
        self.lines += [f"# HELP {total} {help_text}", f"# TYPE {total} counter"]
        if isinstance(values, dict):
            for label_value, value in values.items():
                labels = _labels(self.base, **{label: label_value})
                self.lines.append(f"{total}{labels} {_num(value)}")
        else:
            self.lines.append(f"{total}{_labels(self.base)} {_num(values)}")

    def histogram(self, name: str, help_text: str, hist: Histogram) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        cumulative = 0
        for bound, count in zip((*hist.buckets, math.inf), hist.bucket_counts, strict=True):
            cumulative += count
            self.lines.append(f"{name}_bucket{_labels(self.base, le=_num(bound))} "
                              f"{_num(cumulative)}")
        self.lines.append(f"{name}_count{_labels(self.base)} {_num(hist.count)}")
        self.lines.append(f"{name}_sum{_labels(self.base)} {_num(hist.sum)}")


def cache_config_labels(engine: Engine) -> dict[str, str]:
    """The labels of ``vllm:cache_config_info`` that the simulator knows, under vLLM's names.

    vLLM 0.32 publishes every ``CacheConfig`` field as a label (``str()`` of the value, so
    ``None`` and ``True`` as words), labelled with ``engine`` but not ``model_name``; a gateway
    reads each replica's KV capacity from ``num_gpu_blocks`` x ``block_size``. Fields with no
    meaning here (GPU memory utilisation, Mamba and sliding-window settings) are left out.
    """
    config = engine.config
    block_size = engine.profile.block_size
    num_gpu_blocks = engine.pool.num_gpu_blocks
    return {
        "block_size": str(block_size),
        "cache_dtype": "auto",
        "enable_prefix_caching": str(config.enable_prefix_caching),
        "engine": "0",
        "kv_cache_size_tokens": str(num_gpu_blocks * block_size),
        # NOTE: vLLM's own CPU swap space, which it no longer allocates; the simulator's
        # LMCache-like tier (--cpu-offload-blocks) is a connector, not this.
        "num_cpu_blocks": "None",
        "num_gpu_blocks": str(num_gpu_blocks),
        "num_gpu_blocks_override": str(config.num_gpu_blocks),
        "prefix_caching_hash_algo": config.hash_algo,
    }


def render_metrics(engine: Engine, model_name: str, server_load: int = 0) -> bytes:
    """The /metrics body for one replica."""
    stats = engine.stats
    out = _Writer(f'engine="0",model_name="{model_name}"')
    info = cache_config_labels(engine)
    out.lines += ["# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig",
                  "# TYPE vllm:cache_config_info gauge",
                  "vllm:cache_config_info{"
                  + ",".join(f'{key}="{info[key]}"' for key in sorted(info)) + "} 1.0"]
    out.gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
              engine.num_running)
    out.gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
              engine.num_waiting)
    out.gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
              engine.kv_usage)
    out.gauge("vllm:gpu_cache_usage_perc",
              "GPU KV-cache usage. 1 means 100 percent usage (deprecated name).", engine.kv_usage)
    out.counter("vllm:prefix_cache_queries",
                "Prefix cache queries, in terms of number of queried tokens.",
                stats.prefix_cache_queries)
    out.counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
                stats.prefix_cache_hits)
    out.counter("vllm:external_prefix_cache_queries",
                "External prefix cache queries from KV connector cross-instance cache sharing, "
                "in terms of number of queried tokens.", stats.external_prefix_cache_queries)
    out.counter("vllm:external_prefix_cache_hits",
                "External prefix cache hits from KV connector cross-instance cache sharing, "
                "in terms of number of cached tokens.", stats.external_prefix_cache_hits)
    out.counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.",
                stats.num_preemptions)
    out.counter("vllm:prompt_tokens", "Number of prefill tokens processed.", stats.prompt_tokens)
    out.counter("vllm:generation_tokens", "Number of generation tokens processed.",
                stats.generation_tokens)
    out.counter("vllm:request_success", "Count of successfully processed requests.",
                {reason: float(n) for reason, n in stats.request_success.items()},
                label="finished_reason")
    for name, attr, help_text in _HISTOGRAM_HELP:
        out.histogram(name, help_text, getattr(stats, attr))
    offload_usage = engine.offload.usage if engine.offload is not None else 0.0
    out.gauge("kvgate_sim_cpu_offload_usage_perc", "Simulated CPU offload tier usage (0-1).",
              offload_usage)
    out.gauge("kvgate_sim_cached_blocks", "Distinct block hashes cached on the simulated GPU.",
              len(engine.pool.cached))
    out.gauge("kvgate_sim_server_load", "In-flight HTTP requests (the /load figure).",
              server_load)
    out.counter("kvgate_sim_engine_busy_seconds",
                "Simulated seconds the engine spent running steps.", stats.busy_time_s)
    return ("\n".join(out.lines) + "\n").encode("utf-8")
