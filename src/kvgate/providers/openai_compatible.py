"""Upstreams that speak OpenAI's HTTP API: vLLM, SGLang, TGI, Ollama, llama.cpp, OpenAI itself.

The request body is forwarded as the client sent it (vLLM extras such as ``cache_salt``,
``priority`` or ``continue_final_message`` pass through untouched); only ``model`` and the
stream flags are set by the gateway before the call.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

import orjson

from kvgate.config.schema import OpenAICompatibleSettings
from kvgate.core.provider import ChunkBatch, JSONObject, UpstreamCall
from kvgate.providers.errors import (
    UpstreamError,
    UpstreamServerError,
    error_for_status,
)
from kvgate.providers.http_upstream import HTTPUpstream, json_object, upstream_error_message

_PATHS = {"chat": "/chat/completions", "completions": "/completions"}
_DONE = b"[DONE]"


class OpenAICompatibleProvider:
    """Implements :class:`~kvgate.core.provider.Provider` over an OpenAI-shaped HTTP API."""

    def __init__(self, name: str, settings: OpenAICompatibleSettings) -> None:
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

    def stream(self, call: UpstreamCall) -> aclosing[AsyncGenerator[ChunkBatch, None]]:
        return aclosing(self._batches(call))

    async def _batches(self, call: UpstreamCall) -> AsyncGenerator[ChunkBatch, None]:
        url = self._urls[call.endpoint]
        events = self._http.stream_events(url, orjson.dumps(call.body))
        try:
            async for payloads in events:
                batch: ChunkBatch = []
                for data in payloads:
                    if data == _DONE:
                        if batch:
                            yield batch
                        return
                    try:
                        batch.append(self._chunk(data))
                    except UpstreamError:
                        if batch:  # what came before the error still reaches the client
                            yield batch
                        raise
                yield batch
        finally:
            await events.aclose()
        raise UpstreamServerError(f"upstream {self._name} ended the stream without [DONE]")

    @staticmethod
    def _chunk(data: bytes) -> JSONObject:
        chunk = json_object(data, "SSE chunk")
        if "error" in chunk:
            error = chunk["error"]
            code = error.get("code") if isinstance(error, dict) else None
            # vLLM puts the HTTP status in ``code``; OpenAI puts a word there
            # ("rate_limit_exceeded"): anything that is not a status is a 500.
            status = code if isinstance(code, int) and 400 <= code <= 599 else 500
            raise error_for_status(status, upstream_error_message(status, data))
        return chunk

    async def check_health(self) -> bool:
        return await self._http.get_ok(self._health_url)

    async def aclose(self) -> None:
        await self._http.aclose()


class OpenAIProvider(OpenAICompatibleProvider):
    """OpenAI's hosted API: the same protocol plus the organization header."""

    def _extra_headers(self, settings: OpenAICompatibleSettings) -> dict[str, str]:
        organization = getattr(settings, "organization", None)
        return {"openai-organization": organization} if organization else {}
