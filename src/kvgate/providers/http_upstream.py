"""HTTP plumbing shared by HTTP providers: requests, timeouts, SSE framing, error translation.

Everything network-shaped that can go wrong leaves here as an ``UpstreamError`` subclass, so
providers and failover never see a transport exception.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from kvgate.core.chunks import sse_events
from kvgate.core.provider import JSONObject
from kvgate.providers.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamServerError,
    UpstreamTimeout,
    error_for_status,
)
from kvgate.providers.http_pool import (
    ConnectionFailed,
    ConnectionLost,
    ConnectionPool,
    Exchange,
    Origin,
    ReadTimeout,
)

_HEALTH_TIMEOUT_S = 5.0


def upstream_error_message(status: int, raw: bytes) -> str:
    """The upstream's own error text, from OpenAI's or Anthropic's error shape or raw text."""
    try:
        parsed: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw.decode("utf-8", "replace").strip()
        return text[:500] or f"upstream answered HTTP {status}"
    if isinstance(parsed, dict):
        error = parsed.get("error", parsed)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        detail = parsed.get("detail") or parsed.get("message")
        if isinstance(detail, str):
            return detail
    return f"upstream answered HTTP {status}"


def json_object(raw: bytes, what: str) -> JSONObject:
    """``raw`` parsed as a JSON object, or ``UpstreamServerError`` naming ``what`` it was."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UpstreamServerError(f"upstream sent an invalid JSON {what}") from exc
    if not isinstance(parsed, dict):
        raise UpstreamServerError(f"upstream sent a non-object JSON {what}")
    return parsed


class _Target:
    """One URL with its request line and fixed headers rendered once, at start-up."""

    __slots__ = ("get_request", "origin", "post_prefix", "url")

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url = url
        self.origin, path = Origin.of(url)
        default_port = 443 if self.origin.scheme == "https" else 80
        host = self.origin.host if self.origin.port == default_port else (
            f"{self.origin.host}:{self.origin.port}"
        )
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self.post_prefix = (
            f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
            f"accept: application/json, text/event-stream\r\n{lines}content-length: "
        ).encode()
        self.get_request = f"GET {path} HTTP/1.1\r\nhost: {host}\r\n{lines}\r\n".encode()

    def post(self, payload: bytes) -> bytes:
        return self.post_prefix + b"%d\r\n\r\n" % len(payload) + payload


class HTTPUpstream:
    """Pooled keep-alive HTTP to one upstream, with OpenAI-style error translation."""

    def __init__(
        self,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_connections: int,
        headers: dict[str, str],
    ) -> None:
        self._headers = headers
        self._targets: dict[str, _Target] = {}
        self._pool = ConnectionPool(
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            max_connections=max_connections,
        )

    def _target(self, url: str) -> _Target:
        target = self._targets.get(url)
        if target is None:
            target = self._targets[url] = _Target(url, self._headers)
        return target

    async def _exchange(self, target: _Target, request: bytes) -> Exchange:
        try:
            return await self._pool.exchange(target.origin, request)
        except ConnectionFailed as exc:
            raise UpstreamConnectError(f"{exc} ({target.url})") from exc
        except ReadTimeout as exc:
            raise UpstreamTimeout(f"upstream timed out: {target.url}") from exc
        except ConnectionLost as exc:
            raise UpstreamServerError(f"{exc} ({target.url})") from exc

    async def _raise_for_status(self, exchange: Exchange) -> None:
        if exchange.status < 400:
            return
        raw = await self._read(exchange)
        raise error_for_status(exchange.status, upstream_error_message(exchange.status, raw))

    async def _read(self, exchange: Exchange) -> bytes:
        complete = False
        try:
            raw = await exchange.read()
            complete = True
            return raw
        except ReadTimeout as exc:
            raise UpstreamTimeout("upstream timed out while sending the response") from exc
        except ConnectionLost as exc:
            raise UpstreamServerError(f"upstream response cut short: {exc}") from exc
        finally:
            exchange.close(complete=complete)

    async def post(self, url: str, payload: bytes) -> Exchange:
        """POST ``payload``; return once a response head with a status below 400 arrived
        (the caller closes the exchange), else raise its ``UpstreamError``."""
        target = self._target(url)
        exchange = await self._exchange(target, target.post(payload))
        await self._raise_for_status(exchange)
        return exchange

    async def post_json(self, url: str, payload: bytes) -> JSONObject:
        exchange = await self.post(url, payload)
        return json_object(await self._read(exchange), "response body")

    def stream_events(self, url: str, payload: bytes) -> EventStream:
        """The SSE ``data:`` payloads of a POST's response (see :class:`EventStream`)."""
        return EventStream(self, url, payload)

    async def get_ok(self, url: str) -> bool:
        target = self._target(url)
        try:
            async with asyncio.timeout(_HEALTH_TIMEOUT_S):
                exchange = await self._exchange(target, target.get_request)
                await self._read(exchange)
        except (UpstreamError, TimeoutError):
            return False
        return exchange.status < 400

    async def aclose(self) -> None:
        self._pool.aclose()


class EventStream:
    """An async iterator of the SSE ``data:`` payloads (bytes) of one POST, as one list per
    network read (never empty), until the response ends; the request is sent on the first
    ``__anext__``. ``aclose`` must be awaited when done: closing early closes the
    connection, so the upstream sees the disconnect and aborts the request.

    NOTE: a class, not an async generator: on a stream's path each generator layer cost
    asyncio's first-iteration hook, a frame per step and a throw on close.
    """

    __slots__ = ("_exchange", "_http", "_payload", "_pending", "_url")

    def __init__(self, http: HTTPUpstream, url: str, payload: bytes) -> None:
        self._http = http
        self._url = url
        self._payload = payload
        self._exchange: Exchange | None = None
        #: The unterminated last line of the reads so far; None once the stream is over.
        self._pending: bytes | None = b""

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> list[bytes]:
        exchange = self._exchange
        if exchange is None:
            if self._pending is None:
                raise StopAsyncIteration
            try:
                exchange = self._exchange = await self._http.post(self._url, self._payload)
            except BaseException:
                self._close()
                raise
        while True:
            pending = self._pending
            if pending is None:
                raise StopAsyncIteration
            try:
                chunk = await exchange.next_body()
            except ReadTimeout as exc:
                self._close()
                raise UpstreamTimeout(f"upstream stream stalled: {self._url}") from exc
            except ConnectionLost as exc:
                self._close()
                raise UpstreamServerError(f"upstream stream cut: {exc}") from exc
            if chunk is None:
                self._close(complete=True)  # the response's end was read: reusable
                if pending.startswith(b"data:"):
                    return [pending[5:].strip()]
                raise StopAsyncIteration
            events, self._pending = sse_events(pending, chunk)
            if events:
                return events

    def _close(self, *, complete: bool = False) -> None:
        self._pending = None
        if self._exchange is not None:
            self._exchange.close(complete=complete)

    async def aclose(self) -> None:
        self._close()
