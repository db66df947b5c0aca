"""The provider interface: one small Protocol every upstream implements.

A provider speaks to one upstream (an in-process mock, a vLLM server, a hosted API) and always
answers in OpenAI's shapes, so every stage above it handles one format. Failures leave a
provider only as :class:`~kvgate.providers.errors.UpstreamError` subclasses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol, overload

import orjson

Endpoint = Literal["chat", "completions"]
JSONObject = dict[str, Any]
#: Stream chunks that arrived together (from one network read), in order; never empty.
#: Streams move in batches so that every layer, down to the client socket, pays its per-item
#: cost (an await, a write) once per read instead of once per token: under load several
#: tokens arrive per read.
ChunkBatch = Sequence[JSONObject]


class WireBatch(Sequence[JSONObject]):
    """A :data:`ChunkBatch` read from an upstream's SSE events, kept as the upstream wrote
    them: ``payloads[i]`` is chunk ``i``'s ``data:`` bytes, which the API layer writes as they
    are, and what the gateway reads of them was read from the bytes
    (:func:`kvgate.core.chunks.scan`). The chunk objects are parsed only when asked for
    (:meth:`chunks`, or the sequence's items), for a chunk that must change: whoever changes
    one sets ``payloads`` to None, and the API encodes the objects instead.

    ``usage_chunks``: how many chunks have a ``usage`` key; ``usage_last_alone``: the last has
    one and no (or empty) ``choices`` (vLLM's closing usage chunk; the API leaves such
    usage out for a client that did not ask); ``closing``: the last chunk's ``choices`` is
    ``[]``; ``observed``: what the relay reads of them
    (:data:`kvgate.core.chunks.Observed`), None where it must read the objects.
    """

    __slots__ = ("_chunks", "_wire", "closing", "observed", "payloads", "usage_chunks",
                 "usage_last_alone")

    def __init__(self, payloads: list[bytes], usage_chunks: int = 0,
                 usage_last_alone: bool = False, closing: bool = False,
                 observed: tuple[list[Any], bool, bool, list[Any]] | None = None) -> None:
        self.payloads: list[bytes] | None = payloads
        self._wire = payloads
        self.usage_chunks = usage_chunks
        self.usage_last_alone = usage_last_alone
        self.closing = closing
        self.observed = observed
        self._chunks: list[JSONObject] | None = None

    def chunks(self) -> list[JSONObject]:
        """The chunk objects (parsed once, on the first call)."""
        if self._chunks is None:
            self._chunks = [orjson.loads(payload) for payload in self._wire]
        return self._chunks

    def __len__(self) -> int:
        return len(self._wire)

    @overload
    def __getitem__(self, index: int) -> JSONObject: ...
    @overload
    def __getitem__(self, index: slice) -> list[JSONObject]: ...
    def __getitem__(self, index: int | slice) -> JSONObject | list[JSONObject]:
        return self.chunks()[index]

    def __iter__(self) -> Iterator[JSONObject]:
        return iter(self.chunks())


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
