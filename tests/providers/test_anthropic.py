"""AnthropicProvider against a real local HTTP server that speaks the Messages API shapes
(tests/support/fake_anthropic.py), beyond what the provider contract (test_contract.py) covers:
request and response translation, tool calls, Anthropic's error types, its stream events.
"""

from __future__ import annotations

import copy
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kvgate.config.schema import AnthropicSettings
from kvgate.core.provider import UpstreamCall
from kvgate.providers.anthropic import AnthropicProvider
from kvgate.providers.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamServerError,
)
from tests.support.fake_anthropic import (
    API_KEY,
    MODEL,
    VERSION,
    Event,
    FakeAnthropic,
    error_body,
    serve_fake_anthropic,
)


@pytest.fixture
async def upstream() -> AsyncIterator[FakeAnthropic]:
    async with serve_fake_anthropic() as fake:
        yield fake


def _provider(base_url: str, **overrides: Any) -> AnthropicProvider:
    settings = AnthropicSettings.model_validate(
        {"type": "anthropic", "api_key": API_KEY, "api_base": base_url + "/", **overrides}
    )
    return AnthropicProvider("claude", settings)


@pytest.fixture
async def provider(upstream: FakeAnthropic) -> AsyncIterator[AnthropicProvider]:
    instance = _provider(upstream.base_url, default_max_tokens=333)
    yield instance
    await instance.aclose()


def _call(body: dict[str, Any], endpoint: Any = "chat") -> UpstreamCall:
    return UpstreamCall(endpoint=endpoint, body={"model": MODEL, **body}, request_id="req-1")


def _message(content: list[dict[str, Any]], stop_reason: str = "end_turn") -> dict[str, Any]:
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }


HELLO = {"messages": [{"role": "user", "content": "Hello"}]}
PNG_B64 = "iVBORw0KGgo="
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


# --- request translation ---------------------------------------------------------------------


async def test_complete_translates_a_full_conversation(
    upstream: FakeAnthropic, provider: AnthropicProvider
) -> None:
    body = {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather in these two cities?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
                ],
            },
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    },
                    {
                        "id": "toolu_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "3C, snow"},
            {
                "role": "tool",
                "tool_call_id": "toolu_2",
                "content": [{"type": "text", "text": "21C"}],
            },
            {"role": "user", "content": "Summarise."},
        ],
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_completion_tokens": 64,
        "max_tokens": 9999,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": "END",
        "user": "tenant-7",
        "seed": 1,
    }
    original = copy.deepcopy(body)
    upstream.reply_json = _message([{"type": "text", "text": "Cold in Oslo, warm in Rome."}])

    await provider.complete(_call(body))

    assert body == original, "the provider must not mutate the call body"
    headers = upstream.headers[0]
    assert headers["x-api-key"] == API_KEY
    assert headers["anthropic-version"] == VERSION
    assert headers["Content-Type"] == "application/json"
    assert upstream.bodies == [
        {
            "model": MODEL,
            "max_tokens": 64,
            "system": "You are terse.\n\nUse metric units.",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Weather in these two cities?"},
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/png",
                                "data": PNG_B64,
                            },
                        },
                        {
                            "type": "image",
                            "source": {"type": "url", "url": "https://example.com/a.jpg"},
                        },
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "get_weather",
                            "input": {"city": "Oslo"},
                        },
                        {
                            "type": "tool_use",
                            "id": "toolu_2",
                            "name": "get_weather",
                            "input": {"city": "Rome"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "3C, snow"},
                        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "21C"},
                        {"type": "text", "text": "Summarise."},
                    ],
                },
            ],
            "temperature": 0.2,
            "top_p": 0.9,
            "stop_sequences": ["END"],
            "metadata": {"user_id": "tenant-7"},
            "tools": [
                {
                    "name": "get_weather",
                    "description": "Current weather for a city",
                    "input_schema": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                    },
                }
            ],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        }
    ]


async def test_defaults_max_tokens_and_maps_stop_list_and_named_tool(
    upstream: FakeAnthropic, provider: AnthropicProvider
) -> None:
    upstream.reply_json = _message([{"type": "text", "text": "ok"}])
    tool_choice = {"type": "function", "function": {"name": "get_weather"}}
    await provider.complete(
        _call({**HELLO, "stop": ["a", "b"], "tools": [WEATHER_TOOL], "tool_choice": tool_choice})
    )
    sent = upstream.bodies[0]
    assert sent["max_tokens"] == 333
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]
    assert sent["stop_sequences"] == ["a", "b"]
    assert sent["tool_choice"] == {"type": "tool", "name": "get_weather"}
    assert "stream" not in sent and "system" not in sent


