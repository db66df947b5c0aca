"""One attempt loop for blocking and streamed calls: the deadline, the tried set, the breaker
and the in-flight count, in one place.

A call's tries at its model's deployments are an :class:`AttemptLoop`; each try is an
:class:`Attempt`, an async context manager. Entering an attempt counts it in flight at its
deployment; :meth:`Attempt.aclose` (also run on leaving the ``async with``) releases that count
exactly once, whatever the ending — an answer, an upstream error, the deadline, a cancelled
task, a client that left mid-stream — and records the outcome with the breaker and the metrics.
The release is synchronous and happens before any await, so a cancellation arriving while the
upstream stream is being closed cannot skip it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from kvgate.core.call import Call
from kvgate.core.deployment import Deployment, EngineUsage
from kvgate.core.provider import ChunkBatch, JSONObject, UpstreamCall
from kvgate.errors import GatewayError
from kvgate.observability.metrics import Metrics
from kvgate.providers.errors import UpstreamError, UpstreamServerError, UpstreamTimeout
from kvgate.resilience.breaker import BreakerBoard
from kvgate.routing.base import RoutingStrategy

logger = logging.getLogger("kvgate.failover")

#: How an attempt ended, as the breaker and the attempts metric see it. ``abandoned``: the
#: caller left (cancellation, client disconnect) before the upstream answered either way, so
#: the deployment is neither credited nor blamed.
AttemptOutcome = Literal["ok", "failed", "abandoned"]


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
    #: The strategy follows each attempt to its end (``on_first_token`` / ``on_released``).
    observes_progress: bool = False


@dataclass(frozen=True, slots=True)
class Dispatch:
    """What every attempt loop of a gateway shares: the breakers, the metrics, the deadline."""

    breakers: BreakerBoard
    metrics: Metrics
    request_timeout_s: float


class AttemptLoop:
    """The attempts of one call at one model, in order, until one answers or none is left.

    ``next()`` returns the next attempt, or None when the attempts are used up, the deadline
    has passed, the last error was not retryable, or no untried deployment's circuit admits
    traffic; then :meth:`exhausted` is the error to answer with.
    """

    __slots__ = ("_dispatch", "_stopped", "attempts", "call", "deadline_s", "last_error",
                 "route", "tried")

    def __init__(self, dispatch: Dispatch, call: Call, route: ModelRoute) -> None:
        self._dispatch = dispatch
        self.call = call
        self.route = route
        self.deadline_s = call.received_s + dispatch.request_timeout_s
        self.tried: set[Deployment] = set()
        self.attempts = 0
        self.last_error: UpstreamError | None = None
        self._stopped = False

    def exclude(self, deployments: Iterable[Deployment]) -> None:
        """Leave ``deployments`` out of every later attempt (e.g. those that cannot resume a
        stream), before the strategy ranks them or a half-open circuit lends them a probe."""
        self.tried.update(deployments)

    def next(self) -> Attempt | None:
        if self._stopped or self.attempts >= self.route.max_attempts:
            return None
        if self.deadline_s <= time.perf_counter():
            # Checked before choosing: the deadline is the request's, so no deployment is
            # charged with a failure for it.
            self.last_error = UpstreamTimeout(
                f"request deadline of {self._dispatch.request_timeout_s}s passed"
            )
            return None
        deployment = self._choose()
        if deployment is None:
            return None
        self.attempts += 1
        self.tried.add(deployment)
        return Attempt(self, deployment)

    def _choose(self) -> Deployment | None:
        """Ask the strategy for the next untried deployment whose circuit lets it through."""
        route, breakers = self.route, self._dispatch.breakers
        candidates = breakers.allowed(route.deployments)
        if self.tried:
            candidates = [d for d in candidates if d not in self.tried]
        if not candidates:
            return None
        decision = route.strategy.choose(self.call, candidates)
        self.call.route = decision.explanation
        outcome = decision.explanation.get("outcome")
        if outcome is not None:
            self._dispatch.metrics.routing_decisions_for(
                route.name, decision.deployment.id, outcome
            ).inc()
        route.strategy.on_dispatched(self.call, decision.deployment)
        breakers.on_dispatched(decision.deployment)
        return decision.deployment

    def exhausted(self) -> Exception:
        """The error to answer with once no attempt is left."""
        if self.last_error is not None:
            return self.last_error
        if not self.tried:
            route = self.route
            retry_after = max(1, round(self._dispatch.breakers.retry_after_s(
                list(route.deployments))))
            return GatewayError(
                503,
                f"no healthy deployment for model {route.name!r}: all circuits are open",
                error_type="service_unavailable",
                code="no_healthy_deployment",
                headers={"retry-after": str(retry_after)},
            )
        return UpstreamServerError(f"all deployments of {self.route.name!r} failed")

    def _record(self, deployment: Deployment, error: UpstreamError | None) -> None:
        dispatch, route, call = self._dispatch, self.route, self.call
        if error is None:
            dispatch.breakers.record_success(deployment)
            outcome = "ok"
            if self.attempts > 1:
                logger.info("request %s for %s served by %s at attempt %d",
                            call.request_id, route.name, deployment.id, self.attempts)
        else:
            deployment.stats.failures_total += 1
            call.failed_attempts += 1
            if error.retryable:
                dispatch.breakers.record_failure(deployment)
            else:
                # A 4xx says the request is bad, not the deployment: it answered, so for the
                # breaker it is alive (this also settles a half-open probe at once).
                dispatch.breakers.record_success(deployment)
                self._stopped = True
            outcome = "retryable_error" if error.retryable else "fatal_error"
            logger.warning(
                "request %s: attempt at %s for %s failed (%s): %s",
                call.request_id, deployment.id, route.name, type(error).__name__, error.message,
            )
        dispatch.metrics.attempts_for(route.name, deployment.id, outcome).inc()


class Attempt:
    """One try at one deployment; see the module docstring for its accounting contract.

    Call :meth:`succeeded` or :meth:`failed` once the upstream has answered either way; an
    attempt closed without either is ``abandoned``.
    """

    __slots__ = ("_closed", "_error", "_first_token_seen", "_loop", "_outcome", "_stream",
                 "deployment", "engine_usage", "output_tokens", "started_s")

    def __init__(self, loop: AttemptLoop, deployment: Deployment) -> None:
        self._loop = loop
        self.deployment = deployment
        self.started_s = 0.0
        self._outcome: AttemptOutcome = "abandoned"
        self._error: UpstreamError | None = None
        self._stream: AbstractAsyncContextManager[AsyncIterator[ChunkBatch]] | None = None
        self._closed = False
        self._first_token_seen = False
        #: Tokens this attempt produced, as far as the caller counted them (for the routing
        #: strategy's step timing when it follows attempts).
        self.output_tokens = 0
        #: The prompt's tokens and cached tokens as the engine reported them, once its usage
        #: came (None: it reported none), for a strategy that calibrates on them.
        self.engine_usage: EngineUsage | None = None

    async def __aenter__(self) -> Attempt:
        stats = self.deployment.stats
        stats.in_flight += 1
        stats.requests_total += 1
        self.started_s = time.perf_counter()
        loop = self._loop
        if loop.attempts == 1:
            # The gateway's own time before the first upstream call: parse, auth, limits,
            # cache lookup, routing.
            loop._dispatch.metrics.overhead_seconds.observe(self.started_s - loop.call.received_s)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    @property
    def remaining_s(self) -> float:
        """Time left before the request's deadline."""
        return max(0.0, self._loop.deadline_s - time.perf_counter())

    def upstream_call(self, body: JSONObject) -> UpstreamCall:
        call = self._loop.call
        return UpstreamCall(call.endpoint, body, call.request_id)

    async def open_stream(self, body: JSONObject) -> AsyncIterator[ChunkBatch]:
        """Open the provider's stream for this attempt; :meth:`aclose` closes it (which
        cancels the upstream request if it is still running)."""
        self._stream = self.deployment.provider.stream(self.upstream_call(body))
        return await self._stream.__aenter__()

    def succeeded(self) -> None:
        self._outcome = "ok"

    def first_token(self) -> None:
        """A stream's first token arrived from this attempt (its prefill is done)."""
        if not self._first_token_seen:
            self._first_token_seen = True
            route = self._loop.route
            if route.observes_progress:
                route.strategy.on_first_token(self._loop.call, self.deployment)

    def failed(self, error: UpstreamError, *, deadline: bool = False) -> None:
        """The upstream failed this attempt. ``deadline``: the request's deadline cut it, so no
        attempt follows (the loop's timer may fire a hair before ``perf_counter`` says the
        deadline passed; without this, a last sliver of time went to the next deployment)."""
        self._outcome = "failed"
        self._error = error
        self._loop.last_error = error
        if deadline:
            self._loop._stopped = True

    async def aclose(self) -> None:
        """Release the in-flight count and record the outcome (once), then close the stream."""
        if self._closed:
            return
        self._closed = True
        self.deployment.stats.in_flight -= 1
        route = self._loop.route
        if route.observes_progress:
            route.strategy.on_released(self._loop.call, self.deployment, self.output_tokens,
                                       self.engine_usage)
        if self._outcome == "ok":
            self._loop._record(self.deployment, None)
        elif self._outcome == "failed" and self._error is not None:
            self._loop._record(self.deployment, self._error)
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.__aexit__(None, None, None)
