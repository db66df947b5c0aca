"""The dispatch stage: route each attempt, call the provider, fail over on retryable errors.

The attempts themselves (deadline, tried set, breaker, in-flight count) are the attempt loop's
(:mod:`kvgate.resilience.attempts`), shared with the stream relay.
"""

from __future__ import annotations

import time
from typing import Any

from kvgate.core.call import Call, Completion, Outcome, StreamingCompletion
from kvgate.observability.metrics import Metrics
from kvgate.providers.errors import UpstreamError, UpstreamTimeout
from kvgate.resilience.accounting import (
    engine_usage,
    record_usage,
    update_latency,
    upstream_body,
)
from kvgate.resilience.attempts import AttemptLoop, Dispatch, ModelRoute
from kvgate.resilience.breaker import BreakerBoard
from kvgate.resilience.deadline import Deadline
from kvgate.resilience.stream_relay import StreamRelay

__all__ = ["Failover", "ModelRoute"]


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
        self._metrics = metrics
        self._dispatch = Dispatch(breakers, metrics, request_timeout_s)

    def describe(self) -> dict[str, Any]:
        return {"models": sorted(self._routes)}

    async def __call__(self, call: Call) -> Outcome:
        route = self._routes[call.model]
        if route.prepare is not None:
            await route.prepare(call)
        attempts = AttemptLoop(self._dispatch, call, route)
        if call.stream:
            relay = StreamRelay(attempts, self._metrics)
            await relay.start()
            deployment = relay.deployment
            return StreamingCompletion(
                relay, deployment, "miss", deployment.upstream_model if deployment else ""
            )
        return await self._complete(call, attempts)

    async def _complete(self, call: Call, attempts: AttemptLoop) -> Completion:
        timeout_s = self._dispatch.request_timeout_s
        while (attempt := attempts.next()) is not None:
            deployment = attempt.deployment
            async with attempt:
                try:
                    with Deadline(attempt.remaining_s):
                        body = await deployment.provider.complete(
                            attempt.upstream_call(upstream_body(call, deployment)))
                except TimeoutError:
                    attempt.failed(UpstreamTimeout(
                        f"request deadline of {timeout_s}s passed at {deployment.id}"
                    ), deadline=True)
                    continue
                except UpstreamError as error:
                    attempt.failed(error)
                    continue
                attempt.succeeded()
                elapsed_s = time.perf_counter() - attempt.started_s
                usage = body.get("usage")
                completion_tokens = int(usage.get("completion_tokens") or 0) if isinstance(
                    usage, dict
                ) else 0
                attempt.output_tokens = completion_tokens
                attempt.engine_usage = engine_usage(usage)
                update_latency(
                    deployment, ttft_s=None,
                    ms_per_token=elapsed_s * 1000 / max(1, completion_tokens),
                )
                cost = record_usage(self._metrics, call, attempts.route.name, deployment, usage)
                return Completion(body, deployment, "miss", cost, deployment.upstream_model)
        raise attempts.exhausted()
