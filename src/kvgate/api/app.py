"""The ASGI application: a fixed route table over the gateway built at start-up.

A raw ASGI app rather than a framework: the hot path is one dict lookup, one body read, one
JSON parse (in the parse stage) and one JSON serialisation, with response headers that do
not change per request built once here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from typing import Any

import orjson

from kvgate.api import admin, admin_tenants
from kvgate.api.asgi import (
    JSON_TYPE,
    SSE_HEADERS,
    ClientDisconnected,
    DisconnectWatch,
    Receive,
    Scope,
    Send,
    read_body,
    send_bytes,
)
from kvgate.api.collector import freeze_startup_heap, set_collector
from kvgate.api.openapi import DocsAssets
from kvgate.config.schema import Settings
from kvgate.core.call import Call, Completion, StreamingCompletion
from kvgate.core.provider import ChunkBatch, Endpoint, WireBatch
from kvgate.errors import GatewayError, error_body
from kvgate.gateway.compose import Gateway, build_gateway
from kvgate.providers.errors import UpstreamError

logger = logging.getLogger("kvgate.api")

_DONE = b"data: [DONE]\n\n"
#: Status recorded for requests whose client went away (nginx's convention).
_CLIENT_CLOSED = 499


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class KVGateApp:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        settings = gateway.settings
        self._pipeline = gateway.pipeline
        self._models = frozenset(gateway.model_names)
        self._max_body_bytes = settings.server.max_body_bytes
        self._metrics = gateway.metrics
        self._docs = DocsAssets(gateway.model_names)
        self._models_body = orjson.dumps({"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "kvgate"}
            for name in gateway.model_names
        ]})
        self._routes = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._text_completion,
            ("GET", "/v1/models"): self._list_models,
            ("GET", "/healthz"): self._healthz,
            ("GET", "/readyz"): self._readyz,
            ("GET", "/metrics"): self._metrics_text,
            ("GET", "/admin/stats"): self._admin_stats,
            ("GET", "/docs"): self._docs_page,
            ("GET", "/openapi.json"): self._openapi,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            handler = self._routes.get((scope["method"], scope["path"]))
            if handler is not None:
                await handler(scope, receive, send)
            else:
                await self._unrouted(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.gateway.start()
                except Exception as exc:
                    logger.exception("gateway start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                set_collector(self.gateway.settings.server.gc_thresholds)
                freeze_startup_heap()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.gateway.aclose()
                except Exception as exc:
                    logger.exception("gateway shutdown failed")
                    await send({"type": "lifespan.shutdown.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- completions ----------------------------------------------------------------------

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._completion(scope, receive, send, "chat")

    async def _text_completion(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._completion(scope, receive, send, "completions")

    async def _completion(
        self, scope: Scope, receive: Receive, send: Send, endpoint: Endpoint
    ) -> None:
        received_s = time.perf_counter()
        request_id = os.urandom(16).hex()
        status = 200
        call: Call | None = None
        watch: DisconnectWatch | None = None
        try:
            raw = await read_body(scope, receive, self._max_body_bytes)
            call = Call(request_id, endpoint, received_s, raw_body=raw,
                        authorization=_header(scope, b"authorization"))
            watch = DisconnectWatch(receive)
            outcome = await self._pipeline(call)
            if isinstance(outcome, Completion):
                watch.finishing = True
                await self._send_completion(send, call, outcome)
            else:
                status = await self._send_stream(send, call, outcome, watch)
        except GatewayError as error:
            status = error.status
            await self._send_error(send, status, error.body(), request_id, error.headers)
        except UpstreamError as error:
            status = error.client_status
            body = error_body(error.message, error.error_type, error.error_type, None)
            await self._send_error(send, status, body, request_id, {})
        except ClientDisconnected:
            status = _CLIENT_CLOSED
        except asyncio.CancelledError:
            if watch is None or not watch.disconnected:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            status = _CLIENT_CLOSED
        except Exception:
            logger.exception("unexpected error serving request %s", request_id)
            status = 500
            body = error_body("internal gateway error", "server_error", "internal_error", None)
            await self._send_error(send, status, body, request_id, {})
        finally:
            if watch is not None:
                watch.stop()
            # The model is known once the parse stage has run; "unknown" before (401, 400).
            model_label = call.model if call is not None and call.model else "unknown"
            metrics = self._metrics
            metrics.requests_for(model_label, endpoint, str(status)).inc()
            metrics.request_seconds_for(model_label).observe(time.perf_counter() - received_s)

    def _metadata(self, call: Call, deployment_id: str, provider: str, cache: str,
                  upstream_model: str, cost_usd: float) -> dict[str, Any]:
        return {
            "cache": cache,
            "provider": provider,
            "deployment": deployment_id,
            "model": upstream_model,
            # Whole microseconds as ms: ``round`` with digits formats the number as text.
            "latency_ms": round((time.perf_counter() - call.received_s) * 1e6) / 1e3,
            "cost_usd": cost_usd,
            "route": call.route,
            "request_id": call.request_id,
        }

    async def _send_completion(self, send: Send, call: Call, outcome: Completion) -> None:
        deployment = outcome.deployment
        deployment_id = deployment.id if deployment else str(call.route.get("deployment", ""))
        provider = deployment.provider_name if deployment else "cache"
        body = outcome.body
        body["kvgate"] = self._metadata(
            call, deployment_id, provider, outcome.cache, outcome.upstream_model, outcome.cost_usd
        )
        headers = [
            (b"x-request-id", call.request_id.encode()),
            (b"x-kvgate-cache", outcome.cache.encode()),
            (b"x-kvgate-deployment", deployment_id.encode()),
            *_route_headers(call),
            *call.response_headers,
        ]
        await send_bytes(send, 200, orjson.dumps(body), headers, JSON_TYPE)

    async def _send_stream(
        self, send: Send, call: Call, outcome: StreamingCompletion, watch: DisconnectWatch
    ) -> int:
        deployment = outcome.deployment
        deployment_id = deployment.id if deployment else str(call.route.get("deployment", ""))
        include_usage = call.include_usage
        chunks = outcome.chunks
        #: Encoded events not yet written: a batch that ends with the usage chunk is held
        #: back, since the end of the stream follows it, so that it leaves with [DONE] in
        #: one write.
        held = b""
        try:
            # Inside the try: if the client is gone before the head is sent, the stream is
            # still closed, which cancels the upstream and settles the call's limits.
            await send({"type": "http.response.start", "status": 200, "headers": [
                *SSE_HEADERS,
                (b"x-request-id", call.request_id.encode()),
                (b"x-kvgate-cache", outcome.cache.encode()),
                (b"x-kvgate-deployment", deployment_id.encode()),
                *_route_headers(call),
                *call.response_headers,
            ]})
            async for batch in chunks:
                # One write per batch: the chunks that arrived together leave together.
                held += _events(batch, include_usage)
                if held and not _closing(batch):
                    await send({"type": "http.response.body", "body": held, "more_body": True})
                    held = b""
        except UpstreamError as error:
            # The status line is gone; the client learns of the failure from an error event
            # and from the missing [DONE], never from a stream that looks complete.
            watch.finishing = True
            event = error_body(error.message, error.error_type, error.error_type, None)
            await send({"type": "http.response.body", "body": held + b"data: " + event + b"\n\n"})
            return error.client_status
        except Exception:
            # A bug, not an upstream's failure; the head is gone, so it ends like one: an error
            # event and no [DONE] (a second response head would corrupt the stream).
            logger.exception("stream %s failed after its head was sent", call.request_id)
            watch.finishing = True
            event = error_body("internal gateway error", "server_error", "internal_error", None)
            await send({"type": "http.response.body", "body": held + b"data: " + event + b"\n\n"})
            return 500
        finally:
            await _aclose(chunks)
        watch.finishing = True
        await send({"type": "http.response.body", "body": held + _DONE})
        return 200

    async def _send_error(
        self, send: Send, status: int, body: bytes, request_id: str, extra: dict[str, str]
    ) -> None:
        headers = [(b"x-request-id", request_id.encode())]
        headers.extend((k.encode(), v.encode()) for k, v in extra.items())
        await send_bytes(send, status, body, headers, JSON_TYPE)

    # -- everything else ------------------------------------------------------------------

    async def _list_models(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, self._models_body, [], JSON_TYPE)

    async def _healthz(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, b'{"status":"ok"}', [], JSON_TYPE)

    async def _readyz(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.gateway.is_ready():
            await send_bytes(send, 200, b'{"status":"ready"}', [], JSON_TYPE)
        else:
            await send_bytes(send, 503, b'{"status":"not ready"}', [], JSON_TYPE)

    async def _metrics_text(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, self._metrics.render(), [],
                         (b"content-type", b"text/plain; version=0.0.4; charset=utf-8"))

    async def _admin_stats(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = admin.admin_refusal(self.gateway.settings, _header(scope, b"authorization"))
        if refusal is not None:
            await send_bytes(send, 401, refusal, [], JSON_TYPE)
            return
        await send_bytes(send, 200, orjson.dumps(admin.stats(self.gateway)), [], JSON_TYPE)

    async def _docs_page(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, self._docs.page, [], (b"content-type", b"text/html"))

    async def _openapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, self._docs.schema, [], JSON_TYPE)

    async def _unrouted(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if path.startswith(admin_tenants.PREFIX):
            status, body = await admin_tenants.handle(
                self.gateway, scope["method"], path, _header(scope, b"authorization"))
            await send_bytes(send, status, body, [], JSON_TYPE)
            return
        if path.startswith("/docs/static/") and scope["method"] == "GET":
            asset = self._docs.asset(path.removeprefix("/docs/static/"))
            if asset is not None:
                await send_bytes(send, 200, asset[0], [], (b"content-type", asset[1].encode()))
                return
        if path.startswith("/v1/models/") and scope["method"] == "GET":
            name = path.removeprefix("/v1/models/")
            if name in self._models:
                body = orjson.dumps({"id": name, "object": "model", "created": 0,
                                     "owned_by": "kvgate"})
                await send_bytes(send, 200, body, [], JSON_TYPE)
                return
            body = error_body(f"The model '{name}' does not exist", "invalid_request_error",
                              "model_not_found", "model")
            await send_bytes(send, 404, body, [], JSON_TYPE)
            return
        known_path = any(p == path for _, p in self._routes)
        status = 405 if known_path else 404
        message = f"method {scope['method']} not allowed" if known_path else f"no route {path}"
        await send_bytes(send, status,
                         error_body(message, "invalid_request_error", "not_found", None),
                         [(b"x-request-id", uuid.uuid4().hex.encode())], JSON_TYPE)


def _route_headers(call: Call) -> list[tuple[bytes, bytes]]:
    """KV-aware routing's verdict, as headers (streams have no ``kvgate`` body object)."""
    route = call.route
    outcome = route.get("outcome")
    if outcome is None:
        return []
    return [
        (b"x-kvgate-route-outcome", str(outcome).encode()),
        (b"x-kvgate-route-matched-tokens", str(route.get("matched_tokens", 0)).encode()),
    ]


