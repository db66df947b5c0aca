"""The mock provider's own promises beyond the provider contract: answer length follows
max_tokens, answers are deterministic, and a continuation completes the same answer."""

from __future__ import annotations

from typing import Any

import pytest

from kvgate.config.schema import MockProviderSettings
from kvgate.core.provider import JSONObject, UpstreamCall
from kvgate.providers.mock import MockProvider

MESSAGES = [{"role": "user", "content": "Tell me about KV caches"}]


def provider(**settings: Any) -> MockProvider:
    return MockProvider("mock", MockProviderSettings(type="mock", **settings))


def chat(**body: Any) -> UpstreamCall:
    return UpstreamCall("chat", {"model": "m", "messages": MESSAGES, **body}, "r1")


def text(answer: JSONObject) -> str:
    return str(answer["choices"][0]["message"]["content"])


async def test_max_tokens_sets_the_answer_length_beyond_the_default() -> None:
    mock = provider(default_output_tokens=16)
    answer = await mock.complete(chat(max_tokens=40))
    assert answer["usage"]["completion_tokens"] == 40
    assert answer["choices"][0]["finish_reason"] == "length"
    short = await mock.complete(chat(max_completion_tokens=5))
    assert short["usage"]["completion_tokens"] == 5
    assert text(answer).startswith(text(short))  # one answer, cut at different lengths


async def test_without_a_limit_the_default_length_ends_with_stop() -> None:
    answer = await provider(default_output_tokens=12).complete(chat())
    assert answer["usage"]["completion_tokens"] == 12
    assert answer["choices"][0]["finish_reason"] == "stop"


async def test_a_streamed_answer_has_max_tokens_chunks_and_usage() -> None:
    async with provider().stream(chat(max_tokens=30)) as batches:
        received = [chunk async for batch in batches for chunk in batch]
    content = [c for c in received if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(content) == 30
    assert received[-1]["usage"]["completion_tokens"] == 30


async def test_a_continuation_completes_the_same_answer() -> None:
    mock = provider()
    whole = text(await mock.complete(chat(max_tokens=20)))
    words = whole.split(" ")
    partial = " ".join(words[:7])
    rest = await mock.complete(chat(
        max_tokens=13, continue_final_message=True, add_generation_prompt=False,
        messages=[*MESSAGES, {"role": "assistant", "content": partial}],
    ))
    assert partial + text(rest) == whole
    assert rest["usage"]["completion_tokens"] == 13


def test_an_error_chunk_with_a_word_for_a_code_is_a_server_error() -> None:
    from kvgate.providers.errors import UpstreamRateLimited, UpstreamServerError
    from kvgate.providers.openai_compatible import parse_chunk

    # OpenAI puts a word in "code", vLLM the HTTP status: only a status maps to its class.
    with pytest.raises(UpstreamServerError):
        parse_chunk(
            b'{"error": {"code": "rate_limit_exceeded", "message": "slow down"}}')
    with pytest.raises(UpstreamRateLimited):
        parse_chunk(b'{"error": {"code": 429, "message": "slow down"}}')


async def test_answers_follow_the_whole_prompt_and_agree_across_instances() -> None:
    long = "x" * 40_000  # an 8k-token prompt: the answer still depends on its last byte
    first = text(await provider().complete(UpstreamCall(
        "chat", {"model": "m", "messages": [{"role": "user", "content": long + "a"}]}, "r1")))
    again = text(await provider().complete(UpstreamCall(
        "chat", {"model": "m", "messages": [{"role": "user", "content": long + "a"}]}, "r2")))
    other = text(await provider().complete(UpstreamCall(
        "chat", {"model": "m", "messages": [{"role": "user", "content": long + "b"}]}, "r3")))
    assert first == again
    assert first != other
