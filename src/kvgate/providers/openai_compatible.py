"""Upstreams that speak OpenAI's HTTP API: vLLM, SGLang, TGI, Ollama, llama.cpp, OpenAI itself.

The request body is forwarded as the client sent it (vLLM extras such as ``cache_salt``,
``priority`` or ``continue_final_message`` pass through untouched); only ``model`` and the
stream flags are set by the gateway before the call.
"""

from __future__ import annotations

import orjson

from kvgate.config.schema import OpenAICompatibleSettings
from kvgate.core import chunks
from kvgate.core.chunks import scan
from kvgate.core.provider import ChunkBatch, JSONObject, UpstreamCall, WireBatch
from kvgate.providers.errors import (
    UpstreamError,
    UpstreamServerError,
    error_for_status,
)
from kvgate.providers.http_upstream import (
    EventStream,
    HTTPUpstream,
    json_object,
    upstream_error_message,
)

_PATHS = {"chat": "/chat/completions", "completions": "/completions"}
_DONE = b"[DONE]"


class OpenAICompatibleProvider:
    """Implements :class:`~kvgate.core.provider.Provider` over an OpenAI-shaped HTTP API."""

    def __init__(self, name: str, settings: OpenAICompatibleSettings) -> None:
        chunks.warn_if_python()
        self._name = name
        base = settings.api_base.rstrip("/")
        self._urls = {endpoint: base + path for endpoint, path in _PATHS.items()}
        self._health_url = base + "/models"
        headers = dict(settings.headers)
        if settings.api_key:
            headers["authorization"] = f"Bearer {settings.api_key}"
        headers.update(self._extra_headers(settings))
        self._http = HTTPUpstream(
            connect_timeout_s=settings.connect_timeout_s,
            read_timeout_s=settings.read_timeout_s,
            max_connections=settings.max_connections,
            headers=headers,
        )

    def _extra_headers(self, settings: OpenAICompatibleSettings) -> dict[str, str]:
        return {}

    async def complete(self, call: UpstreamCall) -> JSONObject:
        return await self._http.post_json(self._urls[call.endpoint], orjson.dumps(call.body))

    def stream(self, call: UpstreamCall) -> ChunkStream:
        return ChunkStream(self._name, self._http.stream_events(
            self._urls[call.endpoint], orjson.dumps(call.body)))

    async def check_health(self) -> bool:
        return await self._http.get_ok(self._health_url)

    async def aclose(self) -> None:
        await self._http.aclose()


class OpenAIProvider(OpenAICompatibleProvider):
    """OpenAI's hosted API: the same protocol plus the organization header."""

    def _extra_headers(self, settings: OpenAICompatibleSettings) -> dict[str, str]:
        organization = getattr(settings, "organization", None)
        return {"openai-organization": organization} if organization else {}


class ChunkStream:
    """An OpenAI-shaped stream's chunk objects, a batch per network read, up to ``[DONE]``:
    the provider's ``stream`` context manager and its iterator in one object (see
    :meth:`kvgate.core.provider.Provider.stream`). A chunk carrying ``error`` (vLLM's way to
    fail mid-stream) raises, after the chunks that arrived before it.

    NOTE: a class, not an async generator in ``aclosing``: see
    :class:`~kvgate.providers.http_upstream.EventStream`.
    """

    __slots__ = ("_done", "_error", "_events", "_name")

    def __init__(self, name: str, events: EventStream) -> None:
        self._name = name
        self._events = events
        self._done = False
        #: An error found after some chunks of a batch: raised once those are relayed.
        self._error: UpstreamError | None = None

    async def __aenter__(self) -> ChunkStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __aiter__(self) -> ChunkStream:
        return self

    async def __anext__(self) -> ChunkBatch:
        if self._error is not None:
            error, self._error = self._error, None
            self._done = True
            raise error
        if self._done:
            raise StopAsyncIteration
        try:
            payloads = await self._events.__anext__()
        except StopAsyncIteration:
            self._done = True
            raise UpstreamServerError(
                f"upstream {self._name} ended the stream without [DONE]") from None
        except BaseException:
            self._done = True
            raise
        # What the gateway reads of the chunks, from their bytes (C where built): the scan
        # stops at [DONE], an error chunk or a payload that is not a JSON object.
        stop, usage_chunks, usage_last_alone, closing, observed = scan(payloads)
        batch = WireBatch(payloads if stop == len(payloads) else payloads[:stop],
                          usage_chunks, usage_last_alone, closing, observed)
        if stop == len(payloads):
            return batch
        if payloads[stop] == _DONE:
            self._done = True
            await self._events.aclose()
            if batch:
                return batch
            raise StopAsyncIteration
        error = _refusal(payloads[stop])
        if not batch:
            self._done = True
            raise error
        self._error = error  # what came before the error still reaches the client
        return batch

    async def aclose(self) -> None:
        self._done = True
        self._error = None
        await self._events.aclose()


def _refusal(data: bytes) -> UpstreamError:
    """What :func:`parse_chunk` raises for a payload the scan stopped at (an error chunk, or
    not a JSON object: the scan parses what it is unsure of with the same orjson)."""
    try:
        parse_chunk(data)
    except UpstreamError as error:
        return error
    raise AssertionError(f"the scan stopped at a chunk that parses: {data[:200]!r}")


def parse_chunk(data: bytes) -> JSONObject:
    """One SSE payload as a chunk object; an ``error`` chunk raises its ``UpstreamError``."""
    chunk = json_object(data, "SSE chunk")
    if "error" in chunk:
        error = chunk["error"]
        code = error.get("code") if isinstance(error, dict) else None
        # vLLM puts the HTTP status in ``code``; OpenAI puts a word there
        # ("rate_limit_exceeded"): anything that is not a status is a 500.
        status = code if isinstance(code, int) and 400 <= code <= 599 else 500
        raise error_for_status(status, upstream_error_message(status, data))
    return chunk
