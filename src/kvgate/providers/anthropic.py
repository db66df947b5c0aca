"""Anthropic's Messages API behind the OpenAI-shaped :class:`~kvgate.core.provider.Provider`.

The HTTP side (pooling, timeouts, status -> exception) is :class:`HTTPUpstream`, shared with
the OpenAI-compatible providers; the shape mapping is :mod:`anthropic_translate`. What lives
here is the I/O and the stream state machine, because Anthropic streams content *blocks*
(with tool input as JSON fragments per block) where OpenAI streams one delta per chunk.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing

import orjson

from kvgate.config.schema import AnthropicSettings
from kvgate.core.provider import ChunkBatch, JSONObject, UpstreamCall
from kvgate.providers.anthropic_translate import (
    OVERLOADED_STATUS,
    error_for_event,
    finish_reason,
    to_chat_completion,
    to_messages_request,
    to_openai_usage,
    tool_call,
)
from kvgate.providers.errors import (
    UpstreamError,
    UpstreamOverloaded,
    UpstreamRejected,
    UpstreamServerError,
)
from kvgate.providers.http_upstream import HTTPUpstream, json_object


class ChunkTranslator:
    """Turns Anthropic stream events, one at a time, into OpenAI ``chat.completion.chunk``s.

    OpenAI numbers tool calls 0, 1, ... while Anthropic numbers every content block, text
    included, so the block index of each tool_use block is mapped to its tool-call ordinal.
    """

    def __init__(self, *, model: str | None, created: int) -> None:
        self._base: JSONObject = {
            "id": None,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }
        self._tool_index_by_block: dict[int, int] = {}
        self._usage: JSONObject = {}
        self._stop_reason: str | None = None
        #: True once ``message_stop`` arrived; any later event is ignored by the caller.
        self.is_finished = False

    def _chunk(self, delta: JSONObject) -> JSONObject:
        return {**self._base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}

    def feed(self, event: JSONObject, raw: bytes) -> list[JSONObject]:
        """The chunks one event produces (often none); raises on an ``error`` event."""
        kind = event.get("type")
        # Ordered by frequency: deltas are nearly every event of a stream.
        if kind == "content_block_delta":
            return self._on_delta(event)
        if kind == "content_block_start":
            return self._on_block_start(event)
        if kind == "message_delta":
            delta = event.get("delta") or {}
            self._stop_reason = delta.get("stop_reason") or self._stop_reason
            self._update_usage(event.get("usage"))
            return []
        if kind == "message_start":
            message = event.get("message") or {}
            self._base["id"] = message.get("id")
            self._base["model"] = message.get("model") or self._base["model"]
            self._update_usage(message.get("usage"))
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "message_stop":
            self.is_finished = True
            finish = {"index": 0, "delta": {}, "finish_reason": finish_reason(self._stop_reason)}
            return [
                {**self._base, "choices": [finish]},
                {**self._base, "choices": [], "usage": to_openai_usage(self._usage)},
            ]
        if kind == "error":
            raise error_for_event(event, raw)
        # ping, content_block_stop, and event types Anthropic may add later carry nothing
        # a chat.completion.chunk can express.
        return []

    def _on_delta(self, event: JSONObject) -> list[JSONObject]:
        delta = event.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            return [self._chunk({"content": text})] if text else []
        if kind == "input_json_delta":
            fragment = delta.get("partial_json")
            if not fragment:
                return []
            tool_index = self._tool_index_by_block.get(event.get("index", -1))
            if tool_index is None:
                raise UpstreamServerError("upstream sent tool input for an unknown content block")
            tool_delta = {"index": tool_index, "function": {"arguments": fragment}}
            return [self._chunk({"tool_calls": [tool_delta]})]
        return []  # thinking and signature deltas have no chat.completion.chunk counterpart

    def _on_block_start(self, event: JSONObject) -> list[JSONObject]:
        block = event.get("content_block") or {}
        kind = block.get("type")
        if kind == "tool_use":
            tool_index = len(self._tool_index_by_block)
            self._tool_index_by_block[event.get("index", -1)] = tool_index
            # The input arrives as input_json_delta fragments; the block's own "input" is {}.
            start = {"index": tool_index, **tool_call(block, "")}
            return [self._chunk({"tool_calls": [start]})]
        if kind == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        return []

    def _update_usage(self, usage: object) -> None:
        # message_delta's counts are cumulative and may omit or null fields message_start set.
        if isinstance(usage, dict):
            self._usage.update((key, value) for key, value in usage.items() if value is not None)


def _as_overloaded(exc: UpstreamError) -> UpstreamOverloaded | None:
    """The overloaded error HTTPUpstream's generic mapping made of a 529, if this is one."""
    if exc.upstream_status == OVERLOADED_STATUS and not isinstance(exc, UpstreamOverloaded):
        return UpstreamOverloaded(exc.message, upstream_status=OVERLOADED_STATUS)
    return None


