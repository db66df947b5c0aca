"""The provider contract (kvgate.core.provider.Provider): every provider runs every case.

Each kind is a provider plus the upstream it talks to: the in-process mock; the
openai_compatible and openai providers against tests/support/upstream_server.py and the
anthropic provider against tests/support/fake_anthropic.py, both real HTTP servers on a free
127.0.0.1 port. The ``subject`` fixture yields ``(provider, upstream)`` per kind, where
``upstream`` steers that upstream and states what the kind can do, so no case branches on a
provider's class.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import pytest

from kvgate.config.schema import (
    AnthropicSettings,
    MockProviderSettings,
    OpenAICompatibleSettings,
    OpenAISettings,
)
from kvgate.core.provider import Endpoint, JSONObject, Provider, UpstreamCall
from kvgate.providers.anthropic import AnthropicProvider
from kvgate.providers.errors import (
    UpstreamError,
    UpstreamOverloaded,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamServerError,
)
from kvgate.providers.mock import MockProvider
from kvgate.providers.openai_compatible import OpenAICompatibleProvider, OpenAIProvider
from tests.support import fake_anthropic, upstream_server
from tests.support.local_server import serve
from tests.support.processes import free_port

MODEL = "contract-model"
#: Generous bound for "the upstream saw the client leave": the wait ends as soon as it does.
CLIENT_LEFT_TIMEOUT_S = 30.0


class UpstreamControl(Protocol):
    """Steers the upstream of one provider kind and states the kind's capabilities."""

    #: Whether the provider serves the legacy completions endpoint (else: UpstreamRejected 400).
    serves_completions: bool
    #: Whether check_health() reflects a live upstream (False: there is none, always healthy).
    health_follows_upstream: bool

    async def answer_status(self, status: int) -> Provider:
        """A provider whose upstream now answers every request with HTTP ``status``."""
        ...

    async def pace_streams(self) -> Provider:
        """A provider whose upstream now streams slowly enough that a client can leave early."""
        ...

    async def wait_client_left(self) -> None:
        """Return once the upstream has seen a client leave a stream before its end."""
        ...

    def unreachable(self) -> Provider:
        """A provider of this kind whose upstream is down (a closed port)."""
        ...


Subject = tuple[Provider, UpstreamControl]


class _Providers:
    """Providers a control built, closed at teardown."""

    def __init__(self) -> None:
        self.built: list[Provider] = []

    def keep(self, provider: Provider) -> Provider:
        self.built.append(provider)
        return provider

    async def aclose(self) -> None:
        for provider in self.built:
            await provider.aclose()


class MockControl(_Providers):
    serves_completions = True
    health_follows_upstream = False

    def build(self, **settings: Any) -> Provider:
        return self.keep(MockProvider("mock", MockProviderSettings(type="mock", **settings)))

    async def answer_status(self, status: int) -> Provider:
        return self.build(fail_rate=1.0, fail_status=status)

    async def pace_streams(self) -> Provider:
        return self.build(tokens_per_s=20)

    async def wait_client_left(self) -> None:
        # No upstream: the case's own checks (iterator closed, no task left) are the promise.
        return None

    def unreachable(self) -> Provider:
        return self.build()


class OpenAIControl(_Providers):
    """tests/support/upstream_server.py served in the test's loop."""

    serves_completions = True
    health_follows_upstream = True

    def __init__(self, state: upstream_server.Upstream, provider: Provider,
                 build: Callable[[str], Provider]) -> None:
        super().__init__()
        self._state = state
        self.provider = self.keep(provider)
        self._build = build

    async def answer_status(self, status: int) -> Provider:
        self._state.control = {"status": status}
        return self.provider

    async def pace_streams(self) -> Provider:
        self._state.control = {"chunk_delay_s": 0.05}
        return self.provider

    async def wait_client_left(self) -> None:
        await asyncio.wait_for(self._state.client_left.wait(), CLIENT_LEFT_TIMEOUT_S)

    def unreachable(self) -> Provider:
        return self.keep(self._build(f"http://127.0.0.1:{free_port()}/v1"))


class AnthropicControl(_Providers):
    """tests/support/fake_anthropic.py, answering generated replies."""

    serves_completions = False
    health_follows_upstream = True

    def __init__(self, fake: fake_anthropic.FakeAnthropic, provider: Provider) -> None:
        super().__init__()
        self._fake = fake
        self.provider = self.keep(provider)

    async def answer_status(self, status: int) -> Provider:
        self._fake.reply_status = status
        return self.provider

    async def pace_streams(self) -> Provider:
        self._fake.event_delay_s = 0.1
        return self.provider

    async def wait_client_left(self) -> None:
        await asyncio.wait_for(self._fake.client_left.wait(), CLIENT_LEFT_TIMEOUT_S)

    def unreachable(self) -> Provider:
        return self.keep(anthropic_provider(f"http://127.0.0.1:{free_port()}"))


