"""The attempt loop's accounting: every attempt's in-flight count is released exactly once and
its outcome recorded (or not) on every path — answer, error, deadline, cancel, client gone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import replace
from typing import Any

import pytest

from kvgate.config.schema import BreakerSettings, PrefixRoutingSettings
from kvgate.core.call import Call, Completion, StreamingCompletion
from kvgate.core.deployment import Deployment, EngineUsage
from kvgate.core.provider import ChunkBatch, JSONObject, UpstreamCall
from kvgate.errors import GatewayError
from kvgate.observability.metrics import Metrics
from kvgate.providers.errors import (
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamServerError,
    UpstreamTimeout,
)
from kvgate.resilience.accounting import engine_usage
from kvgate.resilience.attempts import AttemptLoop, Dispatch, ModelRoute
from kvgate.resilience.breaker import CircuitBreakerBoard
from kvgate.resilience.failover import Failover
from kvgate.routing.affinity import MemoryAffinityIndex
from kvgate.routing.prefix_kv_aware import PrefixKVAware
from kvgate.routing.round_robin import RoundRobin
from tests.routing.factories import deployment, routing


class Controlled:
    """A provider whose every call does what the test says: answer, raise, or wait."""

    def __init__(self, *, error: UpstreamError | None = None, wait: bool = False,
                 cached_tokens: int | None = None) -> None:
        self.error = error
        self.wait = wait
        #: Reported as ``usage.prompt_tokens_details.cached_tokens`` (of 4 prompt tokens),
        #: and streams end with a usage chunk.
        self.cached_tokens = cached_tokens
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.calls = 0
        self.streams_closed = 0

    async def complete(self, call: UpstreamCall) -> JSONObject:
        self.calls += 1
        self.entered.set()
        if self.wait:
            await self.release.wait()
        if self.error is not None:
            raise self.error
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                             "finish_reason": "stop"}],
                "usage": self._usage(1) if self.cached_tokens is not None
                else {"prompt_tokens": 3, "completion_tokens": 1}}

    def _usage(self, completion_tokens: int) -> JSONObject:
        return {"prompt_tokens": 4, "completion_tokens": completion_tokens,
                "total_tokens": 4 + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}

    def stream(self, call: UpstreamCall) -> aclosing[AsyncGenerator[ChunkBatch, None]]:
        return aclosing(self._batches())

    async def _batches(self) -> AsyncGenerator[ChunkBatch, None]:
        self.calls += 1
        try:
            if self.error is not None:
                raise self.error
            for text in ("a", "b", "c"):
                yield [{"id": "x", "choices": [{"index": 0, "delta": {"content": text},
                                                "finish_reason": None}]}]
                self.entered.set()
                if self.wait:
                    await self.release.wait()
            yield [{"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
            if self.cached_tokens is not None:
                yield [{"id": "x", "choices": [], "usage": self._usage(3)}]
        finally:
            self.streams_closed += 1

    async def check_health(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


def on(provider: Controlled, name: str) -> Deployment:
    return replace(deployment(name), provider=provider, provider_name=name)


def failover_for(*deployments: Deployment, max_attempts: int = 3, timeout_s: float = 30.0,
                 breakers: CircuitBreakerBoard | None = None) -> Failover:
    route = ModelRoute("m", list(deployments), RoundRobin(deployments, routing()), max_attempts)
    return Failover({"m": route}, breakers or CircuitBreakerBoard(), Metrics(),
                    request_timeout_s=timeout_s)


def call(*, stream: bool = False) -> Call:
    return Call("r", "chat", time.perf_counter(), model="m", stream=stream,
                body={"messages": [{"role": "user", "content": "hi"}]})


def in_flight(*deployments: Deployment) -> list[int]:
    return [d.stats.in_flight for d in deployments]


async def test_an_answer_releases_its_attempt_and_records_success() -> None:
    a = on(Controlled(), "a")
    outcome = await failover_for(a)(call())
    assert isinstance(outcome, Completion) and outcome.deployment is a
    assert in_flight(a) == [0]
    assert a.stats.requests_total == 1 and a.stats.failures_total == 0


async def test_a_retryable_error_fails_over_and_each_attempt_is_released() -> None:
    a, b = on(Controlled(error=UpstreamServerError("boom")), "a"), on(Controlled(), "b")
    request = call()
    outcome = await failover_for(a, b)(request)
    assert isinstance(outcome, Completion) and outcome.deployment is b
    assert in_flight(a, b) == [0, 0]
    assert a.stats.failures_total == 1 and request.failed_attempts == 1


async def test_a_fatal_error_ends_the_loop_without_trying_elsewhere() -> None:
    rejected = UpstreamRejected("bad request", upstream_status=400)
    a, b = on(Controlled(error=rejected), "a"), on(Controlled(), "b")
    with pytest.raises(UpstreamRejected):
        await failover_for(a, b)(call())
    assert b.provider.calls == 0  # type: ignore[attr-defined]
    assert in_flight(a, b) == [0, 0]


async def test_max_attempts_bounds_the_loop_and_the_last_error_is_answered() -> None:
    providers = [Controlled(error=UpstreamRateLimited("slow down")) for _ in range(3)]
    deployments = [on(p, f"d{i}") for i, p in enumerate(providers)]
    with pytest.raises(UpstreamRateLimited):
        await failover_for(*deployments, max_attempts=2)(call())
    assert sum(p.calls for p in providers) == 2
    assert in_flight(*deployments) == [0, 0, 0]


async def test_the_deadline_cuts_an_attempt_and_nothing_follows() -> None:
    slow, spare = Controlled(wait=True), Controlled()
    a, b = on(slow, "a"), on(spare, "b")
    with pytest.raises(UpstreamTimeout):
        await failover_for(a, b, timeout_s=0.05)(call())
    assert spare.calls == 0
    assert in_flight(a, b) == [0, 0]


async def test_a_cancelled_blocking_call_releases_without_blaming_the_deployment() -> None:
    slow = Controlled(wait=True)
    a = on(slow, "a")
    breakers = CircuitBreakerBoard()
    breakers.watch(a, BreakerSettings(consecutive_failures=1))
    task = asyncio.create_task(failover_for(a, breakers=breakers)(call()))
    await asyncio.wait_for(slow.entered.wait(), 5)
    assert in_flight(a) == [1]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert in_flight(a) == [0]
    assert a.stats.failures_total == 0 and breakers.allows(a)


async def test_a_client_leaving_mid_stream_releases_and_closes_the_upstream() -> None:
    upstream = Controlled(wait=True)
    a = on(upstream, "a")
    outcome = await failover_for(a)(call(stream=True))
    assert isinstance(outcome, StreamingCompletion)
    (first,) = await anext(outcome.chunks)
    assert first["choices"][0]["delta"]["content"] == "a"
    assert in_flight(a) == [1]
    await outcome.chunks.aclose()
    assert in_flight(a) == [0]
    assert upstream.streams_closed == 1
    assert a.stats.failures_total == 0
    await outcome.chunks.aclose()  # closing twice releases nothing twice
    assert in_flight(a) == [0]


async def test_a_finished_stream_releases_once_and_records_success() -> None:
    upstream = Controlled()
    a = on(upstream, "a")
    outcome = await failover_for(a)(call(stream=True))
    assert isinstance(outcome, StreamingCompletion)
    texts = [c["choices"][0]["delta"].get("content")
             async for batch in outcome.chunks for c in batch]
    await outcome.chunks.aclose()
    assert texts == ["a", "b", "c", None]
    assert in_flight(a) == [0] and upstream.streams_closed == 1


async def test_a_stream_that_fails_to_open_fails_over() -> None:
    broken, spare = Controlled(error=UpstreamServerError("down")), Controlled()
    a, b = on(broken, "a"), on(spare, "b")
    outcome = await failover_for(a, b)(call(stream=True))
    assert isinstance(outcome, StreamingCompletion) and outcome.deployment is b
    await outcome.chunks.aclose()
    assert in_flight(a, b) == [0, 0]
    assert broken.streams_closed == 1 and a.stats.failures_total == 1


async def test_all_circuits_open_is_a_503_with_retry_after() -> None:
    a = on(Controlled(), "a")
    breakers = CircuitBreakerBoard()
    breakers.watch(a, BreakerSettings(consecutive_failures=1, cooldown_s=30))
    breakers.record_failure(a)
    loop = AttemptLoop(Dispatch(breakers, Metrics(), 30.0), call(),
                       ModelRoute("m", [a], RoundRobin([a], routing()), 3))
    assert loop.next() is None
    error = loop.exhausted()
    assert isinstance(error, GatewayError) and error.status == 503
    assert int(error.headers["retry-after"]) >= 1


async def test_excluded_deployments_are_never_chosen() -> None:
    a, b = on(Controlled(), "a"), on(Controlled(), "b")
    loop = AttemptLoop(Dispatch(CircuitBreakerBoard(), Metrics(), 30.0), call(),
                       ModelRoute("m", [a, b], RoundRobin([a, b], routing()), 3))
    loop.exclude([a])
    attempt = loop.next()
    assert attempt is not None and attempt.deployment is b
    async with attempt:
        assert in_flight(a, b) == [0, 1]
    assert in_flight(a, b) == [0, 0]
    assert loop.next() is None


# -- a strategy that follows attempts: its ledger is released on every path -----------------


def kv_failover(*deployments: Deployment, timeout_s: float = 30.0) -> tuple[Failover, Any]:
    strategy = PrefixKVAware(deployments, PrefixRoutingSettings(block_chars=64),
                             MemoryAffinityIndex(max_blocks_per_deployment=10_000, ttl_s=300))
    route = ModelRoute("m", list(deployments), strategy, 3, prepare=strategy.prepare,
                       observes_progress=True)
    return Failover({"m": route}, CircuitBreakerBoard(), Metrics(),
                    request_timeout_s=timeout_s), strategy


def ledger_is_empty(strategy: Any) -> bool:
    return all(figures["waiting_requests"] == 0 and figures["queued_prefill_tokens"] == 0
               for figures in strategy.describe().values())


async def test_the_strategy_hears_first_token_and_release_of_a_finished_stream() -> None:
    a = on(Controlled(), "a")
    failover, strategy = kv_failover(a)
    outcome = await failover(call(stream=True))
    assert isinstance(outcome, StreamingCompletion)
    assert strategy.describe()["a"]["waiting_requests"] == 1
    await anext(outcome.chunks)
    assert strategy.describe()["a"]["waiting_requests"] == 0  # first token seen: prefilled
    _ = [batch async for batch in outcome.chunks]
    await outcome.chunks.aclose()
    figures = strategy.describe()["a"]
    assert figures["ttft_samples"] == 1 and figures["step_samples"] == 1
    assert ledger_is_empty(strategy)


async def test_the_strategy_ledger_is_released_on_failover_cancel_and_client_gone() -> None:
    broken, spare = Controlled(error=UpstreamServerError("down")), Controlled()
    a, b = on(broken, "a"), on(spare, "b")
    failover, strategy = kv_failover(a, b)
    assert isinstance(await failover(call()), Completion)  # a failed, b answered
    assert ledger_is_empty(strategy)
    assert strategy.describe()["b"]["ttft_samples"] == 1  # a blocking answer's estimate
    stuck = on(Controlled(wait=True), "stuck")
    failover, strategy = kv_failover(stuck)
    task = asyncio.create_task(failover(call()))
    await asyncio.wait_for(stuck.provider.entered.wait(), 5)  # type: ignore[attr-defined]
    assert strategy.describe()["stuck"]["waiting_requests"] == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ledger_is_empty(strategy)
    slow = on(Controlled(wait=True), "slow")
    failover, strategy = kv_failover(slow)
    outcome = await failover(call(stream=True))
    assert isinstance(outcome, StreamingCompletion)
    await anext(outcome.chunks)
    await outcome.chunks.aclose()  # the client left mid-answer
    assert ledger_is_empty(strategy) and in_flight(slow) == [0]


class Recording(RoundRobin):
    """Round robin that keeps what each release told it."""

    def __init__(self, deployments: list[Deployment]) -> None:
        super().__init__(deployments, routing())
        self.releases: list[tuple[str, int, float | None]] = []

    def on_released(self, call: Call, deployment: Deployment, output_tokens: int,
                    usage: EngineUsage | None = None) -> None:
        assert usage is None or usage.prompt_tokens == 4  # as Controlled reports it
        self.releases.append((deployment.id, output_tokens,
                              None if usage is None else usage.cached_share))


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("cached_tokens", "share"), [(3, 0.75), (0, 0.0), (None, None)])
async def test_the_strategy_hears_the_share_of_the_prompt_the_engine_had_cached(
        stream: bool, cached_tokens: int | None, share: float | None) -> None:
    a = on(Controlled(cached_tokens=cached_tokens), "a")
    strategy = Recording([a])
    route = ModelRoute("m", [a], strategy, 3, observes_progress=True)
    failover = Failover({"m": route}, CircuitBreakerBoard(), Metrics(), request_timeout_s=30)
    outcome = await failover(call(stream=stream))
    if isinstance(outcome, StreamingCompletion):
        _ = [batch async for batch in outcome.chunks]
        await outcome.chunks.aclose()
    assert strategy.releases == [("a", 1 if not stream else 3, share)]


async def test_a_failed_attempt_reports_no_cached_share() -> None:
    a, b = on(Controlled(error=UpstreamServerError("down"), cached_tokens=4), "a"), on(
        Controlled(cached_tokens=2), "b")
    strategy = Recording([a, b])
    route = ModelRoute("m", [a, b], strategy, 3, observes_progress=True)
    failover = Failover({"m": route}, CircuitBreakerBoard(), Metrics(), request_timeout_s=30)
    assert isinstance(await failover(call()), Completion)
    assert strategy.releases == [("a", 0, None), ("b", 1, 0.5)]


@pytest.mark.parametrize(("usage", "read"), [
    ({"prompt_tokens": 8, "prompt_tokens_details": {"cached_tokens": 2}}, (8, 2, 0.25)),
    ({"prompt_tokens": 8, "prompt_tokens_details": {"cached_tokens": 9}}, (8, 9, 1.0)),
    ({"prompt_tokens": 8}, None),  # vLLM without --enable-prompt-tokens-details
    ({"prompt_tokens": 8, "prompt_tokens_details": None}, None),
    ({"prompt_tokens": 0, "prompt_tokens_details": {"cached_tokens": 0}}, None),
    ({"prompt_tokens": 8, "prompt_tokens_details": {"cached_tokens": -1}}, None),
    ({"prompt_tokens": 8, "prompt_tokens_details": {"cached_tokens": True}}, None),
    ({"prompt_tokens": True, "prompt_tokens_details": {"cached_tokens": 0}}, None),
    ({"prompt_tokens": "8", "prompt_tokens_details": {"cached_tokens": 2}}, None),
    (None, None),
])
def test_the_engine_usage_is_read_only_from_a_well_formed_usage(
        usage: object, read: tuple[int, int, float] | None) -> None:
    got = engine_usage(usage)
    if read is None:
        assert got is None
    else:
        assert got is not None
        assert (got.prompt_tokens, got.cached_tokens, got.cached_share) == read
