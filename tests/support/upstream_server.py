"""A small OpenAI-shaped upstream for tests, run as its own process.

It answers /v1/chat/completions and /v1/completions (blocking and SSE), records every body it
receives and every stream the client abandoned, and can be told how to misbehave through
``POST /_control``: ``{"status": 500}`` answers every request with that status, ``{"delay_s":
X}`` sleeps before answering, ``{"chunk_delay_s": X}`` paces stream chunks, ``{"cut_after": N}``
drops the connection after N content chunks, ``{"stream_id": S}`` gives stream chunks that
id (``up-s`` otherwise). ``GET /_log`` returns what was recorded. Chat
requests with vLLM's ``continue_final_message`` continue the partial assistant message.
An answer cut by ``max_tokens`` ends with finish_reason "length", as vLLM's does.

``build_app()`` keeps its :class:`Upstream` under ``app[UPSTREAM]``, so a test that serves the
app in its own event loop (``tests.support.local_server.serve``) can read and steer it directly.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]


def answer_tokens(body: dict[str, Any]) -> list[str]:
    """``max_tokens`` words (default 8), continuing a partial answer like vLLM does.

    With ``continue_final_message`` and a final assistant message that is a prefix of the
    answer, the words after it are returned (``max_tokens`` new ones, or the rest of the
    default 8), so a resumed stream splices into the same text.
    """
    limit = body.get("max_tokens")
    start = 0
    messages = body.get("messages") or []
    if body.get("continue_final_message") and messages and messages[-1]["role"] == "assistant":
        partial = messages[-1].get("content") or ""
        text = ""
        while len(text) < len(partial):
            text += (" " if start else "") + WORDS[start % len(WORDS)]
            start += 1
        if text != partial:
            start = 0
    count = limit or max(0, 8 - start)
    return [(" " if i else "") + WORDS[i % len(WORDS)] for i in range(start, start + count)]


class Upstream:
    def __init__(self) -> None:
        self.control: dict[str, Any] = {}
        self.received: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.streams_started = 0
        self.streams_completed = 0
        self.streams_abandoned = 0
        #: Set when a client leaves a stream before its end (in-process use).
        self.client_left = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.received.append(body)
        self.headers.append(dict(request.headers))
        if self.control.get("delay_s"):
            await asyncio.sleep(self.control["delay_s"])
        status = self.control.get("status")
        if status:
            return web.json_response(
                {"error": {"message": f"test upstream says {status}", "type": "server_error"}},
                status=status,
            )
        chat = request.path.endswith("chat/completions")
        tokens = answer_tokens(body)
        # The answer fills max_tokens when one is set (as the mock provider's does), so it
        # was cut there.
        finish = "length" if body.get("max_tokens") else "stop"
        usage = {"prompt_tokens": 7, "completion_tokens": len(tokens),
                 "total_tokens": 7 + len(tokens),
                 "prompt_tokens_details": {"cached_tokens": 3}}
        if not body.get("stream"):
            text = "".join(tokens)
            choice = ({"index": 0, "message": {"role": "assistant", "content": text},
                       "finish_reason": finish} if chat else
                      {"index": 0, "text": text, "finish_reason": finish})
            return web.json_response({
                "id": "up-1", "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": body.get("model"),
                "choices": [choice], "usage": usage,
            })
        return await self._stream(request, body, tokens, usage, chat, finish)

    async def _stream(self, request: web.Request, body: dict[str, Any], tokens: list[str],
                      usage: dict[str, Any], chat: bool, finish: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        self.streams_started += 1
        base = {"id": self.control.get("stream_id", "up-s"),
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": body.get("model")}
        try:
            for index, token in enumerate(tokens):
                if self.control.get("cut_after") is not None and index >= self.control["cut_after"]:
                    assert request.transport is not None
                    request.transport.close()
                    return response
                if self.control.get("chunk_delay_s"):
                    await asyncio.sleep(self.control["chunk_delay_s"])
                choice = ({"index": 0, "delta": {"content": token}, "finish_reason": None}
                          if chat else {"index": 0, "text": token, "finish_reason": None})
                await response.write(b"data: " + orjson.dumps({**base, "choices": [choice]})
                                     + b"\n\n")
            final = ({"index": 0, "delta": {}, "finish_reason": finish} if chat
                     else {"index": 0, "text": "", "finish_reason": finish})
            await response.write(b"data: " + orjson.dumps({**base, "choices": [final]}) + b"\n\n")
            if (body.get("stream_options") or {}).get("include_usage"):
                await response.write(
                    b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n"
                )
            await response.write(b"data: [DONE]\n\n")
            self.streams_completed += 1
        except (ConnectionResetError, asyncio.CancelledError):
            self.streams_abandoned += 1
            self.client_left.set()
            raise
        return response

    async def set_control(self, request: web.Request) -> web.Response:
        self.control = orjson.loads(await request.read())
        return web.json_response({"ok": True})

    async def log(self, request: web.Request) -> web.Response:
        return web.json_response({
            "received": self.received, "headers": self.headers,
            "streams_started": self.streams_started,
            "streams_completed": self.streams_completed,
            "streams_abandoned": self.streams_abandoned,
        })

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "up-model"}]})


UPSTREAM = web.AppKey("upstream", Upstream)


def build_app() -> web.Application:
    upstream = Upstream()
    app = web.Application()
    app[UPSTREAM] = upstream
    app.router.add_post("/v1/chat/completions", upstream.handle)
    app.router.add_post("/v1/completions", upstream.handle)
    app.router.add_get("/v1/models", upstream.models)
    app.router.add_post("/_control", upstream.set_control)
    app.router.add_get("/_log", upstream.log)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(build_app(), host="127.0.0.1", port=args.port, print=None)
