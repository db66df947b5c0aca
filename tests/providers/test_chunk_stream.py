"""The OpenAI-compatible provider's stream object over a scripted upstream: batches per read,
``[DONE]``, error chunks after good ones, a stream cut short, and no async generator; each
with the per-chunk loops in C and in Python (:mod:`kvgate.core.chunks`)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kvgate.config.schema import OpenAICompatibleSettings
from kvgate.core import chunks
from kvgate.core.provider import UpstreamCall
from kvgate.providers import http_upstream, openai_compatible
from kvgate.providers.errors import UpstreamRateLimited, UpstreamServerError
from kvgate.providers.openai_compatible import OpenAICompatibleProvider
from tests.providers.test_http_pool import Server, server, sse

__all__ = ["server"]  # the scripted upstream fixture, shared with the pool's tests

CALL = UpstreamCall(endpoint="chat", body={"model": "m", "stream": True, "messages": []},
                    request_id="r1")


def provider(api_base: str) -> OpenAICompatibleProvider:
    return OpenAICompatibleProvider("up", OpenAICompatibleSettings.model_validate(
        {"type": "openai_compatible", "api_base": api_base}))


async def collect(p: OpenAICompatibleProvider) -> list[list[dict[str, Any]]]:
    async with p.stream(CALL) as batches:
        return [batch async for batch in batches]


@pytest.fixture(autouse=True, params=["c", "python"])
def loops(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.param == "python":
        monkeypatch.setattr(http_upstream, "sse_events", chunks.py_sse_events)
        monkeypatch.setattr(openai_compatible, "scan", chunks.py_scan)
        monkeypatch.setattr(chunks, "_native_observe", lambda batch: None)


@pytest.fixture()
async def upstream(server: tuple[Server, str]
                   ) -> AsyncIterator[tuple[Server, OpenAICompatibleProvider]]:
    scripted, url = server  # the scripted server answers any path
    p = provider(url.removesuffix("/x"))
    yield scripted, p
    await p.aclose()


async def test_batches_end_at_done_and_create_no_async_generator(
    upstream: tuple[Server, OpenAICompatibleProvider]
) -> None:
    scripted, p = upstream
    scripted.script = lambda n: sse(b'data: {"n": 1}\n\ndata: {"n": 2}\n\n',
                                    b"data: [DONE]\n\n")
    firstiter, finalizer = sys.get_asyncgen_hooks()
    started: list[Any] = []

    def counting(generator: Any) -> None:
        started.append(generator)
        assert firstiter is not None
        firstiter(generator)

    sys.set_asyncgen_hooks(counting, finalizer)
    try:
        batches = [await collect(p) for _ in range(3)]
    finally:
        sys.set_asyncgen_hooks(firstiter, finalizer)
    chunks = [[chunk["n"] for batch in run for chunk in batch] for run in batches]
    assert chunks == [[1, 2]] * 3
    # NOTE: each generator layer on a stream's path cost asyncio's first-iteration hook,
    # a frame per step and a throw on close (the relay's CPU per stream).
    assert [g.__qualname__ for g in started] == []
    assert scripted.connections == 1  # every stream's connection went back to the pool


@pytest.mark.parametrize(("body", "error", "message"), [
    # An error chunk (vLLM's way to fail mid-stream): raised after the chunk before it.
    (b'data: {"n": 1}\n\ndata: {"error": {"code": 429, "message": "slow"}}\n\n'
     b'data: {"n": 3}\n\n', UpstreamRateLimited, "slow"),
    (b'data: {"n": 1}\n\n', UpstreamServerError, "without \\[DONE\\]"),
], ids=["error-chunk", "no-done"])
async def test_a_failing_stream_raises_after_the_chunks_before_the_failure(
    upstream: tuple[Server, OpenAICompatibleProvider], body: bytes,
    error: type[Exception], message: str,
) -> None:
    scripted, p = upstream
    scripted.script = lambda n: sse(body)
    got: list[int] = []
    with pytest.raises(error, match=message):
        async with p.stream(CALL) as batches:
            async for batch in batches:
                got += [chunk["n"] for chunk in batch]
    assert got == [1]


async def test_an_error_status_is_raised_on_the_first_read(
    upstream: tuple[Server, OpenAICompatibleProvider]
) -> None:
    scripted, p = upstream
    body = b'{"error": {"message": "no such model"}}'
    scripted.script = lambda n: (b"HTTP/1.1 404 Not Found\r\ncontent-length: %d\r\n\r\n%s"
                                 % (len(body), body))
    with pytest.raises(Exception, match="no such model") as caught:
        await collect(p)
    assert getattr(caught.value, "client_status", None) == 404
    # The error response was read whole: its connection is reused.
    scripted.script = lambda n: sse(b"data: [DONE]\n\n")
    assert await collect(p) == []
    assert scripted.connections == 1


async def test_batches_keep_the_upstream_bytes_of_their_chunks(
    upstream: tuple[Server, OpenAICompatibleProvider]
) -> None:
    scripted, p = upstream
    # Spaces and key order as this upstream writes them (one network read: one batch).
    scripted.script = lambda n: sse(
        b'data: {"n": 1,  "z": "a"}\n\ndata:{"n":2}\n\n', b'data: {"n": 3, "usage": null}\n\n',
        b"data: [DONE]\n\ndata: {\"n\": 9}\n\n")
    (batch,) = await collect(p)
    assert [chunk["n"] for chunk in batch] == [1, 2, 3]
    assert getattr(batch, "payloads", None) == [b'{"n": 1,  "z": "a"}', b'{"n":2}',
                                                b'{"n": 3, "usage": null}']
    assert getattr(batch, "usage_chunks", None) == 1
