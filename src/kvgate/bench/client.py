"""Send one request and record what came back: status, TTFT, tokens, where it was routed.

A stream is parsed only until its first content chunk (that instant is the client-side TTFT);
after that the reader keeps just the last few kilobytes, where the usage chunk and ``[DONE]``
arrive, so a long answer costs one ``bytes.count`` per network read and no JSON parsing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from kvgate.bench.request import BenchRequest, RequestRecord

DEPLOYMENT_HEADER = "x-kvgate-deployment"
CACHE_HEADER = "x-kvgate-cache"
MATCHED_TOKENS_HEADER = "x-kvgate-route-matched-tokens"
ROUTE_OUTCOME_HEADER = "x-kvgate-route-outcome"
_TAIL_BYTES = 8192
_DONE_EVENT = b"data: [DONE]"
# Events that carry no generated token: the role chunk, the finish chunk, [DONE].
_NON_CONTENT_EVENTS = 3


class Client:
    """Sends :class:`BenchRequest`s to one gateway over a shared aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str,
                 headers: Mapping[str, str], origin_s: float) -> None:
        self._session = session
        # Paths carry /v1, so a base URL given the way OpenAI SDKs take it loses its /v1.
        self._base_url = base_url.rstrip("/").removesuffix("/v1")
        self._headers = {"content-type": "application/json", **headers}
        self._origin_s = origin_s
        self._urls: dict[str, str] = {}

    async def send(self, request: BenchRequest, record: RequestRecord) -> None:
        """Send ``request`` and fill ``record``; never raises for a failed request."""
        url = self._urls.get(request.path)
        if url is None:
            url = self._urls.setdefault(request.path, self._base_url + request.path)
        started = time.perf_counter()
        record.start_s = started - self._origin_s
        try:
            request_headers = (self._headers if request.headers is None
                               else {**self._headers, **request.headers})
            async with self._session.post(url, data=request.body,
                                          headers=request_headers) as response:
                record.status = response.status
                headers = response.headers
                record.deployment = headers.get(DEPLOYMENT_HEADER, "")
                record.cache = headers.get(CACHE_HEADER, "")
                matched = headers.get(MATCHED_TOKENS_HEADER)
                if matched is not None and matched.isdigit():
                    record.matched_tokens = int(matched)
                record.route_outcome = headers.get(ROUTE_OUTCOME_HEADER, "")
                if response.status >= 400:
                    record.error = _http_error(response.status, await response.read())
                elif request.stream:
                    await self._read_stream(response, record, started)
                else:
                    _read_completion(await response.read(), record)
        except TimeoutError:
            record.error = "timeout"
        except aiohttp.ClientError as exc:
            record.error = f"client_error: {type(exc).__name__}"
        except orjson.JSONDecodeError:
            record.error = "bad_json"
        finally:
            record.end_s = time.perf_counter() - self._origin_s

    async def _read_stream(self, response: aiohttp.ClientResponse, record: RequestRecord,
                           started: float) -> None:
        pending = b""  # bytes not yet split into events, before the first content chunk
        tail = b""
        num_events = 0
        seen_content = False
        async for data in response.content.iter_any():
            if b"\r" in data:
                # SSE allows CRLF line ends; a CR left by a split pair is JSON whitespace.
                data = data.replace(b"\r\n", b"\n")
            num_events += data.count(b"data: ")
            if seen_content:
                tail = (tail + data)[-_TAIL_BYTES:]
                continue
            pending += data
            while not seen_content:
                end = pending.find(b"\n\n")
                if end < 0:
                    break
                event, pending = pending[:end], pending[end + 2:]
                if _event_has_content(event, record):
                    record.ttft_s = time.perf_counter() - started
                    seen_content = True
            if seen_content:
                tail = pending[-_TAIL_BYTES:]
        if not seen_content:
            tail = pending[-_TAIL_BYTES:]
        _read_stream_tail(tail, num_events, record)


def _event_has_content(event: bytes, record: RequestRecord) -> bool:
    if not event.startswith(b"data: ") or event == _DONE_EVENT:
        return False
    chunk = orjson.loads(event[6:])
    if "error" in chunk:
        record.error = _error_text(chunk)
        return False
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if text:
            return True
    return False


def _read_stream_tail(tail: bytes, num_events: int, record: RequestRecord) -> None:
    """Usage, errors and the end marker from the last events of a stream."""
    usage: dict[str, Any] | None = None
    for event in reversed(tail.split(b"\n\n")):
        if usage is None and b'"usage":{' in event and event.startswith(b"data: "):
            try:
                usage = orjson.loads(event[6:]).get("usage")
            except orjson.JSONDecodeError:
                continue  # cut at the front of the tail
        elif b'"error"' in event and event.startswith(b"data: ") and not record.error:
            try:
                record.error = _error_text(orjson.loads(event[6:]))
            except orjson.JSONDecodeError:
                continue
    if usage:
        record.output_tokens = int(usage.get("completion_tokens") or 0)
        record.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    else:
        # NOTE: an estimate (one token per content event) for servers that ignore
        # stream_options.include_usage; the summary counts how often it was needed.
        record.usage_missing = True
        record.output_tokens = max(0, num_events - _NON_CONTENT_EVENTS)
    if not record.error and _DONE_EVENT not in tail:
        record.error = "stream_incomplete"


def _read_completion(body: bytes, record: RequestRecord) -> None:
    data = orjson.loads(body)
    usage = data.get("usage") or {}
    record.output_tokens = int(usage.get("completion_tokens") or 0)
    record.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    meta = data.get("kvgate")
    if isinstance(meta, dict):
        record.cache = record.cache or str(meta.get("cache", ""))
        record.deployment = record.deployment or str(meta.get("deployment", ""))
        route = meta.get("route")
        if isinstance(route, dict):
            record.route_outcome = record.route_outcome or str(route.get("outcome") or "")
            matched, blocks = route.get("matched_tokens"), route.get("matched_blocks")
            if record.matched_tokens is None and isinstance(matched, int):
                record.matched_tokens = matched
            elif record.matched_tokens is None and isinstance(blocks, int):
                record.matched_blocks = blocks


def _error_text(payload: dict[str, Any]) -> str:
    error = payload.get("error")
    if isinstance(error, dict):
        return str(error.get("type") or error.get("code") or "error")
    return "error"


def _http_error(status: int, body: bytes) -> str:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return f"http_{status}"
    if not isinstance(payload, dict):
        return f"http_{status}"
    return f"http_{status}: {_error_text(payload)}"
