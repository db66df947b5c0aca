"""A real local HTTP server that speaks the shapes of Anthropic's Messages API.

It checks the headers and the shape of every body it receives (refusing like Anthropic
would), records what it got, and answers with what the test scripted (a blocking JSON reply,
an SSE event list, or an error status) or, when nothing is scripted, with an answer generated
from the request: the words of ``ANSWER`` cut at the request's ``max_tokens`` (stop_reason
"max_tokens" then), the same for blocking and streamed requests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.local_server import serve

API_KEY = "sk-ant-test"
VERSION = "2023-06-01"
MODEL = "claude-test-1"
#: The generated answer, one output token per entry.
ANSWER = ("Claude", " answers", " the", " fake", " request", " in", " eight", " tokens")
Event = tuple[str, dict[str, Any]]


#: Anthropic's error type for each HTTP status it answers with.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}


def error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}


def _generated(body: dict[str, Any]) -> tuple[list[str], str, dict[str, int]]:
    """(answer tokens, stop_reason, usage) of the generated answer to ``body``."""
    limit: int = body["max_tokens"]
    tokens = list(ANSWER[:limit])
    stop_reason = "max_tokens" if limit < len(ANSWER) else "end_turn"
    input_tokens = max(1, len(json.dumps(body["messages"])) // 4)
    return tokens, stop_reason, {"input_tokens": input_tokens, "output_tokens": len(tokens)}


def generated_message(body: dict[str, Any]) -> dict[str, Any]:
    tokens, stop_reason, usage = _generated(body)
    return {
        "id": "msg_gen",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": [{"type": "text", "text": "".join(tokens)}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }


def generated_events(body: dict[str, Any]) -> list[Event]:
    tokens, stop_reason, usage = _generated(body)
    start_usage = {"input_tokens": usage["input_tokens"], "output_tokens": 1}
    message = {"id": "msg_gen", "type": "message", "role": "assistant", "model": body["model"],
               "content": [], "stop_reason": None, "usage": start_usage}
    return [
        ("message_start", {"type": "message_start", "message": message}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        *(
            ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": token}})
            for token in tokens
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta",
                           "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                           "usage": {"output_tokens": usage["output_tokens"]}}),
        ("message_stop", {"type": "message_stop"}),
    ]


@dataclass
class FakeAnthropic:
    """What the fake upstream received, and what it answers next."""

    base_url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    reply_status: int = 200
    #: The blocking reply (or error body); None: generated from the request.
    reply_json: dict[str, Any] | None = None
    #: The stream's events; None: generated from the request.
    events: list[Event] | None = None
    event_delay_s: float = 0.0
    client_left: asyncio.Event = field(default_factory=asyncio.Event)

    def _shape_error(self, body: Any) -> str | None:
        if not isinstance(body, dict):
            return "body must be an object"
        if not isinstance(body.get("model"), str):
            return "model: Field required"
        if not isinstance(body.get("max_tokens"), int):
            return "max_tokens: Field required"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "messages: at least one message is required"
        for index, message in enumerate(messages):
            if message.get("role") not in ("user", "assistant"):
                return f"messages.{index}.role: Input should be 'user' or 'assistant'"
            if not message.get("content"):
                return f"messages.{index}: all messages must have non-empty content"
        return None

    async def messages(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("x-api-key") != API_KEY:
            return web.json_response(
                error_body("authentication_error", "invalid x-api-key"), status=401
            )
        if request.headers.get("anthropic-version") != VERSION:
            return web.json_response(
                error_body("invalid_request_error", "anthropic-version: header is required"),
                status=400,
            )
        body = await request.json()
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        problem = self._shape_error(body)
        if problem:
            return web.json_response(error_body("invalid_request_error", problem), status=400)
        if self.reply_status != 200:
            reply = self.reply_json or error_body(
                ERROR_TYPES.get(self.reply_status, "api_error"), f"fake says {self.reply_status}"
            )
            return web.json_response(reply, status=self.reply_status)
        if not body.get("stream"):
            reply = self.reply_json if self.reply_json is not None else generated_message(body)
            return web.json_response(reply)
        events = self.events if self.events is not None else generated_events(body)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        try:
            for name, data in events:
                await response.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
                await asyncio.sleep(self.event_delay_s)
        except ConnectionResetError:
            self.client_left.set()
        return response

    async def models(self, request: web.Request) -> web.Response:
        if request.headers.get("x-api-key") != API_KEY:
            return web.json_response(error_body("authentication_error", "bad key"), status=401)
        return web.json_response({"data": [{"type": "model", "id": MODEL}], "has_more": False})


@asynccontextmanager
async def serve_fake_anthropic() -> AsyncIterator[FakeAnthropic]:
    """A :class:`FakeAnthropic` listening on a free loopback port (``fake.base_url``)."""
    fake = FakeAnthropic()
    app = web.Application()
    app.router.add_post("/v1/messages", fake.messages)
    app.router.add_get("/v1/models", fake.models)
    async with serve(app) as base_url:
        fake.base_url = base_url
        yield fake
