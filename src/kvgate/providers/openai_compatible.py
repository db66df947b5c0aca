"""Upstreams that speak OpenAI's HTTP API: vLLM, SGLang, TGI, Ollama, llama.cpp, OpenAI itself.

The request body is forwarded as the client sent it (vLLM extras such as ``cache_salt``,
``priority`` or ``continue_final_message`` pass through untouched); only ``model`` and the
stream flags are set by the gateway before the call.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
import orjson

from kvgate.config.schema import OpenAICompatibleSettings
from kvgate.providers.base import JSONObject, UpstreamCall
from kvgate.providers.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamServerError,
    UpstreamTimeout,
    error_for_status,
)

_PATHS = {"chat": "/chat/completions", "completions": "/completions"}
_DONE = b"[DONE]"


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


class HTTPUpstream:
    """A pooled aiohttp session with the timeouts and error translation HTTP providers need."""

    def __init__(
        self,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_connections: int,
        headers: dict[str, str],
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._max_connections = max_connections
        self._headers = {"content-type": "application/json", **headers}
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        # Created lazily: an aiohttp session must be made inside the running event loop.
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, ttl_dns_cache=300, enable_cleanup_closed=True
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                headers=self._headers,
                json_serialize=lambda obj: orjson.dumps(obj).decode(),
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def post_json(self, url: str, payload: bytes) -> JSONObject:
        try:
            async with self.session.post(url, data=payload) as response:
                raw = await response.read()
                if response.status >= 400:
                    raise error_for_status(
                        response.status, upstream_error_message(response.status, raw)
                    )
        except UpstreamError:
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout(f"upstream timed out: {url}") from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamConnectError(f"cannot connect to upstream {url}: {exc.os_error}") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamServerError(f"upstream connection failed: {exc!r}") from exc
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise UpstreamServerError("upstream returned invalid JSON") from exc
        if not isinstance(parsed, dict):
            raise UpstreamServerError("upstream returned a non-object JSON body")
        return parsed

    async def stream_events(self, url: str, payload: bytes) -> AsyncGenerator[bytes, None]:
        """Yield each SSE ``data:`` payload (bytes) until the stream ends.

        Leaving the iterator early closes the response, which closes the connection: the
        upstream sees the disconnect and aborts the request.
        """
        try:
            async with self.session.post(url, data=payload) as response:
                if response.status >= 400:
                    raw = await response.read()
                    raise error_for_status(
                        response.status, upstream_error_message(response.status, raw)
                    )
                async for line in response.content:
                    if line.startswith(b"data:"):
                        yield line[5:].strip()
        except UpstreamError:
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout(f"upstream timed out: {url}") from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamConnectError(f"cannot connect to upstream {url}: {exc.os_error}") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamServerError(f"upstream stream failed: {exc!r}") from exc

    async def get_ok(self, url: str) -> bool:
        try:
            async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
                return response.status < 400
        except (TimeoutError, aiohttp.ClientError):
            return False

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class OpenAICompatibleProvider:
    """Implements :class:`~kvgate.providers.base.Provider` over an OpenAI-shaped HTTP API."""

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

    async def stream(self, call: UpstreamCall) -> AsyncGenerator[JSONObject, None]:
        url = self._urls[call.endpoint]
        events = self._http.stream_events(url, orjson.dumps(call.body))
        try:
            async for data in events:
                if data == _DONE:
                    return
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError as exc:
                    raise UpstreamServerError("upstream sent an invalid SSE chunk") from exc
                if "error" in chunk:
                    status = int(chunk["error"].get("code") or 500) if isinstance(
                        chunk["error"], dict
                    ) else 500
                    raise error_for_status(
                        status if status >= 400 else 500,
                        upstream_error_message(status, data),
                    )
                yield chunk
        finally:
            await events.aclose()
        raise UpstreamServerError(f"upstream {self._name} ended the stream without [DONE]")

    async def check_health(self) -> bool:
        return await self._http.get_ok(self._health_url)

    async def aclose(self) -> None:
        await self._http.aclose()


class OpenAIProvider(OpenAICompatibleProvider):
    """OpenAI's hosted API: the same protocol plus the organization header."""

    def _extra_headers(self, settings: OpenAICompatibleSettings) -> dict[str, str]:
        organization = getattr(settings, "organization", None)
        return {"openai-organization": organization} if organization else {}
