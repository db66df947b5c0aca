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
#: A scrape (connect, request, whole body) gets at most one interval, and never less than this.
_MIN_TIMEOUT_S = 0.5


def parse_engine_metrics(text: str) -> tuple[float, float, float]:
    """(running, waiting, kv usage 0-1) summed over label sets (max for usage)."""
    running = waiting = usage = 0.0
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
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
    return running, waiting, usage


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
        stats.engine_running, stats.engine_waiting, stats.engine_kv_usage = (
            parse_engine_metrics(text)
        )


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
