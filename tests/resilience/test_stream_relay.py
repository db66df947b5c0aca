"""StreamRelay in process, against scripted upstreams: the edges real servers rarely hit; each
with the look at each chunk in C and in Python (:func:`kvgate.core.chunks.observe`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import replace
from typing import Any

import pytest

from kvgate.config.schema import BreakerSettings
from kvgate.core import chunks
from kvgate.core.call import Call, StreamingCompletion
from kvgate.core.deployment import Deployment
from kvgate.core.provider import ChunkBatch, JSONObject, UpstreamCall
from kvgate.observability.metrics import Metrics
from kvgate.providers.errors import UpstreamError, UpstreamRejected, UpstreamServerError
from kvgate.resilience import stream_relay
from kvgate.resilience.breaker import CircuitBreakerBoard
from kvgate.resilience.failover import Failover, ModelRoute
from kvgate.routing.round_robin import RoundRobin
from tests.routing.factories import deployment, routing

Step = JSONObject | UpstreamError | float  # a chunk, an error to raise, or a pause in seconds


@pytest.fixture(autouse=True, params=["c", "python"])
def observe(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.param == "python":
        monkeypatch.setattr(stream_relay, "observe", chunks.py_observe)


def role() -> JSONObject:
    return {"id": "x", "model": "m", "choices": [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}


def token(text: str, *, chunk_id: str = "x") -> JSONObject:
    return {"id": chunk_id, "model": "m", "choices": [
        {"index": 0, "delta": {"content": text}, "finish_reason": None}]}


def finish(reason: str = "stop") -> JSONObject:
    return {"id": "x", "model": "m", "choices": [
        {"index": 0, "delta": {}, "finish_reason": reason}]}


class Scripted:
    """A provider that plays one scripted stream per call and records what it was sent."""

    def __init__(self, *scripts: list[Step]) -> None:
        self.scripts = list(scripts)
        self.bodies: list[JSONObject] = []

    async def complete(self, call: UpstreamCall) -> JSONObject:
        raise NotImplementedError

    def stream(self, call: UpstreamCall) -> aclosing[AsyncGenerator[ChunkBatch, None]]:
        return aclosing(self._batches(call))

    async def _batches(self, call: UpstreamCall) -> AsyncGenerator[ChunkBatch, None]:
        """One chunk per batch: each scripted chunk arrives on its own."""
        self.bodies.append(call.body)
        for step in self.scripts.pop(0):
            if isinstance(step, UpstreamError):
                raise step
            if isinstance(step, float):
                await asyncio.sleep(step)
                continue
            yield [dict(step)]

    async def check_health(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


def on(provider: Scripted, name: str, *, resumes: bool = True) -> Deployment:
    return replace(deployment(name), provider=provider, provider_name=name,
                   resumes_streams=resumes)


def build(*deployments: Deployment, timeout_s: float = 30.0,
          breakers: CircuitBreakerBoard | None = None) -> tuple[Failover, ModelRoute]:
    route = ModelRoute("m", list(deployments), RoundRobin(deployments, routing()), 3)
    failover = Failover({"m": route}, breakers or CircuitBreakerBoard(), Metrics(),
                        request_timeout_s=timeout_s)
    return failover, route


def chat(**body: Any) -> Call:
    return Call(request_id="r", endpoint="chat", model="m", stream=True, include_usage=True,
                received_s=time.perf_counter(),
                body={"messages": [{"role": "user", "content": "hi"}], **body})


async def drain(outcome: StreamingCompletion) -> tuple[list[JSONObject], UpstreamError | None]:
    chunks: list[JSONObject] = []
    try:
        async for batch in outcome.chunks:
            chunks.extend(batch)
    except UpstreamError as error:
        return chunks, error
    finally:
        await outcome.chunks.aclose()
    return chunks, None


def text_of(chunks: list[JSONObject]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or ""
                   for c in chunks if c.get("choices"))


async def open_stream(failover: Failover, call: Call) -> StreamingCompletion:
    outcome = await failover(call)
    assert isinstance(outcome, StreamingCompletion)
    return outcome


async def test_a_cut_after_the_finish_reason_ends_the_stream_normally() -> None:
    cut = Scripted([role(), token("Hi"), token(" there"), finish(), UpstreamServerError("cut")])
    spare = Scripted()
    failover, _ = build(a := on(cut, "a"), b := on(spare, "b"))
    chunks, error = await drain(await open_stream(failover, chat()))
    assert error is None and text_of(chunks) == "Hi there"
    assert spare.bodies == []  # nothing left to continue
    assert a.stats.in_flight == b.stats.in_flight == 0
    assert a.stats.failures_total == 1  # the upstream still broke its protocol


async def test_resume_shortens_max_completion_tokens_and_keeps_one_identity() -> None:
    first = Scripted([role(), token("a"), token("b"), UpstreamServerError("cut")])
    second = Scripted([role(), token("c", chunk_id="other"), finish("length")])
    failover, _ = build(on(first, "a"), on(second, "b"))
    outcome = await open_stream(failover, chat(max_completion_tokens=5))
    chunks, error = await drain(outcome)
    assert error is None and text_of(chunks) == "abc"
    sent = second.bodies[0]
    assert sent["max_completion_tokens"] == 3
    assert sent["messages"][-1] == {"role": "assistant", "content": "ab"}
    assert {c["id"] for c in chunks} == {"x"}
    assert sum("role" in c["choices"][0]["delta"] for c in chunks) == 1


async def test_a_4xx_mid_stream_is_not_resumed() -> None:
    first = Scripted([role(), token("a"), UpstreamRejected("bad", upstream_status=400)])
    spare = Scripted()
    failover, _ = build(on(first, "a"), on(spare, "b"))
    chunks, error = await drain(await open_stream(failover, chat()))
    assert isinstance(error, UpstreamRejected) and text_of(chunks) == "a"
    assert spare.bodies == []


TOOL_CALL: JSONObject = {"id": "x", "model": "m", "choices": [{"index": 0, "delta": {
    "tool_calls": [{"index": 0, "function": {"name": "f"}}]}, "finish_reason": None}]}


@pytest.mark.parametrize("case", ["two choices", "tool call"])
async def test_answers_that_cannot_be_continued_are_not(case: str) -> None:
    cut: list[Step] = [role(), token("a"), UpstreamServerError("cut")]
    body: dict[str, Any] = {}
    if case == "two choices":
        body["n"] = 2
    else:
        cut.insert(1, TOOL_CALL)
    spare = Scripted()
    failover, _ = build(a := on(Scripted(cut), "a"), on(spare, "b"))
    _, error = await drain(await open_stream(failover, chat(**body)))
    assert isinstance(error, UpstreamServerError) and spare.bodies == []
    assert a.stats.in_flight == 0


async def test_client_gone_during_a_resume_leaves_no_one_in_flight() -> None:
    first = Scripted([role(), token("a"), UpstreamServerError("cut")])
    slow = Scripted([5.0, role(), token("b")])  # the continuation hangs before its first chunk
    failover, _ = build(a := on(first, "a"), b := on(slow, "b"))
    outcome = await open_stream(failover, chat())
    chunks = outcome.chunks
    assert text_of([*await chunks.__anext__(), *await chunks.__anext__()]) == "a"
    pending = asyncio.ensure_future(chunks.__anext__())
    await asyncio.sleep(0.05)
    assert b.stats.in_flight == 1
    pending.cancel()  # what the ASGI layer does when the client disconnects
    with pytest.raises(asyncio.CancelledError):
        await pending
    await chunks.aclose()
    assert a.stats.in_flight == b.stats.in_flight == 0


async def test_no_resume_after_the_request_deadline() -> None:
    first = Scripted([role(), token("a"), 0.3, UpstreamServerError("cut")])
    spare = Scripted()
    failover, _ = build(on(first, "a"), b := on(spare, "b"), timeout_s=0.2)
    chunks, error = await drain(await open_stream(failover, chat()))
    assert isinstance(error, UpstreamServerError) and text_of(chunks) == "a"
    # The deadline was gone: the spare was not started, nor charged with a timeout.
    assert spare.bodies == [] and b.stats.failures_total == 0


async def test_a_resume_is_a_half_open_probe_like_any_attempt() -> None:
    breakers = CircuitBreakerBoard()
    first = Scripted([role(), token("a"), UpstreamServerError("cut")])
    probe = Scripted([role(), token("b"), finish()])
    failover, _ = build(a := on(first, "a"), b := on(probe, "b"), breakers=breakers)
    breakers.watch(b, BreakerSettings(consecutive_failures=1, cooldown_s=0.01))
    breakers.record_failure(b)
    await asyncio.sleep(0.02)  # cooldown over: b is half-open
    assert breakers.state_code(b) == 1
    chunks, error = await drain(await open_stream(failover, chat()))
    assert error is None and text_of(chunks) == "ab"
    assert breakers.state_code(b) == 0 and a.stats.in_flight == b.stats.in_flight == 0


async def test_a_stream_that_ends_without_usage_is_billed_for_what_it_relayed() -> None:
    # An upstream that ignores stream_options.include_usage: no usage chunk at all.
    quiet = Scripted([role(), token("a"), token("b"), token("c"), finish()])
    failover, _ = build(on(quiet, "a"))
    request = chat()
    chunks, error = await drain(await open_stream(failover, request))
    assert error is None and text_of(chunks) == "abc"
    assert request.billed_tokens == 3  # the relayed content chunks, as completion tokens
