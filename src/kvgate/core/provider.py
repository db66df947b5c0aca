"""The provider interface: one small Protocol every upstream implements.

A provider speaks to one upstream (an in-process mock, a vLLM server, a hosted API) and always
answers in OpenAI's shapes, so every stage above it handles one format. Failures leave a
provider only as :class:`~kvgate.providers.errors.UpstreamError` subclasses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Endpoint = Literal["chat", "completions"]
JSONObject = dict[str, Any]
#: Stream chunks that arrived together (from one network read), in order; never empty.
#: Streams move in batches so that every layer, down to the client socket, pays its per-item
#: cost (an await, a write) once per read instead of once per token: under load several
#: tokens arrive per read.
ChunkBatch = list[JSONObject]


class WireBatch(list[JSONObject]):
    """A :data:`ChunkBatch` parsed from an upstream's SSE events, which it keeps:
    ``payloads[i]`` is chunk ``i``'s ``data:`` bytes as the upstream wrote them, so the API
    layer writes unchanged chunks without encoding them again. Whoever changes a chunk sets
    ``payloads`` to None. ``usage_chunks``: how many chunks have a ``usage`` key (the API
    layer leaves it out for a client that did not ask)."""

    __slots__ = ("payloads", "usage_chunks")

    def __init__(self) -> None:
        super().__init__()
        self.payloads: list[bytes] | None = None
        self.usage_chunks = 0


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """One attempt at one deployment.

    ``body`` is the client's parsed JSON with ``model`` already set to the upstream model name
    and, for streams, ``stream_options.include_usage`` forced on (the gateway always needs usage
    to price the request; it strips the usage chunk again when the client did not ask).
    Providers must not mutate ``body``: failover reuses it for the next attempt.
    """

    endpoint: Endpoint
    body: JSONObject
    request_id: str


class Provider(Protocol):
    """An upstream that serves OpenAI-shaped completions."""

    async def complete(self, call: UpstreamCall) -> JSONObject:
        """Send a non-streamed request and return the OpenAI response object.

        The result has ``usage`` with ``prompt_tokens`` and ``completion_tokens``. Raises an
        ``UpstreamError`` subclass on any failure.
        """
        ...

    def stream(
        self, call: UpstreamCall
    ) -> AbstractAsyncContextManager[AsyncIterator[ChunkBatch]]:
        """A context manager over the stream's OpenAI chunk objects (``chat.completion.chunk``
        or ``text_completion``) in batches, used as ``async with provider.stream(call) as
        batches: async for batch in batches: ...``; a batch holds the chunks that arrived
        together, never none.

        The final chunk carries ``usage``. Entering or iterating raises an ``UpstreamError``
        subclass if the upstream fails before or during the stream, including a stream that
        ends without the upstream's end marker. Leaving the context, however early, closes the
        stream and cancels the upstream request at once, so the engine frees its KV blocks
        (httpcore's ``stream()`` is the model: the stream cannot outlive its block).
        """
        ...

    async def check_health(self) -> bool:
        """Return True when the upstream answers a cheap liveness probe."""
        ...

    async def aclose(self) -> None:
        """Release connections. Called once at shutdown."""
        ...
