"""The engine-metrics scraper against real HTTP servers on 127.0.0.1 (asyncio streams)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from kvgate.core.deployment import Deployment
from kvgate.routing.engine_metrics import (
    EngineFigures,
    EngineMetricsScraper,
    parse_engine_metrics,
)
from tests.routing.factories import deployment

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
vllm:num_requests_waiting{engine="0",model_name="m"} 4.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.5
vllm:num_preemptions_total{engine="0",model_name="m"} 9.0
"""


def test_parse_sums_requests_over_label_sets_and_takes_the_highest_kv_usage() -> None:
    assert parse_engine_metrics(VLLM_METRICS) == EngineFigures(5.0, 4.0, 0.5)
    # The pre-0.10 name of the usage gauge, a garbled value and foreign metrics are handled.
    text = "vllm:gpu_cache_usage_perc 0.75\nvllm:num_requests_waiting x\nother_metric 7\n"
    assert parse_engine_metrics(text) == EngineFigures(0.0, 0.0, 0.75)
    assert parse_engine_metrics("") == EngineFigures()


def test_parse_reads_the_kv_capacity_from_cache_config_info() -> None:
    # The labels as vLLM writes them (an info gauge, value 1), other labels in between.
    line = ('vllm:cache_config_info{block_size="16",cache_dtype="auto",enable_prefix_caching='
            '"True",gpu_memory_utilization="0.9",num_cpu_blocks="None",num_gpu_blocks="2048"'
            ',prefix_caching_hash_algo="sha256"} 1.0\n')
    assert parse_engine_metrics(VLLM_METRICS + line).kv_capacity_tokens == 2048 * 16
    # Before profiling vLLM writes None; a capacity it cannot read is unknown, not zero blocks.
    unprofiled = line.replace('num_gpu_blocks="2048"', 'num_gpu_blocks="None"')
    assert parse_engine_metrics(unprofiled).kv_capacity_tokens == 0.0


@dataclass
class Engine:
    """A /metrics endpoint speaking keep-alive HTTP/1.1; what it answers can change."""

    status: int = 200
    body: str = VLLM_METRICS
    stall: bool = False
    connections: int = 0
    paths: list[str] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.paths.append(head.split(b" ", 2)[1].decode())
                if self.stall:
                    await reader.read()  # answer nothing; return once the client hangs up
                    return
                payload = self.body.encode()
                writer.write(
                    f"HTTP/1.1 {self.status} X\r\ncontent-type: text/plain\r\n"
                    f"content-length: {len(payload)}\r\n\r\n".encode() + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def serving(engine: Engine) -> AsyncIterator[int]:
    server = await asyncio.start_server(engine.handle, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


def numbers(d: Deployment) -> tuple[float, float, float]:
    return d.stats.engine_running, d.stats.engine_waiting, d.stats.engine_kv_usage


async def test_scrapes_every_engine_over_one_kept_alive_connection_each() -> None:
    first, second = Engine(), Engine(body="vllm:num_requests_running 1\n")
    a, b = deployment("a"), deployment("b")
    async with serving(first) as port_a, serving(second) as port_b:
        scraper = EngineMetricsScraper(
            [(a, f"http://127.0.0.1:{port_a}/metrics"),
             (b, f"http://localhost:{port_b}/metrics?x=1")], interval_s=0.02)
        scraper.start()
        try:
            await until(lambda: len(first.paths) >= 5 and len(second.paths) >= 5)
        finally:
            await scraper.stop()
    assert numbers(a) == (5.0, 4.0, 0.5)
    assert numbers(b) == (1.0, 0.0, 0.0)
    assert set(first.paths) == {"/metrics"} and set(second.paths) == {"/metrics?x=1"}
    assert (first.connections, second.connections) == (1, 1)


async def test_an_error_answer_or_an_unreachable_engine_zeroes_the_numbers() -> None:
    engine = Engine()
    d = deployment("a")
    async with serving(engine) as port:
        scraper = EngineMetricsScraper([(d, f"http://127.0.0.1:{port}/metrics")],
                                       interval_s=0.02)
        scraper.start()
        try:
            await until(lambda: numbers(d) == (5.0, 4.0, 0.5))
            engine.status = 500
            await until(lambda: numbers(d) == (0.0, 0.0, 0.0))
            engine.status = 200
            await until(lambda: numbers(d) == (5.0, 4.0, 0.5))
        finally:
            await scraper.stop()
    # The engine is gone now: nothing listens on its port.
    scraper = EngineMetricsScraper([(d, f"http://127.0.0.1:{port}/metrics")], interval_s=0.02)
    scraper.start()
    try:
        await until(lambda: numbers(d) == (0.0, 0.0, 0.0))
    finally:
        await scraper.stop()


async def test_a_stalled_engine_times_out_and_zeroes_the_numbers() -> None:
    engine = Engine()
    d = deployment("a")
    async with serving(engine) as port:
        scraper = EngineMetricsScraper([(d, f"http://127.0.0.1:{port}/metrics")],
                                       interval_s=0.02)
        scraper.start()
        try:
            await until(lambda: numbers(d) == (5.0, 4.0, 0.5))
            engine.stall = True
            # The timeout is max(0.5 s, interval): the stalled scrape gives up after 0.5 s.
            await until(lambda: numbers(d) == (0.0, 0.0, 0.0), timeout_s=3.0)
            engine.stall = False
            await until(lambda: numbers(d) == (5.0, 4.0, 0.5), timeout_s=3.0)
        finally:
            await scraper.stop()
    assert engine.connections >= 2  # the stalled connection was dropped, not reused


def test_a_url_that_is_not_http_is_refused_at_start_up() -> None:
    with pytest.raises(ValueError, match="not an absolute http"):
        EngineMetricsScraper([(deployment("a"), "unix:///tmp/metrics")], interval_s=1.0)