def _closing(batch: ChunkBatch) -> bool:
    """Whether the batch ends with the closing usage chunk (``choices`` is ``[]``)."""
    if isinstance(batch, WireBatch):
        return batch.closing
    return batch[-1].get("choices") == []


def _events(batch: ChunkBatch, include_usage: bool) -> bytes:
    """The batch's chunks as SSE events, ``usage`` left out where the client did not ask
    (and a chunk that only carried it): as the upstream wrote them where they are unchanged
    (:class:`~kvgate.core.provider.WireBatch`), else encoded again."""
    if isinstance(batch, WireBatch) and batch.payloads is not None:
        payloads = batch.payloads
        if not include_usage and batch.usage_chunks:
            # vLLM's shape: usage only in a last chunk of its own, which is left out.
            if batch.usage_chunks > 1 or not batch.usage_last_alone:
                return _encoded(batch, include_usage)
            payloads = payloads[:-1]
        if not payloads:
            return b""
        wire = b"data: " + b"\n\ndata: ".join(payloads) + b"\n\n"
        # NOTE: JSON allows a CR between tokens, and a client's SSE parser would end the line
        # there; encoded again, a chunk has none.
        if b"\r" not in wire:
            return wire
    return _encoded(batch, include_usage)


def _encoded(batch: ChunkBatch, include_usage: bool) -> bytes:
    """The batch's chunks encoded as SSE events, ``usage`` left out where the client did not
    ask (and a chunk that only carried it)."""
    events = []
    for chunk in batch:
        if not include_usage and "usage" in chunk:
            del chunk["usage"]
            if not chunk.get("choices"):
                continue
        events.append(orjson.dumps(chunk))
    return b"data: " + b"\n\ndata: ".join(events) + b"\n\n" if events else b""


async def _aclose(chunks: object) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()


def create_app(settings: Settings) -> KVGateApp:
    """Build the gateway and its ASGI app from validated settings."""
    return KVGateApp(build_gateway(settings))