def anthropic_provider(base_url: str) -> Provider:
    settings = AnthropicSettings(type="anthropic", api_key=fake_anthropic.API_KEY,
                                 api_base=base_url, default_max_tokens=512)
    return AnthropicProvider("anthropic", settings)


@asynccontextmanager
async def mock_subject() -> AsyncIterator[Subject]:
    control = MockControl()
    try:
        yield control.build(), control
    finally:
        await control.aclose()


def _openai_subject(build: Callable[[str], Provider]) -> Callable[
    [], AbstractAsyncContextManager[Subject]
]:
    @asynccontextmanager
    async def subject() -> AsyncIterator[Subject]:
        app = upstream_server.build_app()
        async with serve(app) as base_url:
            control = OpenAIControl(app[upstream_server.UPSTREAM], build(base_url + "/v1"), build)
            try:
                yield control.provider, control
            finally:
                await control.aclose()

    return subject


def openai_compatible(api_base: str) -> Provider:
    settings = OpenAICompatibleSettings(type="openai_compatible", api_base=api_base,
                                        api_key="sk-up")
    return OpenAICompatibleProvider("vllm", settings)


def openai(api_base: str) -> Provider:
    settings = OpenAISettings(type="openai", api_base=api_base, api_key="sk-openai",
                              organization="org-contract")
    return OpenAIProvider("openai", settings)


@asynccontextmanager
async def anthropic_subject() -> AsyncIterator[Subject]:
    async with fake_anthropic.serve_fake_anthropic() as fake:
        control = AnthropicControl(fake, anthropic_provider(fake.base_url))
        try:
            yield control.provider, control
        finally:
            await control.aclose()


SUBJECTS: dict[str, Callable[[], AbstractAsyncContextManager[Subject]]] = {
    "mock": mock_subject,
    "openai_compatible": _openai_subject(openai_compatible),
    "openai": _openai_subject(openai),
    "anthropic": anthropic_subject,
}


@pytest.fixture(params=sorted(SUBJECTS))
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    async with SUBJECTS[request.param]() as pair:
        yield pair


# --- requests and reading answers ------------------------------------------------------------


def chat_body(**fields: Any) -> JSONObject:
    """A deterministic chat request: same body, same answer, on every kind's upstream."""
    return {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": [{"type": "text", "text": "What does a KV cache hold?"}]},
        ],
        "temperature": 0,
        "seed": 7,
        **fields,
    }


def completion_body(**fields: Any) -> JSONObject:
    return {"model": MODEL, "prompt": "Once upon a time", "temperature": 0, "seed": 7, **fields}


def blocking(body: JSONObject, endpoint: Endpoint = "chat") -> UpstreamCall:
    return UpstreamCall(endpoint=endpoint, body=body, request_id="contract-1")


def streamed(body: JSONObject, endpoint: Endpoint = "chat") -> UpstreamCall:
    """As the gateway sends a stream: the stream flag set and usage asked for."""
    return UpstreamCall(
        endpoint=endpoint,
        body={**body, "stream": True, "stream_options": {"include_usage": True}},
        request_id="contract-2",
    )


async def read_stream(provider: Provider, call: UpstreamCall) -> list[JSONObject]:
    async with provider.stream(call) as batches:
        received = []
        async for batch in batches:
            assert batch, "a batch is never empty"
            received.extend(batch)
        return received


def streamed_text(chunks: list[JSONObject]) -> str:
    parts = []
    for chunk in chunks:
        for choice in chunk["choices"]:
            piece = choice["delta"].get("content") if "delta" in choice else choice.get("text")
            parts.append(piece or "")
    return "".join(parts)


def streamed_finish(chunks: list[JSONObject]) -> list[str]:
    return [choice["finish_reason"] for chunk in chunks for choice in chunk["choices"]
            if choice.get("finish_reason")]


def assert_usage(usage: JSONObject) -> None:
    assert isinstance(usage["prompt_tokens"], int) and usage["prompt_tokens"] > 0
    assert isinstance(usage["completion_tokens"], int) and usage["completion_tokens"] > 0


# --- the contract ----------------------------------------------------------------------------


async def test_complete_returns_a_chat_completion_with_usage(subject: Subject) -> None:
    provider, _ = subject
    reply = await provider.complete(blocking(chat_body()))
    assert reply["object"] == "chat.completion"
    (choice,) = reply["choices"]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert choice["finish_reason"] == "stop"
    assert_usage(reply["usage"])