async def test_max_tokens_used_when_max_completion_tokens_absent(
    upstream: FakeAnthropic, provider: AnthropicProvider
) -> None:
    upstream.reply_json = _message([{"type": "text", "text": "ok"}])
    await provider.complete(_call({**HELLO, "max_tokens": 7}))
    assert upstream.bodies[0]["max_tokens"] == 7


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "http(s) or base64 data URLs"),
        ("data:image/png,rawbytes", "must be base64-encoded"),
        ("data:image/bmp;base64,AAAA", "'image/bmp' is not supported"),
    ],
)
async def test_unusable_image_urls_are_refused_before_any_request(
    upstream: FakeAnthropic, provider: AnthropicProvider, url: str, reason: str
) -> None:
    part = {"type": "image_url", "image_url": {"url": url}}
    with pytest.raises(UpstreamRejected, match=re.escape(reason)) as caught:
        await provider.complete(_call({"messages": [{"role": "user", "content": [part]}]}))
    assert caught.value.client_status == 400
    assert not caught.value.retryable
    assert upstream.bodies == []


async def test_n_above_one_is_refused(upstream: FakeAnthropic, provider: AnthropicProvider) -> None:
    with pytest.raises(UpstreamRejected, match="n must be 1"):
        await provider.complete(_call({**HELLO, "n": 2}))
    assert upstream.bodies == []


async def test_completions_endpoint_is_refused_with_400(
    upstream: FakeAnthropic, provider: AnthropicProvider
) -> None:
    call = _call({"prompt": "Hello"}, endpoint="completions")
    with pytest.raises(UpstreamRejected, match="only /v1/chat/completions") as caught:
        await provider.complete(call)
    assert caught.value.upstream_status == 400
    assert caught.value.client_status == 400
    with pytest.raises(UpstreamRejected):
        async with provider.stream(call) as chunks:
            async for _ in chunks:
                pass
    assert upstream.bodies == []


# --- blocking responses -----------------------------------------------------------------------


async def test_complete_translates_text_tool_calls_and_cached_usage(
    upstream: FakeAnthropic, provider: AnthropicProvider
) -> None:
    reply = _message(
        [
            {"type": "text", "text": "Checking "},
            {"type": "text", "text": "now."},
            {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Oslo"}},
        ],
        stop_reason="tool_use",
    )
    reply["usage"] = {
        "input_tokens": 20,
        "output_tokens": 12,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 30,
    }
    upstream.reply_json = reply

    completion = await provider.complete(_call({**HELLO, "tools": [WEATHER_TOOL]}))

    assert completion["id"] == "msg_01"
    assert completion["object"] == "chat.completion"
    assert completion["model"] == MODEL
    assert isinstance(completion["created"], int)
    (choice,) = completion["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": "Checking now.",
        "tool_calls": [
            {
                "id": "toolu_9",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
            }
        ],
    }
    # OpenAI's prompt_tokens includes the cached share; Anthropic's input_tokens does not.
    assert completion["usage"] == {
        "prompt_tokens": 150,
        "completion_tokens": 12,
        "total_tokens": 162,
        "prompt_tokens_details": {"cached_tokens": 100},
    }


async def test_tool_calls_without_text_give_null_content(
    upstream: FakeAnthropic, provider: AnthropicProvider
) -> None:
    upstream.reply_json = _message(
        [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}], "tool_use"
    )
    completion = await provider.complete(_call(HELLO))
    message = completion["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"][0]["function"]["arguments"] == "{}"


@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
async def test_finish_reason_mapping(
    upstream: FakeAnthropic, provider: AnthropicProvider, stop_reason: str, expected: str
) -> None:
    upstream.reply_json = _message([{"type": "text", "text": "x"}], stop_reason)
    completion = await provider.complete(_call(HELLO))
    assert completion["choices"][0]["finish_reason"] == expected


# --- errors -----------------------------------------------------------------------------------

ERROR_CASES = [
    (400, "invalid_request_error", UpstreamRejected, 400, False),
    (429, "rate_limit_error", UpstreamRateLimited, 429, True),
    (529, "overloaded_error", UpstreamOverloaded, 503, True),
    (500, "api_error", UpstreamServerError, 502, True),
]


@pytest.mark.parametrize(
    ("status", "error_type", "error_class", "client_status", "retry"), ERROR_CASES
)
async def test_http_errors_become_typed_upstream_errors(
    upstream: FakeAnthropic,
    provider: AnthropicProvider,
    status: int,
    error_type: str,
    error_class: type[UpstreamError],
    client_status: int,
    retry: bool,
) -> None:
    upstream.reply_status = status
    upstream.reply_json = error_body(error_type, f"upstream says {error_type}")
    for attempt in ("complete", "stream"):
        with pytest.raises(error_class) as caught:
            if attempt == "complete":
                await provider.complete(_call(HELLO))
            else:
                async with provider.stream(_call(HELLO)) as chunks:
                    async for _ in chunks:
                        pass
        assert type(caught.value) is error_class
        assert caught.value.message == f"upstream says {error_type}"
        assert caught.value.upstream_status == status
        assert caught.value.client_status == client_status
        assert caught.value.retryable is retry


