"""A stream's chunks reach the client as the upstream wrote them where nothing in them changes,
and encoded again where the gateway changes them (usage the client did not ask for)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import orjson
import pytest

from kvgate.api.app import KVGateApp, create_app
from kvgate.config.schema import Settings
from tests.providers.test_http_pool import Server, server, sse

__all__ = ["server"]  # the scripted upstream fixture, shared with the pool's tests

#: Spaces after separators and this key order, as some upstreams write them (orjson would
#: write neither).
CONTENT = (b'data: {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, '
           b'"delta": {"content": "hi"}, "finish_reason": null}]}\n\n')
FINISH = (b'data: {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, '
          b'"delta": {}, "finish_reason": "stop"}]}\n\n')
USAGE = (b'data: {"id": "c1", "object": "chat.completion.chunk", "choices": [], '
         b'"usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}\n\n')


@pytest.fixture()
async def app(server: tuple[Server, str]) -> AsyncIterator[tuple[Server, KVGateApp]]:
    scripted, url = server  # the scripted server answers any path
    gateway_app = create_app(Settings.model_validate({
        "providers": {"up": {"type": "openai_compatible", "api_base": url.removesuffix("/x")}},
        "models": [{"name": "m", "deployments": [{"provider": "up", "model": "m"}]}],
        "cache": {"exact": {"enabled": False}},
        "routing": {"health_check_interval_s": 0},
    }))
    yield scripted, gateway_app
    await gateway_app.gateway.aclose()


async def streamed(app: KVGateApp, body: dict[str, Any]) -> bytes:
    """The response body the client reads (chunked framing already removed by ASGI)."""
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": orjson.dumps(body), "more_body": False}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    parts: list[bytes] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200
        else:
            parts.append(message.get("body", b""))

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "headers": [(b"content-type", b"application/json")]}
    await app(scope, receive, send)
    return b"".join(parts)


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}],
            **extra}


async def test_chunks_nothing_changes_pass_as_the_upstream_wrote_them(
    app: tuple[Server, KVGateApp]
) -> None:
    scripted, gateway_app = app
    scripted.script = lambda n: sse(CONTENT + FINISH, USAGE, b"data: [DONE]\n\n")
    body = await streamed(gateway_app, chat(stream_options={"include_usage": True}))
    assert body == CONTENT + FINISH + USAGE + b"data: [DONE]\n\n"


async def test_usage_the_client_did_not_ask_for_is_left_out(
    app: tuple[Server, KVGateApp]
) -> None:
    scripted, gateway_app = app
    # The usage in a last chunk of its own (vLLM's shape): the rest as written.
    scripted.script = lambda n: sse(CONTENT + FINISH, USAGE, b"data: [DONE]\n\n")
    body = await streamed(gateway_app, chat())
    assert body == CONTENT + FINISH + b"data: [DONE]\n\n"
    # The usage chunk, and "usage": null on a content chunk (OpenAI's shape), in one read:
    # the batch is encoded again, without usage anywhere.
    with_null = CONTENT.replace(b'"choices"', b'"usage": null, "choices"')
    scripted.script = lambda n: sse(with_null + FINISH + USAGE + b"data: [DONE]\n\n")
    body = await streamed(gateway_app, chat())
    events = [orjson.loads(line[6:]) for line in body.split(b"\n\n")
              if line.startswith(b"data: {")]
    assert [e["choices"][0]["finish_reason"] for e in events] == [None, "stop"]
    assert all("usage" not in e for e in events)
    assert body.endswith(b"data: [DONE]\n\n") and b" " not in body.replace(b"data: ", b"")


async def test_a_chunk_with_a_carriage_return_is_encoded_again(
    app: tuple[Server, KVGateApp]
) -> None:
    scripted, gateway_app = app
    # Valid JSON (a CR between tokens), but an SSE parser ends a line at a CR.
    odd = CONTENT.replace(b'"delta":', b'"delta":\r')
    scripted.script = lambda n: sse(odd + FINISH, b"data: [DONE]\n\n")
    body = await streamed(gateway_app, chat(stream_options={"include_usage": True}))
    assert b"\r" not in body
    events = [orjson.loads(line[6:]) for line in body.split(b"\n\n")
              if line.startswith(b"data: {")]
    assert [e["choices"][0]["delta"].get("content") for e in events] == ["hi", None]