async def test_legacy_completions_are_served_or_refused_by_capability(subject: Subject) -> None:
    provider, upstream = subject
    if not upstream.serves_completions:
        with pytest.raises(UpstreamRejected) as refused:
            await provider.complete(blocking(completion_body(), "completions"))
        assert refused.value.upstream_status == 400 and not refused.value.retryable
        with pytest.raises(UpstreamRejected) as refused_stream:
            await read_stream(provider, streamed(completion_body(), "completions"))
        assert refused_stream.value.upstream_status == 400 and not refused_stream.value.retryable
        return
    reply = await provider.complete(blocking(completion_body(), "completions"))
    assert reply["object"] == "text_completion"
    text = reply["choices"][0]["text"]
    assert isinstance(text, str) and text
    assert_usage(reply["usage"])
    chunks = await read_stream(provider, streamed(completion_body(), "completions"))
    assert {chunk["object"] for chunk in chunks} == {"text_completion"}
    assert streamed_text(chunks) == text
    assert chunks[-1]["usage"]["completion_tokens"] == reply["usage"]["completion_tokens"]


async def test_stream_yields_chunks_ending_in_usage_that_spell_the_blocking_answer(
    subject: Subject,
) -> None:
    provider, _ = subject
    reply = await provider.complete(blocking(chat_body()))
    chunks = await read_stream(provider, streamed(chat_body()))
    assert chunks, "a stream yields at least its usage chunk"
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    usage = chunks[-1]["usage"]
    assert_usage(usage)
    assert usage["prompt_tokens"] == reply["usage"]["prompt_tokens"]
    assert usage["completion_tokens"] == reply["usage"]["completion_tokens"]
    assert streamed_text(chunks) == reply["choices"][0]["message"]["content"]
    assert streamed_finish(chunks) == [reply["choices"][0]["finish_reason"]]


async def test_max_tokens_cuts_the_answer_with_finish_reason_length(subject: Subject) -> None:
    provider, _ = subject
    max_tokens = 3
    reply = await provider.complete(blocking(chat_body(max_tokens=max_tokens)))
    assert 0 < reply["usage"]["completion_tokens"] <= max_tokens
    assert reply["choices"][0]["finish_reason"] == "length"
    chunks = await read_stream(provider, streamed(chat_body(max_tokens=max_tokens)))
    assert 0 < chunks[-1]["usage"]["completion_tokens"] <= max_tokens
    assert streamed_finish(chunks) == ["length"]
    assert streamed_text(chunks) == reply["choices"][0]["message"]["content"]


async def test_the_call_body_is_not_mutated(subject: Subject) -> None:
    provider, _ = subject
    extras = {"max_tokens": 4, "stop": ["\n\n"], "user": "tenant-7"}
    blocking_call = blocking(chat_body(**extras))
    stream_call = streamed(chat_body(**extras))
    before = copy.deepcopy((blocking_call.body, stream_call.body))
    await provider.complete(blocking_call)
    await read_stream(provider, stream_call)
    assert (blocking_call.body, stream_call.body) == before


ERRORS: dict[int, tuple[type[UpstreamError], bool]] = {
    429: (UpstreamRateLimited, True),
    500: (UpstreamServerError, True),
    503: (UpstreamOverloaded, True),
    400: (UpstreamRejected, False),
}


@pytest.mark.parametrize("status", sorted(ERRORS))
async def test_upstream_errors_leave_as_typed_upstream_errors(
    subject: Subject, status: int
) -> None:
    _, upstream = subject
    provider = await upstream.answer_status(status)
    error_class, retryable = ERRORS[status]
    with pytest.raises(UpstreamError) as blocking_error:
        await provider.complete(blocking(chat_body()))
    with pytest.raises(UpstreamError) as stream_error:
        await read_stream(provider, streamed(chat_body()))
    for caught in (blocking_error.value, stream_error.value):
        assert type(caught) is error_class
        assert caught.retryable is retryable
        assert caught.upstream_status == status


async def test_leaving_a_stream_early_closes_it_and_cancels_the_upstream(
    subject: Subject,
) -> None:
    _, upstream = subject
    provider = await upstream.pace_streams()
    tasks_before = asyncio.all_tasks()
    async with provider.stream(streamed(chat_body(max_tokens=200))) as chunks:
        first = await anext(chunks)
        assert first[0]["object"] == "chat.completion.chunk"
    await upstream.wait_client_left()
    with pytest.raises(StopAsyncIteration):
        await anext(chunks)
    # Nothing the stream started keeps running (the servers' own handler tasks end with the
    # connection the provider closed).
    async with asyncio.timeout(CLIENT_LEFT_TIMEOUT_S):
        while asyncio.all_tasks() - tasks_before:
            await asyncio.sleep(0.01)


async def test_check_health_follows_the_upstream(subject: Subject) -> None:
    provider, upstream = subject
    assert await provider.check_health() is True
    down = upstream.unreachable()
    assert await down.check_health() is (not upstream.health_follows_upstream)


async def test_aclose_at_shutdown_after_use_and_without_use(subject: Subject) -> None:
    provider, upstream = subject
    reply = await provider.complete(blocking(chat_body()))
    assert reply["choices"][0]["message"]["content"]
    # Raising here fails the case; the fixture's teardown closes both once more.
    await provider.aclose()
    await upstream.unreachable().aclose()