class AnthropicProvider:
    """Implements :class:`~kvgate.core.provider.Provider` over Anthropic's Messages API.

    Only the chat endpoint exists: Anthropic has no legacy text-completions API.
    """

    def __init__(self, name: str, settings: AnthropicSettings) -> None:
        self._name = name
        self._default_max_tokens = settings.default_max_tokens
        base = settings.api_base.rstrip("/")
        self._messages_url = base + "/v1/messages"
        self._health_url = base + "/v1/models"
        headers = {"anthropic-version": settings.anthropic_version}
        if settings.api_key:
            headers["x-api-key"] = settings.api_key
        self._http = HTTPUpstream(
            connect_timeout_s=settings.connect_timeout_s,
            read_timeout_s=settings.read_timeout_s,
            max_connections=settings.max_connections,
            headers=headers,
        )

    def _payload(self, call: UpstreamCall, *, stream: bool) -> bytes:
        if call.endpoint != "chat":
            raise UpstreamRejected(
                f"provider {self._name!r} (anthropic) serves only /v1/chat/completions: "
                "Anthropic has no legacy completions API",
                upstream_status=400,
            )
        request = to_messages_request(
            call.body, default_max_tokens=self._default_max_tokens, stream=stream
        )
        return orjson.dumps(request)

    async def complete(self, call: UpstreamCall) -> JSONObject:
        payload = self._payload(call, stream=False)
        try:
            message = await self._http.post_json(self._messages_url, payload)
        except UpstreamError as exc:
            overloaded = _as_overloaded(exc)
            if overloaded is None:
                raise
            raise overloaded from exc
        return to_chat_completion(message, created=int(time.time()))

    def stream(self, call: UpstreamCall) -> aclosing[AsyncGenerator[ChunkBatch, None]]:
        return aclosing(self._batches(call))

    async def _batches(self, call: UpstreamCall) -> AsyncGenerator[ChunkBatch, None]:
        payload = self._payload(call, stream=True)
        translator = ChunkTranslator(model=call.body.get("model"), created=int(time.time()))
        events = self._http.stream_events(self._messages_url, payload)
        try:
            async for payloads in events:
                batch: list[JSONObject] = []
                try:
                    for data in payloads:
                        batch += translator.feed(json_object(data, "SSE event"), data)
                        if translator.is_finished:
                            break
                except UpstreamError:
                    if batch:  # what came before the error still reaches the client
                        yield batch
                    raise
                if batch:
                    yield batch
                if translator.is_finished:
                    return
        except UpstreamError as exc:
            overloaded = _as_overloaded(exc)
            if overloaded is None:
                raise
            raise overloaded from exc
        finally:
            # Closing the HTTP iterator closes the connection, which is how Anthropic learns
            # that a client left and stops generating.
            await events.aclose()
        raise UpstreamServerError(f"upstream {self._name} ended the stream without message_stop")

    async def check_health(self) -> bool:
        # NOTE: Anthropic has no unauthenticated liveness probe; listing models is the cheapest
        # authenticated call, and it also catches a revoked key.
        return await self._http.get_ok(self._health_url)

    async def aclose(self) -> None:
        await self._http.aclose()
