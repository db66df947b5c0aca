"""Active health checks: bring an ejected deployment back as soon as its upstream answers.

One background task per gateway, started and stopped by the app's lifespan. Each round probes,
concurrently, the providers behind deployments whose circuit is not closed, once per provider
however many deployments share it. A pass ends the cooldown (the circuit goes half-open and
the next request is its probe); a failure changes nothing (see ``record_health``).

NOTE: closed circuits are not probed. Real traffic already tells the breaker about them, and
polling every healthy upstream would cost each of them a request per interval per gateway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from kvgate.core.deployment import Deployment
from kvgate.core.provider import Provider
from kvgate.resilience.breaker import BreakerBoard

logger = logging.getLogger("kvgate.health")


class HealthChecker:
    def __init__(
        self,
        deployments: Sequence[Deployment],
        breakers: BreakerBoard,
        *,
        interval_s: float,
        timeout_s: float,
    ) -> None:
        self._breakers = breakers
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        #: Deployments grouped by the provider (one upstream) they share, built once.
        self._by_provider: dict[str, tuple[Provider, list[Deployment]]] = {}
        for deployment in deployments:
            entry = self._by_provider.setdefault(
                deployment.provider_name, (deployment.provider, [])
            )
            entry[1].append(deployment)
        self._task: asyncio.Task[None] | None = None
        self.rounds_completed = 0

    def start(self) -> None:
        """Start the background loop; call from inside the running event loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="kvgate-health-checks")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            # Ours, unless stop() itself is being cancelled: then let that through.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise

    async def check_once(self) -> None:
        """Probe every provider with a non-closed deployment, and report the results."""
        due = [
            (name, provider, [d for d in group if self._breakers.state_code(d) != 0])
            for name, (provider, group) in self._by_provider.items()
        ]
        due = [entry for entry in due if entry[2]]
        if not due:
            return
        results = await asyncio.gather(*(self._probe(name, provider) for name, provider, _ in due))
        for (_, _, deployments), healthy in zip(due, results, strict=True):
            for deployment in deployments:
                self._breakers.record_health(deployment, healthy)

    async def _probe(self, name: str, provider: Provider) -> bool:
        try:
            async with asyncio.timeout(self._timeout_s):
                healthy = await provider.check_health()
        except TimeoutError:
            healthy = False
        logger.debug("health check of %s: %s", name, "pass" if healthy else "fail")
        return healthy

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.check_once()
            except Exception:
                # NOTE: providers report failures as False; anything raised here is a bug, and
                # it must not end the loop, or ejected deployments would wait out full
                # cooldowns from then on without anyone noticing.
                logger.exception("health check round failed")
            self.rounds_completed += 1
