"""One client stream over one or more upstream attempts.

Before the first chunk, a failed attempt is retried elsewhere transparently. After it, a cut
stream is continued on another deployment when the deployment supports vLLM's
``continue_final_message``: the conversation is resent with the text generated so far as a
partial assistant message, and the continuation is spliced into the same client stream (same
chunk id, no second role chunk), so the client reads one uninterrupted answer. When nothing can
continue, the relay raises and the API layer ends the stream with an error event, never
``[DONE]``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from kvgate.core.call import Call
from kvgate.core.chunks import identity, observe
from kvgate.core.deployment import Deployment
from kvgate.core.provider import ChunkBatch, JSONObject, WireBatch
from kvgate.errors import GatewayError
from kvgate.observability.metrics import Metrics
from kvgate.providers.errors import UpstreamError, UpstreamServerError, UpstreamTimeout
from kvgate.resilience.accounting import (
    engine_usage,
    record_usage,
    update_latency,
    upstream_body,
)
from kvgate.resilience.attempts import Attempt, AttemptLoop
from kvgate.resilience.deadline import Deadline

logger = logging.getLogger("kvgate.stream_relay")


class StreamRelay:
    """An async iterator of OpenAI chunk objects; ``aclose`` must be awaited when done."""

    def __init__(self, attempts: AttemptLoop, metrics: Metrics) -> None:
        self._attempts = attempts
        self._call: Call = attempts.call
        self._route_name = attempts.route.name
        self._metrics = metrics
        self.deployment: Deployment | None = None
        #: The attempt being relayed, until it ends (its in-flight count is released then).
        self._attempt: Attempt | None = None
        self._upstream: AsyncIterator[ChunkBatch] | None = None
        self._pending: ChunkBatch | None = None
        self._closed = False
        self._text_parts: list[str] = []
        #: Content chunks relayed from the current attempt (≈ tokens, for usage on resume).
        self._chunks_this_attempt = 0
        #: Whether this attempt's tokens were billed (its usage chunk, or its relayed chunks).
        self._billed_this_attempt = False
        self._chunks_before_resume = 0
        body = self._call.body
        # Only one answer, and for legacy completions one string prompt, can be continued by
        # resending it with the partial answer appended.
        self._resumable = body.get("n") in (None, 1) and (
            self._call.endpoint == "chat" or isinstance(body.get("prompt"), str)
        )
        #: A choice's finish_reason has been relayed: the answer itself is complete.
        self._finished = False
        self._resuming = False
        self._stream_id: Any = None
        self._created: Any = None
        self._model: Any = None
        self._first_chunk_seen = False

    # -- opening attempts ---------------------------------------------------------------

    async def start(self) -> None:
        """Open the first attempt; return once its first chunk has arrived."""
        self._pending = await self._open_attempt()

    def _body_for(self, deployment: Deployment) -> JSONObject:
        body = upstream_body(self._call, deployment)
        partial = "".join(self._text_parts)
        if not partial:
            return body
        emitted = self._chunks_before_resume
        for key in ("max_tokens", "max_completion_tokens"):
            limit = body.get(key)
            if isinstance(limit, int):
                body[key] = max(1, limit - emitted)
        if self._call.endpoint == "chat":
            body["messages"] = [*body["messages"], {"role": "assistant", "content": partial}]
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        else:
            body["prompt"] = body["prompt"] + partial
        return body

    async def _open_attempt(self) -> ChunkBatch:
        attempts = self._attempts
        if self._text_parts:
            # Resuming: deployments that cannot continue a message are out before the strategy
            # ranks (and a half-open circuit lends its probe to) anything.
            attempts.exclude(d for d in attempts.route.deployments if not d.resumes_streams)
        while (attempt := attempts.next()) is not None:
            deployment = attempt.deployment
            await attempt.__aenter__()
            try:
                upstream = await attempt.open_stream(self._body_for(deployment))
                with Deadline(attempt.remaining_s):
                    first = await upstream.__anext__()
            except StopAsyncIteration:
                attempt.failed(UpstreamServerError(f"{deployment.id} sent an empty stream"))
            except TimeoutError:
                attempt.failed(UpstreamTimeout(
                    f"no first chunk from {deployment.id} before the request deadline"
                ), deadline=True)  # even if perf_counter is a hair short of it
            except UpstreamError as error:
                attempt.failed(error)
            except BaseException:
                await attempt.aclose()
                raise
            else:
                self.deployment = deployment
                self._attempt = attempt
                self._upstream = upstream
                self._chunks_this_attempt = 0
                self._billed_this_attempt = False
                return first
            await attempt.aclose()
        raise attempts.exhausted()

    async def _end_attempt(self, error: UpstreamError | None) -> None:
        attempt, self._attempt = self._attempt, None
        if attempt is None:
            return
        if error is None:
            attempt.succeeded()
        else:
            attempt.failed(error)
        await attempt.aclose()

    # -- iteration ------------------------------------------------------------------------

    def __aiter__(self) -> StreamRelay:
        return self

    async def __anext__(self) -> ChunkBatch:
        if self._pending is not None:
            batch, self._pending = self._pending, None
            return self._observe(batch)
        if self._closed or self._upstream is None:
            raise StopAsyncIteration
        try:
            batch = await self._upstream.__anext__()
        except StopAsyncIteration:
            self._closed = True
            # An upstream that ignored include_usage sent none: its relayed chunks are billed,
            # or the tenant's limits would settle this stream at nothing.
            self._bill_cut_attempt()
            await self._end_attempt(None)
            raise
        except UpstreamError as error:
            await self._end_attempt(error)
            if self._finished:
                # Cut after the finish_reason (only the usage chunk or [DONE] was lost): the
                # client holds the whole answer, and continuing a finished message would only
                # append text the model never meant to write.
                self._closed = True
                self._bill_cut_attempt()
                logger.warning(
                    "stream %s from %s cut after its last chunk: %s",
                    self._call.request_id, self.deployment.id if self.deployment else "?",
                    error.message,
                )
                raise StopAsyncIteration from None
            if not (self._resumable and error.retryable):
                self._closed = True
                self._bill_cut_attempt()
                raise
            batch = await self._resume(error)
        return self._observe(batch)

    async def _resume(self, cause: UpstreamError) -> ChunkBatch:
        self._chunks_before_resume += self._chunks_this_attempt
        self._bill_cut_attempt()
        try:
            first = await self._open_attempt()
        except (UpstreamError, GatewayError) as error:
            # The client hears why its stream broke, not why no one could take it over.
            self._closed = True
            self._metrics.stream_resumes_for(self._route_name, "failed").inc()
            logger.warning(
                "stream %s of %s cut after %d chunks and not resumed: %s",
                self._call.request_id, self._route_name, self._chunks_before_resume, error,
            )
            raise cause from None
        self._resuming = True
        self._metrics.stream_resumes_for(self._route_name, "resumed").inc()
        logger.info(
            "stream %s of %s cut after %d chunks, resumed on %s",
            self._call.request_id, self._route_name, self._chunks_before_resume,
            self.deployment.id if self.deployment else "?",
        )
        return first

    def _bill_cut_attempt(self) -> None:
        """A cut attempt (or one the client left) sent no usage; bill its relayed chunks as
        completion tokens. Its prompt tokens are not known, so they are not billed."""
        if self._billed_this_attempt:
            return
        self._billed_this_attempt = True
        if self.deployment is not None and self._chunks_this_attempt:
            record_usage(
                self._metrics, self._call, self._route_name, self.deployment,
                {"prompt_tokens": 0, "completion_tokens": self._chunks_this_attempt},
            )

    def _observe(self, batch: ChunkBatch) -> ChunkBatch:
        """Note what the batch's chunks say (the answer's text so far, its end, its usage),
        and on a continuation make them read as the first attempt's. The look at each chunk
        is one loop (:func:`kvgate.core.chunks.observe`, C where built): a streamed request
        runs it on every read."""
        if self._resuming:
            self._as_first_attempt(batch)
        elif self._stream_id is None:
            self._stream_id, self._created, self._model = identity(batch)
        texts, finished, tool_calls, usages = observe(batch)
        if finished:
            self._finished = True
        if tool_calls:
            self._resumable = False
        if texts:
            self._text_parts += texts
            first = not self._chunks_this_attempt
            self._chunks_this_attempt += len(texts)
            if self._attempt is not None:
                self._attempt.output_tokens = self._chunks_this_attempt
                if first:  # this attempt's prefill is done
                    self._attempt.first_token()
            if not self._first_chunk_seen:
                self._first_token_arrived()
        if usages and self.deployment is not None:
            for usage in usages:
                self._bill(usage, self.deployment)
        return batch

    def _as_first_attempt(self, batch: ChunkBatch) -> None:
        """One answer to the client: a continuation's chunks wear the first attempt's
        identity, and its role chunk is dropped (the client had the first attempt's)."""
        if isinstance(batch, WireBatch):
            batch.payloads = None  # its chunks change below
        for chunk in batch:
            if self._stream_id is None:
                self._stream_id, self._created, self._model = identity([chunk])
            else:
                chunk["id"], chunk["created"] = self._stream_id, self._created
                if "model" in chunk:
                    chunk["model"] = self._model
            choices = chunk.get("choices")
            if choices:
                delta = choices[0].get("delta")
                if delta is not None and "role" in delta:
                    del delta["role"]

    def _bill(self, usage: JSONObject, deployment: Deployment) -> None:
        """The attempt's usage chunk: its tokens are billed (all of them, on a continuation)."""
        self._billed_this_attempt = True
        record_usage(self._metrics, self._call, self._route_name, deployment, usage)
        if self._attempt is not None:
            self._attempt.engine_usage = engine_usage(usage)
        if self._chunks_before_resume:
            # Report the whole answer as completion tokens, not part of the resent prompt.
            usage["completion_tokens"] = (usage.get("completion_tokens") or 0) + (
                self._chunks_before_resume
            )
            usage["prompt_tokens"] = max(
                0, (usage.get("prompt_tokens") or 0) - self._chunks_before_resume
            )
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]

    def _first_token_arrived(self) -> None:
        self._first_chunk_seen = True
        now_s = time.perf_counter()
        if self.deployment is not None and self._attempt is not None:
            update_latency(
                self.deployment, ttft_s=now_s - self._attempt.started_s, ms_per_token=None
            )
            self._metrics.ttft_seconds_for(self._route_name, self.deployment.id).observe(
                now_s - self._call.received_s
            )

    async def aclose(self) -> None:
        """Stop the stream; if an attempt is still running it is cancelled upstream."""
        self._closed = True
        if self._attempt is not None:
            # The client left (or the API layer stopped relaying) mid-answer: the attempt is
            # abandoned, neither credited nor blamed, and its relayed chunks are billed.
            self._bill_cut_attempt()
            attempt, self._attempt = self._attempt, None
            await attempt.aclose()
