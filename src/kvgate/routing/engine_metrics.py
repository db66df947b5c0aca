"""Scrape each vLLM-style engine's /metrics so load-aware routing sees every gateway's load.

One background task polls every ``interval_s``; routing reads the numbers it leaves on
``DeploymentStats`` and never waits for a scrape. A failed scrape zeroes the engine numbers,
so routing falls back to the gateway's own in-flight counts instead of trusting stale ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import aiohttp

from kvgate.core.deployment import Deployment

logger = logging.getLogger("kvgate.engine_metrics")

_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"
_KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")


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


class EngineMetricsScraper:
    def __init__(self, targets: Sequence[tuple[Deployment, str]], *, interval_s: float) -> None:
        self._targets = list(targets)
        self._interval_s = interval_s
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
        timeout = aiohttp.ClientTimeout(total=max(0.5, self._interval_s))
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                await asyncio.gather(*(self._scrape(session, d, url) for d, url in self._targets))
                await asyncio.sleep(self._interval_s)

    async def _scrape(self, session: aiohttp.ClientSession, deployment: Deployment,
                      url: str) -> None:
        stats = deployment.stats
        try:
            async with session.get(url) as response:
                text = await response.text() if response.status == 200 else ""
        except (TimeoutError, aiohttp.ClientError) as exc:
            logger.debug("metrics scrape of %s failed: %s", url, exc)
            text = ""
        stats.engine_running, stats.engine_waiting, stats.engine_kv_usage = (
            parse_engine_metrics(text)
        )
