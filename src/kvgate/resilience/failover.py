"""The dispatch stage: route each attempt, call the provider, fail over on retryable errors.

State changes (in-flight counts, breaker records) happen synchronously around each awaited
provider call, with the decrement in ``finally``, so errors, timeouts and client disconnects
(task cancellation) leave every counter where it started.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kvgate.core.call import Call, Completion, Outcome, StreamingCompletion
from kvgate.core.deployment import Deployment
from kvgate.core.provider import UpstreamCall
from kvgate.errors import GatewayError
from kvgate.observability.metrics import Metrics
from kvgate.providers.errors import UpstreamError, UpstreamServerError, UpstreamTimeout
from kvgate.resilience.accounting import record_usage, update_latency, upstream_body
from kvgate.resilience.breaker import BreakerBoard
from kvgate.resilience.stream_relay import StreamRelay
from kvgate.routing.base import RoutingStrategy

logger = logging.getLogger("kvgate.failover")

@dataclass(frozen=True, slots=True)
class ModelRoute:
    """A logical model: its deployments and how to choose among them."""

    name: str
    deployments: Sequence[Deployment]
    strategy: RoutingStrategy
    max_attempts: int
    #: The strategy's ``prepare`` when its registry entry says it has real work there; None
    #: otherwise, so the hot path never awaits a no-op.
    prepare: Callable[[Call], Awaitable[None]] | None = None


class Failover:
    """Implements :class:`~kvgate.core.call.Stage` as the last stage of the journey."""

    def __init__(
        self,
        routes: dict[str, ModelRoute],
        breakers: BreakerBoard,
        metrics: Metrics,
        *,
        request_timeout_s: float,
    ) -> None:
        self._routes = routes
        self._breakers = breakers
        self._metrics = metrics
        self._request_timeout_s = request_timeout_s

    async def __call__(self, call: Call) -> Outcome:
        route = self._routes[call.model]
        if route.prepare is not None:
            await route.prepare(call)
        if call.stream:
            return await self._open_stream(call, route)
        return await self._complete(call, route)

    def describe(self) -> dict[str, Any]:
        return {"models": sorted(self._routes)}

    def next_deployment(
        self, call: Call, route: ModelRoute, tried: set[Deployment]
    ) -> Deployment | None:
        """Ask the strategy for the next untried deployment whose circuit lets it through."""
        candidates = [
            d for d in route.deployments if d not in tried and self._breakers.allows(d)
        ]
        if not candidates:
            return None
        decision = route.strategy.choose(call, candidates)
        call.route = decision.explanation
        outcome = decision.explanation.get("outcome")
        if outcome is not None:
            self._metrics.routing_decisions_for(
                route.name, decision.deployment.id, outcome
            ).inc()
        route.strategy.on_dispatched(call, decision.deployment)
        self._breakers.on_dispatched(decision.deployment)
        return decision.deployment

    def observe_overhead(self, call: Call, dispatched_s: float) -> None:
        """The gateway's own time before the first upstream call: parse, auth, limits, cache
        lookup, routing."""
        self._metrics.overhead_seconds.observe(dispatched_s - call.received_s)

    def _record_attempt(
        self, call: Call, route: ModelRoute, deployment: Deployment, error: UpstreamError | None
    ) -> None:
        if error is None:
            self._breakers.record_success(deployment)
            outcome = "ok"
            logger.debug(
                "request %s: attempt at %s for %s succeeded", call.request_id, deployment.id,
                route.name,
            )
        else:
            deployment.stats.failures_total += 1
            call.failed_attempts += 1
            if error.retryable:
                self._breakers.record_failure(deployment)
            else:
                # A 4xx says the request is bad, not the deployment: it answered, so for the
                # breaker it is alive (this also settles a half-open probe at once).
                self._breakers.record_success(deployment)
            outcome = "retryable_error" if error.retryable else "fatal_error"
            logger.warning(
                "request %s: attempt at %s for %s failed (%s): %s",
                call.request_id, deployment.id, route.name, type(error).__name__, error.message,
            )
        self._metrics.attempts_for(route.name, deployment.id, outcome).inc()

    def exhausted(
        self, route: ModelRoute, tried: set[Deployment], last: UpstreamError | None
    ) -> Exception:
        """The error to answer with once no attempt is left."""
        if last is not None:
            return last
        if not tried:
            retry_after = max(1, round(self._breakers.retry_after_s(list(route.deployments))))
            return GatewayError(
                503,
                f"no healthy deployment for model {route.name!r}: all circuits are open",
                error_type="service_unavailable",
                code="no_healthy_deployment",
                headers={"retry-after": str(retry_after)},
            )
        return UpstreamServerError(f"all deployments of {route.name!r} failed")

    async def _complete(self, call: Call, route: ModelRoute) -> Completion:
        deadline_s = call.received_s + self._request_timeout_s
        tried: set[Deployment] = set()
        last_error: UpstreamError | None = None
        deadline_passed = False
        for _ in range(route.max_attempts):
            remaining_s = deadline_s - time.perf_counter()
            if remaining_s <= 0:
                # Checked before choosing: the deadline is the request's, so no deployment is
                # charged with a failure for it.
                last_error = UpstreamTimeout(
                    f"request deadline of {self._request_timeout_s}s passed"
                )
                break
            deployment = self.next_deployment(call, route, tried)
            if deployment is None:
                break
            tried.add(deployment)
            stats = deployment.stats
            stats.in_flight += 1
            stats.requests_total += 1
            started_s = time.perf_counter()
            if len(tried) == 1:
                self.observe_overhead(call, started_s)
            try:
                async with asyncio.timeout(remaining_s):
                    attempt = UpstreamCall(
                        call.endpoint, upstream_body(call, deployment), call.request_id
                    )
                    body = await deployment.provider.complete(attempt)
            except TimeoutError:
                last_error = UpstreamTimeout(
                    f"request deadline of {self._request_timeout_s}s passed at {deployment.id}"
                )
                # NOTE: the loop's timer may fire a hair before perf_counter says the deadline
                # passed; without this, a last sliver of time went to the next deployment.
                deadline_passed = True
            except UpstreamError as error:
                last_error = error
            else:
                self._record_attempt(call, route, deployment, None)
                if len(tried) > 1:
                    logger.info(
                        "request %s for %s served by %s at attempt %d",
                        call.request_id, route.name, deployment.id, len(tried),
                    )
                elapsed_s = time.perf_counter() - started_s
                usage = body.get("usage")
                completion_tokens = int(usage.get("completion_tokens") or 0) if isinstance(
                    usage, dict
                ) else 0
                update_latency(
                    deployment, ttft_s=None,
                    ms_per_token=elapsed_s * 1000 / max(1, completion_tokens),
                )
                cost = record_usage(self._metrics, call, route.name, deployment, usage)
                return Completion(body, deployment, "miss", cost, deployment.upstream_model)
            finally:
                stats.in_flight -= 1
            self._record_attempt(call, route, deployment, last_error)
            if deadline_passed or not last_error.retryable:
                break
        raise self.exhausted(route, tried, last_error)

    async def _open_stream(self, call: Call, route: ModelRoute) -> StreamingCompletion:
        relay = StreamRelay(self, call, route, self._metrics)
        await relay.start()
        deployment = relay.deployment
        return StreamingCompletion(
            relay, deployment, "miss", deployment.upstream_model if deployment else ""
        )

    @property
    def request_timeout_s(self) -> float:
        return self._request_timeout_s

    def record_attempt(
        self, call: Call, route: ModelRoute, deployment: Deployment, error: UpstreamError | None
    ) -> None:
        self._record_attempt(call, route, deployment, error)
