"""A replica's counters from its ``/metrics``: parsed, subtracted, serialised, read over HTTP."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from kvgate.bench.engine_counters import EngineCounters, parse_counters, read_counters

METRICS = "\n".join([
    "# HELP vllm:prefix_cache_queries_total Prefix cache queries.",
    "# TYPE vllm:prefix_cache_queries_total counter",
    'vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1000.0',
    'vllm:prefix_cache_hits_total{engine="0",model_name="m"} 750.0',
    'vllm:num_preemptions_total{engine="0",model_name="m"} 2.0',
    'vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 3.5',
    'vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 7.0',
    'vllm:request_queue_time_seconds_sum{engine="0",model_name="m"} 1.25',
    'kvgate_sim_engine_busy_seconds_total{engine="0",model_name="m"} 12.0',
    'vllm:request_success_total{finished_reason="length",model_name="m"} 3.0',
    'vllm:request_success_total{finished_reason="stop",model_name="m"} 2.0',
    # Not counters this reads: a different series with a counter's prefix, and a gauge.
    'vllm:prefix_cache_hits_created{engine="0",model_name="m"} 99.0',
    'vllm:num_requests_running{engine="0",model_name="m"} 4.0',
    "",
])


def test_series_are_summed_over_label_sets() -> None:
    counters = parse_counters(METRICS)
    assert counters == EngineCounters(
        prefix_cache_queries=1000.0, prefix_cache_hits=750.0, preemptions=2.0, busy_s=12.0,
        ttft_sum_s=3.5, ttft_count=7.0, requests=5.0, queue_time_sum_s=1.25)
    assert parse_counters("") == EngineCounters()


def test_delta_and_hit_rate() -> None:
    counters = parse_counters(METRICS)
    assert counters.hit_rate == 0.75
    delta = counters.delta(EngineCounters(prefix_cache_queries=500.0, prefix_cache_hits=500.0,
                                          requests=1.0))
    assert delta.hit_rate == 0.5 and delta.requests == 4.0 and delta.busy_s == 12.0
    assert EngineCounters().hit_rate is None


def test_json_keeps_the_keys_result_files_carry() -> None:
    assert parse_counters(METRICS).to_json() == {
        "prefix_cache_queries": 1000.0, "prefix_cache_hits": 750.0, "prompt_tokens": 0.0,
        "generation_tokens": 0.0, "preemptions": 2.0, "busy_s": 12.0, "ttft_sum_s": 3.5,
        "ttft_count": 7.0, "hit_rate": 0.75}
    assert EngineCounters().to_json()["hit_rate"] is None


@contextmanager
def _metrics_server(body: str) -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == "/metrics"
            data = body.encode() if found else b""
            self.send_response(200 if found else 404)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_read_counters_reads_every_replica_in_order() -> None:
    with _metrics_server(METRICS) as first, _metrics_server("") as second:
        assert read_counters([first, second], timeout_s=5.0) == [parse_counters(METRICS),
                                                                  EngineCounters()]


def test_a_replica_without_metrics_is_an_error() -> None:
    with _metrics_server(METRICS) as url, pytest.raises(OSError):
        read_counters([url + "/nothing-here"])
