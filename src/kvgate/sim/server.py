"""The replica's HTTP face: a raw ASGI app speaking vLLM's OpenAI-compatible API.

Raw ASGI under uvicorn keeps a replica small and fast (no framework, one dict lookup per
request). Generation requests are watched for client disconnects the whole time they run --
like vLLM, a client that goes away aborts its request and frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from contextlib import aclosing, suppress
from typing import Any

import orjson

from kvgate.sim import openai_api as api
from kvgate.sim.engine import RequestRejected
from kvgate.sim.engine_loop import EngineLoop
from kvgate.sim.metrics import render_metrics
from kvgate.sim.prompt import PromptError, PromptRenderer
from kvgate.sim.request import EngineRequest
from kvgate.sim.settings import ReplicaSettings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Handler = Callable[[Scope, Receive, Send], Coroutine[Any, Any, None]]

VLLM_VERSION = "0.33.0"
MAX_BODY_BYTES = 64 * 1024 * 1024
_JSON = [(b"content-type", b"application/json")]
_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class _ClientGone(Exception):
    """The client disconnected before its request body arrived."""


async def _send_body(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
                     ) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise api.ApiError(413, "request body too large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _until_disconnect(receive: Receive, work: Coroutine[Any, Any, None]) -> None:
    """Run `work`, cancelling it if the client disconnects first."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
        with suppress(asyncio.CancelledError):
            await task
    finally:
        task.cancel()
        watcher.cancel()


