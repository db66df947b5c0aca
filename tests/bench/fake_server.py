"""An in-test OpenAI-shaped server whose every answer follows instructions in the request.

The request body's ``test`` object says how long to wait before the first content chunk and in
total, how many tokens to send, which deployment to name, and whether to fail; the server
records concurrency and per-session overlap so tests can check how the load was offered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from kvgate.bench.request import BenchRequest, encode_body


@dataclass
class ServerLog:
    in_flight: int = 0
    max_in_flight: int = 0
    requests: int = 0
    arrivals_s: list[float] = field(default_factory=list)
    active_sessions: set[int] = field(default_factory=set)
    session_overlaps: int = 0


LOG_KEY = web.AppKey("log", ServerLog)


def _chunk(payload: dict[str, Any] | str, end: str = "\n\n") -> bytes:
    data = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
    return f"data: {data}{end}".encode()


async def _handle(request: web.Request) -> web.StreamResponse:
    log = request.app[LOG_KEY]
    body = orjson.loads(await request.read())
    spec = body.get("test", {})
    session = spec.get("session")
    log.requests += 1
    log.arrivals_s.append(time.perf_counter())
    log.in_flight += 1
    log.max_in_flight = max(log.max_in_flight, log.in_flight)
    if session is not None:
        if session in log.active_sessions:
            log.session_overlaps += 1
        log.active_sessions.add(session)
    try:
        return await _answer(request, body, spec)
    finally:
        log.in_flight -= 1
        if session is not None:
            log.active_sessions.discard(session)


async def _answer(request: web.Request, body: dict[str, Any], spec: dict[str, Any]
                  ) -> web.StreamResponse:
    started = time.perf_counter()
    ttft_s = spec.get("ttft_ms", 0) / 1000
    total_s = spec.get("total_ms", spec.get("ttft_ms", 0)) / 1000
    tokens = spec.get("tokens", 4)
    headers = {"x-kvgate-deployment": spec.get("deployment", "d0"),
               "x-kvgate-cache": spec.get("cache", "miss")}
    if spec.get("deployment") == "":
        del headers["x-kvgate-deployment"]
    if spec.get("matched_header") is not None:
        headers["x-kvgate-route-matched-tokens"] = str(spec["matched_header"])
    status = spec.get("status", 200)
    if status >= 400:
        return web.json_response({"error": {"message": "injected", "type": "injected_error",
                                            "code": None, "param": None}},
                                 status=status, headers=headers)
    usage = {"prompt_tokens": 7, "completion_tokens": tokens, "total_tokens": 7 + tokens}
    if not body.get("stream"):
        await asyncio.sleep(total_s)
        route: dict[str, Any] = {"strategy": "test"}
        if spec.get("matched_blocks") is not None:
            route["matched_blocks"] = spec["matched_blocks"]
        if spec.get("outcome") is not None:
            route["outcome"] = spec["outcome"]
        return web.json_response({
            "id": "x", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi " * tokens},
                         "finish_reason": "stop"}],
            "usage": usage,
            "kvgate": {"cache": spec.get("cache", "miss"), "route": route},
        }, headers=headers)
    end = "\r\n\r\n" if spec.get("crlf") else "\n\n"

    def chunk(payload: dict[str, Any] | str) -> bytes:
        return _chunk(payload, end)

    response = web.StreamResponse(headers={**headers, "content-type": "text/event-stream"})
    await response.prepare(request)
    base = {"id": "x", "object": "chat.completion.chunk"}
    # The role chunk comes at once with empty content: it must not count as the first token.
    await response.write(chunk({**base, "choices": [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}))
    await asyncio.sleep(max(0.0, started + ttft_s - time.perf_counter()))
    gap_s = (total_s - ttft_s) / max(1, tokens - 1)
    for index in range(tokens):
        if index:
            await asyncio.sleep(max(0.0, started + ttft_s + index * gap_s - time.perf_counter()))
        await response.write(chunk({**base, "choices": [
            {"index": 0, "delta": {"content": " tok"}, "finish_reason": None}]}))
        if spec.get("cut_after") == index + 1:
            return response  # ends without [DONE]
    await response.write(chunk({**base, "choices": [
        {"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    if spec.get("usage", True):
        await response.write(chunk({**base, "choices": [], "usage": usage}))
    await response.write(chunk("[DONE]"))
    return response


@asynccontextmanager
async def fake_server() -> AsyncIterator[tuple[str, ServerLog]]:
    """Serve on a free loopback port; yields (base URL, log)."""
    app = web.Application()
    log = ServerLog()
    app[LOG_KEY] = log
    app.router.add_post("/v1/chat/completions", _handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", log
    finally:
        await runner.cleanup()


def instructed(stream: bool = True, session: int = -1, **spec: Any) -> BenchRequest:
    """A request carrying instructions for the fake server."""
    if session >= 0:
        spec["session"] = session
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream,
            "test": spec}
    return BenchRequest(body=encode_body(body), stream=stream, session=session)
