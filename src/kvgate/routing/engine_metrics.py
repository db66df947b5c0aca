"""Scrape each vLLM-style engine's /metrics so load-aware routing sees every gateway's load.

One background task polls every ``interval_s``; routing reads the numbers it leaves on
``DeploymentStats`` and never waits for a scrape. A failed scrape zeroes the engine numbers,
so routing falls back to the gateway's own in-flight counts instead of trusting stale ones.

The scrapes go through the gateway's own keep-alive HTTP client (``providers.http_pool``), so
each engine costs one reused connection, and serving needs no second HTTP client library.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from kvgate.core.deployment import Deployment
from kvgate.providers.http_pool import ConnectionPool, HTTPClientError, Origin

logger = logging.getLogger("kvgate.engine_metrics")

_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"
_KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
#: An info gauge whose labels carry the engine's cache config (num_gpu_blocks, block_size).
_CACHE_CONFIG = "vllm:cache_config_info"
#: A scrape (connect, request, whole body) gets at most one interval, and never less than this.
_MIN_TIMEOUT_S = 0.5


@dataclass(frozen=True, slots=True)
class EngineFigures:
    """What one scrape says: requests running and waiting (summed over label sets), KV usage
    0-1 (the max), and the KV cache in tokens (0 when the engine does not publish it)."""

    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float = 0.0
    kv_capacity_tokens: float = 0.0


def parse_engine_metrics(text: str) -> EngineFigures:
    running = waiting = usage = capacity = 0.0
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name == _CACHE_CONFIG:
            capacity = max(capacity, _cache_tokens(line))
            continue
        try:
            value = float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
        if name == _RUNNING:
            running += value
        elif name == _WAITING:
            waiting += value
        elif name in _KV_USAGE:
            usage = max(usage, value)
    return EngineFigures(running, waiting, usage, capacity)


def _cache_tokens(line: str) -> float:
    """``num_gpu_blocks x block_size`` from a ``vllm:cache_config_info{...}`` line; 0 when a
    label is missing or not a number (vLLM writes "None" before the cache is profiled)."""
    labels: dict[str, str] = {}
    for part in line.partition("{")[2].rpartition("}")[0].split(","):
        key, _, value = part.partition("=")
        labels[key.strip()] = value.strip().strip('"')
    try:
        return float(int(labels["num_gpu_blocks"]) * int(labels["block_size"]))
    except (KeyError, ValueError):
        return 0.0


@dataclass(frozen=True, slots=True)
class _Target:
    """One engine's metrics URL, with its GET request rendered once, at start-up."""

    deployment: Deployment
    url: str
    origin: Origin
    request: bytes

    @classmethod
    def of(cls, deployment: Deployment, url: str) -> _Target:
        origin, path = Origin.of(url)  # ValueError for a URL that is not absolute http(s)
        default_port = 443 if origin.scheme == "https" else 80
        host = origin.host if origin.port == default_port else f"{origin.host}:{origin.port}"
        request = f"GET {path} HTTP/1.1\r\nhost: {host}\r\naccept: text/plain\r\n\r\n".encode()
        return cls(deployment, url, origin, request)


class EngineMetricsScraper:
    def __init__(self, targets: Sequence[tuple[Deployment, str]], *, interval_s: float) -> None:
        self._targets = [_Target.of(deployment, url) for deployment, url in targets]
        self._interval_s = interval_s
        self._timeout_s = max(_MIN_TIMEOUT_S, interval_s)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._targets and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        pool = ConnectionPool(connect_timeout_s=self._timeout_s, read_timeout_s=self._timeout_s,
                              max_connections=len(self._targets))
        try:
            while True:
                await asyncio.gather(*(self._scrape(pool, t) for t in self._targets))
                await asyncio.sleep(self._interval_s)
        finally:
            pool.aclose()

    async def _scrape(self, pool: ConnectionPool, target: _Target) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                text = await _get_text(pool, target)
        except (TimeoutError, HTTPClientError) as exc:
            logger.debug("metrics scrape of %s failed: %s", target.url, exc)
            text = ""
        stats = target.deployment.stats
        figures = parse_engine_metrics(text)
        stats.engine_running, stats.engine_waiting = figures.running, figures.waiting
        stats.engine_kv_usage = figures.kv_usage
        if figures.kv_capacity_tokens:  # a failed scrape does not shrink the cache
            stats.engine_kv_capacity_tokens = figures.kv_capacity_tokens


async def _get_text(pool: ConnectionPool, target: _Target) -> str:
    """The body of a 200 answer as text; "" for any other status."""
    exchange = await pool.exchange(target.origin, target.request)
    complete = False
    try:
        body = await exchange.read()
        complete = True
    finally:
        # A body read to its end keeps the connection for the next scrape; a cut one drops it.
        exchange.close(complete=complete)
    return body.decode("utf-8", "replace") if exchange.status == 200 else ""
