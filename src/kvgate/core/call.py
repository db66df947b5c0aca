"""What travels through the stages: the parsed request (a Call) and what comes back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from kvgate.core.deployment import Deployment
from kvgate.core.provider import ChunkBatch, Endpoint, JSONObject

CacheStatus = Literal["miss", "exact", "semantic", "bypass"]


@dataclass(slots=True)
class Call:
    """One client request, parsed once at the edge and read (never re-parsed) by every stage."""

    request_id: str
    endpoint: Endpoint
    #: ``time.perf_counter()`` when the request arrived.
    received_s: float
    #: The ``Authorization`` header as sent, for the auth stage.
    authorization: bytes | None = None
    #: The body as received, until the parse stage turns it into the fields below.
    raw_body: bytes = b""
    #: The client's JSON body as parsed; stages copy before changing it. The request fields
    #: below are filled by the parser (:func:`kvgate.request.parse.parse_into`).
    body: JSONObject = field(default_factory=dict)
    #: The logical model the client asked for; empty until parsed.
    model: str = ""
    stream: bool = False
    #: Whether the client asked for the usage chunk (``stream_options.include_usage``).
    include_usage: bool = False
    #: Content digest per image part, in prompt order: of the decoded bytes for data URLs, of
    #: the URL string otherwise. Computed once while validating the request.
    image_digests: list[bytes] = field(default_factory=list)
    #: Approximate prompt length of each image, in vision tokens.
    image_tokens: list[int] = field(default_factory=list)
    tenant: str | None = None
    #: The name of the API key the auth stage matched, when the key has one (per-key limits).
    api_key_name: str | None = None
    #: Filled by the routing stage for the ``kvgate.route`` metadata.
    route: dict[str, Any] = field(default_factory=dict)
    #: What a strategy's ``prepare`` computed for this call (e.g. its fingerprint and
    #: affinity matches), read by its ``choose`` on every attempt.
    routing_state: Any = None
    #: Tokens (prompt + completion) and spend billed for this call so far, over every
    #: attempt; the limits stage charges them to the tenant when the call ends.
    billed_tokens: int = 0
    billed_usd: float = 0.0
    #: Upstream attempts that failed before the answer (failover happened when > 0).
    failed_attempts: int = 0
    #: Extra response headers a stage wants the client to see (rate-limit state).
    response_headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(slots=True)
class Completion:
    """A finished, non-streamed answer."""

    body: JSONObject
    deployment: Deployment | None
    cache: CacheStatus
    cost_usd: float
    upstream_model: str


class ChunkStream(Protocol):
    """An async iterator of chunk batches (:data:`~kvgate.core.provider.ChunkBatch`) that
    must be closed (``aclose``) when done."""

    def __aiter__(self) -> AsyncIterator[ChunkBatch]: ...

    def __anext__(self) -> Awaitable[ChunkBatch]: ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class StreamingCompletion:
    """A stream whose first chunk has already arrived (so the deployment is settled).

    ``chunks`` yields batches of OpenAI chunk objects, the usage chunk included; the API layer
    strips it when the client did not ask and writes each batch to the client at once (as
    the upstream wrote it where it can: :class:`~kvgate.core.provider.WireBatch`).
    Closing ``chunks`` early cancels the upstream request.
    """

    chunks: ChunkStream
    deployment: Deployment | None
    cache: CacheStatus
    upstream_model: str


Outcome = Completion | StreamingCompletion


class Stage(Protocol):
    """One step of the journey. A stage either answers the call itself or passes it on."""

    async def __call__(self, call: Call) -> Outcome:
        """Answer ``call``; raise ``GatewayError`` or ``UpstreamError`` to refuse it."""
        ...

    def describe(self) -> dict[str, Any]:
        """The stage's live state for ``/admin/stats``, JSON-ready (empty when it has none)."""
        ...