class SimApp:
    """ASGI application of one simulated vLLM replica."""

    def __init__(self, settings: ReplicaSettings, loop: EngineLoop, renderer: PromptRenderer,
                 kv_events: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.loop = loop
        self.engine = loop.engine
        self.renderer = renderer
        self.model = self.engine.profile.served_model_name
        self.kv_events = kv_events or {}
        self.server_load = 0
        self._created = int(time.time())
        self._ids = itertools.count()
        self._routes: dict[tuple[str, str], Handler] = {
            ("GET", "/health"): self._health,
            ("GET", "/ping"): self._health,
            ("POST", "/ping"): self._health,
            ("GET", "/version"): self._version,
            ("GET", "/v1/models"): self._models,
            ("GET", "/load"): self._load,
            ("GET", "/metrics"): self._metrics,
            ("POST", "/tokenize"): self._tokenize,
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._completions,
            ("POST", "/reset_prefix_cache"): self._reset_prefix_cache,
            ("POST", "/flush_cache"): self._reset_prefix_cache,
            ("GET", "/flush_cache"): self._reset_prefix_cache,
            ("GET", "/get_server_info"): self._server_info,
            ("GET", "/get_model_info"): self._model_info,
            ("GET", "/sim/info"): self._server_info,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        handler = self._routes.get((scope["method"], scope["path"]))
        if handler is None:
            known_path = any(path == scope["path"] for _, path in self._routes)
            status = 405 if known_path else 404
            await _send_body(send, status, api.ApiError(status, "Not Found").body(), _JSON)
            return
        try:
            await handler(scope, receive, send)
        except _ClientGone:
            return
        except api.ApiError as exc:
            await _send_body(send, exc.status, exc.body(), _JSON)

    # -- generation ---------------------------------------------------------------------------

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._generate("chat", scope, receive, send)

    async def _completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._generate("completion", scope, receive, send)

    async def _generate(self, kind: api.ApiKind, scope: Scope, receive: Receive, send: Send
                        ) -> None:
        arrival_s = self.loop.now_s()
        body = await _read_body(receive)
        request_id = _header(scope, b"x-request-id") or uuid.uuid4().hex
        gen = api.parse_generation(body, kind, self.renderer, self.model, request_id)
        request = EngineRequest(
            request_id=f"{gen.response_id}-{next(self._ids)}",
            prompt_token_ids=gen.prompt.token_ids,
            output_token_ids=gen.answer.token_ids,
            final_finish_reason=gen.answer.finish_reason,
            mm_items=gen.prompt.mm_items,
            cache_salt=gen.cache_salt,
        )
        try:
            self.engine.validate(request)
        except RequestRejected as exc:
            raise api.ApiError(400, str(exc)) from exc
        self.server_load += 1
        try:
            respond = self._stream if gen.stream else self._respond
            await _until_disconnect(receive, respond(gen, request, send, request_id, arrival_s))
        finally:
            self.server_load -= 1

    async def _respond(self, gen: api.Generation, request: EngineRequest, send: Send,
                       request_id: str, arrival_s: float) -> None:
        last_index, reason = -1, "length"
        outputs = self.loop.generate(request, gen.prompt.num_image_tokens, arrival_s)
        async with aclosing(outputs) as batches:
            async for batch in batches:
                last = batch[-1]
                last_index = last.first_output_index + len(last.new_token_ids) - 1
                if last.stats is not None:
                    reason = last.stats.finish_reason
        body = api.full_response(gen, last_index + 1, reason, _cached_tokens(request))
        await _send_body(send, 200, body, [*_JSON, (b"x-request-id", request_id.encode())])

    async def _stream(self, gen: api.Generation, request: EngineRequest, send: Send,
                      request_id: str, arrival_s: float) -> None:
        headers = [*_SSE, (b"x-request-id", request_id.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        num_tokens = 0
        outputs = self.loop.generate(request, gen.prompt.num_image_tokens, arrival_s)
        async with aclosing(outputs) as batches:
            async for batch in batches:
                cached = _cached_tokens(request)
                chunks = []
                for output in batch:
                    reason = output.stats.finish_reason if output.stats is not None else None
                    index = output.first_output_index
                    num_tokens = index + len(output.new_token_ids)
                    chunks.append(api.stream_chunk(gen, index, reason, cached))
                body = b"".join(chunks)
                await send({"type": "http.response.body", "body": body, "more_body": True})
        tail = api.STREAM_DONE
        if gen.include_usage:
            tail = api.stream_usage_chunk(gen, num_tokens, _cached_tokens(request)) + tail
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    # -- other endpoints ----------------------------------------------------------------------

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send_body(send, 200, b"", _TEXT)

    async def _version(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send_body(send, 200, orjson.dumps({"version": VLLM_VERSION}), _JSON)

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        card = {"id": self.model, "object": "model", "created": self._created,
                "owned_by": "vllm", "root": self.model, "parent": None,
                "max_model_len": self.engine.profile.max_model_len}
        await _send_body(send, 200, orjson.dumps({"object": "list", "data": [card]}), _JSON)

    async def _load(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send_body(send, 200, orjson.dumps({"server_load": self.server_load}), _JSON)

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = render_metrics(self.engine, self.model, self.server_load)
        await _send_body(send, 200, body, [(b"content-type", b"text/plain; version=0.0.4")])

    async def _tokenize(self, scope: Scope, receive: Receive, send: Send) -> None:
        data = _json_object(await _read_body(receive))
        try:
            if "messages" in data:
                rendered = self.renderer.render_chat(
                    data["messages"],
                    add_generation_prompt=bool(data.get("add_generation_prompt", True)),
                    continue_final_message=bool(data.get("continue_final_message", False)),
                )
            else:
                rendered = self.renderer.render_completion(data.get("prompt"))
        except PromptError as exc:
            raise api.ApiError(400, str(exc)) from exc
        body = {"count": len(rendered.token_ids), "tokens": rendered.token_ids,
                "max_model_len": self.engine.profile.max_model_len, "token_strs": None}
        await _send_body(send, 200, orjson.dumps(body), _JSON)

    async def _reset_prefix_cache(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.engine.reset_prefix_cache(self.loop.now_s()):
            await _send_body(send, 200, orjson.dumps({"success": True}), _JSON)
        else:
            raise api.ApiError(400, "cannot reset the prefix cache while requests are running")

    async def _server_info(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send_body(send, 200, orjson.dumps(self.info()), _JSON)

    async def _model_info(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = {"model_path": self.model, "tokenizer_path": self.model, "is_generation": True}
        await _send_body(send, 200, orjson.dumps(body), _JSON)

    def info(self) -> dict[str, Any]:
        """Server facts routers poll (SGLang's /get_server_info keys) plus simulator state."""
        engine, profile = self.engine, self.engine.profile
        return {
            "model_path": self.model, "served_model_name": self.model, "version": VLLM_VERSION,
            "page_size": profile.block_size,
            "max_total_num_tokens": engine.pool.num_usable_blocks * profile.block_size,
            "max_running_requests": profile.max_num_seqs,
            "chunked_prefill_size": profile.max_num_batched_tokens,
            "max_req_input_len": profile.max_model_len - 1,
            "context_length": profile.max_model_len,
            "internal_states": [{"load": self.server_load}],
            "sim": {
                "replica": self.settings.index, "profile": profile.name,
                "time_scale": self.loop.time_scale, "hash_algo": engine.config.hash_algo,
                "num_gpu_blocks": engine.pool.num_gpu_blocks,
                "cpu_offload_blocks": engine.config.cpu_offload_blocks,
                "num_running": engine.num_running, "num_waiting": engine.num_waiting,
                "kv_cache_usage": engine.kv_usage, "cached_blocks": len(engine.pool.cached),
                "kv_events": self.kv_events,
            },
        }


def _cached_tokens(request: EngineRequest) -> int:
    return max(request.num_cached_tokens, 0) + request.num_offloaded_tokens


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise api.ApiError(400, f"invalid JSON body: {exc}") from exc
    if not isinstance(data, dict):
        raise api.ApiError(400, "request body must be a JSON object")
    return data