async def test_upstream_validation_error_keeps_its_message(
    upstream: FakeAnthropic, provider: AnthropicProvider
) -> None:
    # An empty assistant turn is dropped, so the only turn left is a system one: no messages.
    body = {"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": ""}]}
    with pytest.raises(UpstreamRejected, match="at least one message") as caught:
        await provider.complete(_call(body))
    assert caught.value.client_status == 400


async def test_wrong_api_key_is_rejected_with_401(upstream: FakeAnthropic) -> None:
    provider = _provider(upstream.base_url, api_key="wrong")
    try:
        with pytest.raises(UpstreamRejected, match="invalid x-api-key") as caught:
            await provider.complete(_call(HELLO))
        assert caught.value.client_status == 401
    finally:
        await provider.aclose()


# --- streaming --------------------------------------------------------------------------------


def _stream_events(*, stop: bool = True) -> list[Event]:
    events: list[Event] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_s1",
                    "type": "message",
                    "role": "assistant",
                    "model": MODEL,
                    "content": [],
                    "stop_reason": None,
                    "usage": {"input_tokens": 25, "output_tokens": 1, "cache_read_input_tokens": 5},
                },
            },
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Let me "},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "check."},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {
                    "type": "tool_use",
                    "id": "toolu_7",
                    "name": "get_weather",
                    "input": {},
                },
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '{"city": "Os'},
            },
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": 'lo"}'},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"output_tokens": 17},
            },
        ),
    ]
    if stop:
        events.append(("message_stop", {"type": "message_stop"}))
    return events


async def test_stream_translates_events_to_chunks(
    upstream: FakeAnthropic, provider: AnthropicProvider
) -> None:
    upstream.events = _stream_events()
    async with provider.stream(_call({**HELLO, "stream": True})) as stream:
        chunks = [chunk async for batch in stream for chunk in batch]

    assert upstream.bodies[0]["stream"] is True
    assert upstream.headers[0]["x-api-key"] == API_KEY
    for chunk in chunks:
        assert chunk["id"] == "msg_s1"
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == MODEL
    assert [chunk["choices"] for chunk in chunks] == [
        [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        [{"index": 0, "delta": {"content": "Let me "}, "finish_reason": None}],
        [{"index": 0, "delta": {"content": "check."}, "finish_reason": None}],
        [
            {
                "index": 0,
                "delta": {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "toolu_7",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                },
                "finish_reason": None,
            }
        ],
        [
            {
                "index": 0,
                "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Os'}}]},
                "finish_reason": None,
            }
        ],
        [
            {
                "index": 0,
                "delta": {"tool_calls": [{"index": 0, "function": {"arguments": 'lo"}'}}]},
                "finish_reason": None,
            }
        ],
        [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}],
        [],
    ]
    assert "usage" not in chunks[-2]
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 30,
        "completion_tokens": 17,
        "total_tokens": 47,
        "prompt_tokens_details": {"cached_tokens": 5},
    }


async def test_stream_without_message_stop_raises(
    upstream: FakeAnthropic, provider: AnthropicProvider
) -> None:
    upstream.events = _stream_events(stop=False)
    received = []
    with pytest.raises(UpstreamServerError, match="without message_stop"):
        async with provider.stream(_call(HELLO)) as chunks:
            async for batch in chunks:
                received.extend(batch)
    assert len(received) == 6  # every content chunk arrived before the cut was noticed


@pytest.mark.parametrize(
    ("status", "error_type", "error_class", "client_status", "retry"), ERROR_CASES
)
async def test_mid_stream_error_event_raises_matching_error(
    upstream: FakeAnthropic,
    provider: AnthropicProvider,
    status: int,
    error_type: str,
    error_class: type[UpstreamError],
    client_status: int,
    retry: bool,
) -> None:
    upstream.events = [
        *_stream_events()[:4],
        ("error", error_body(error_type, "went wrong mid-stream")),
    ]
    received = []
    with pytest.raises(error_class) as caught:
        async with provider.stream(_call(HELLO)) as chunks:
            async for batch in chunks:
                received.extend(batch)
    assert [c["choices"][0]["delta"] for c in received] == [
        {"role": "assistant", "content": ""},
        {"content": "Let me "},
    ]
    assert type(caught.value) is error_class
    assert caught.value.message == "went wrong mid-stream"
    assert caught.value.upstream_status == status
    assert caught.value.client_status == client_status
    assert caught.value.retryable is retry


# --- health and connection failures -----------------------------------------------------------


async def test_check_health(upstream: FakeAnthropic, provider: AnthropicProvider) -> None:
    assert await provider.check_health() is True
    unauthorised = _provider(upstream.base_url, api_key="wrong")
    try:
        assert await unauthorised.check_health() is False
    finally:
        await unauthorised.aclose()


async def test_unreachable_upstream(unused_tcp_port: int) -> None:
    provider = _provider(f"http://127.0.0.1:{unused_tcp_port}")
    try:
        assert await provider.check_health() is False
        with pytest.raises(UpstreamConnectError):
            await provider.complete(_call(HELLO))
    finally:
        await provider.aclose()
