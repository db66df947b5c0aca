"""vLLM's OpenAI-compatible request parsing and response shapes, for the simulated replica.

Parsing turns a JSON body into a `Generation`: the rendered prompt, the planned answer and the
output options. Formatting builds the exact JSON objects vLLM returns (ids `chatcmpl-...`,
`usage.prompt_tokens_details.cached_tokens`, stream chunks with the role on the first chunk,
an optional usage-only final chunk). The HTTP layer only moves bytes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import orjson

from kvgate.sim.filler import AnswerPlan, plan_answer
from kvgate.sim.prompt import PromptError, PromptRenderer, RenderedPrompt

ApiKind = Literal["chat", "completion"]
_ERROR_TYPES: Mapping[int, str] = MappingProxyType(
    {400: "BadRequestError", 404: "NotFoundError", 405: "MethodNotAllowed",
     413: "RequestEntityTooLarge"}
)


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def body(self) -> bytes:
        kind = _ERROR_TYPES.get(self.status, "InternalServerError")
        return orjson.dumps(
            {"error": {"message": self.message, "type": kind, "param": self.param,
                       "code": self.status}}
        )


@dataclass(frozen=True, slots=True)
class Generation:
    """A parsed generation request, ready for the engine."""

    kind: ApiKind
    response_id: str
    model: str
    created: int
    prompt: RenderedPrompt
    answer: AnswerPlan
    stream: bool
    include_usage: bool
    continuous_usage: bool
    cache_salt: str | None


def parse_generation(
    body: bytes, kind: ApiKind, renderer: PromptRenderer, served_model: str, request_id: str
) -> Generation:
    """Validate and render a /v1/chat/completions or /v1/completions body."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"invalid JSON body: {exc}") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    model = data.get("model") or served_model
    if model != served_model:
        raise ApiError(404, f"The model `{model}` does not exist.", "model")
    if data.get("n", 1) not in (1, None):
        raise ApiError(400, "the simulator serves n=1 only", "n")
    try:
        prompt = _render(data, kind, renderer)
    except PromptError as exc:
        raise ApiError(400, str(exc)) from exc
    max_len = renderer.profile.max_model_len
    if len(prompt.token_ids) >= max_len:
        raise ApiError(
            400,
            f"This model's maximum context length is {max_len} tokens. However, your request "
            f"has {len(prompt.token_ids)} input tokens.",
        )
    max_tokens = _optional_int(data, "max_completion_tokens", "max_tokens")
    room = max_len - len(prompt.token_ids)
    max_tokens = room if max_tokens is None else min(max_tokens, room)
    if max_tokens < 1:
        raise ApiError(400, "max_tokens must be at least 1", "max_tokens")
    answer = plan_answer(
        prompt.answer_seed,
        renderer.tokenizer,
        renderer.eos_token_id,
        max_tokens,
        partial=prompt.partial_answer,
        min_tokens=_optional_int(data, "min_tokens") or 0,
        ignore_eos=bool(data.get("ignore_eos", False)),
    )
    options = data.get("stream_options")
    if not isinstance(options, dict):
        options = {}
    include_usage = bool(options.get("include_usage"))
    prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
    salt = data.get("cache_salt")
    return Generation(
        kind=kind,
        response_id=prefix + request_id,
        model=served_model,
        created=int(time.time()),
        prompt=prompt,
        answer=answer,
        stream=bool(data.get("stream", False)),
        include_usage=include_usage,
        continuous_usage=include_usage and bool(options.get("continuous_usage_stats")),
        cache_salt=salt if isinstance(salt, str) and salt else None,
    )


def _render(data: dict[str, Any], kind: ApiKind, renderer: PromptRenderer) -> RenderedPrompt:
    if kind == "completion":
        return renderer.render_completion(data.get("prompt"))
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise PromptError("messages must be a list")
    continue_final = bool(data.get("continue_final_message", False))
    add_generation = data.get("add_generation_prompt")
    return renderer.render_chat(
        messages,
        add_generation_prompt=(not continue_final) if add_generation is None
        else bool(add_generation),
        continue_final_message=continue_final,
    )


def _optional_int(data: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise ApiError(400, f"{key} must be an integer", key)
        return value
    return None


def usage(gen: Generation, num_output_tokens: int, cached_tokens: int) -> dict[str, Any]:
    prompt_tokens = len(gen.prompt.token_ids)
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + num_output_tokens,
        "completion_tokens": num_output_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def full_response(
    gen: Generation, num_output_tokens: int, finish_reason: str, cached_tokens: int
) -> bytes:
    """The non-streamed body once the request finished after `num_output_tokens` tokens."""
    text = "".join(gen.answer.pieces[:num_output_tokens])
    if gen.kind == "chat":
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text, "tool_calls": []},
            "logprobs": None, "finish_reason": finish_reason, "stop_reason": None,
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason,
                  "stop_reason": None}
        obj = "text_completion"
    return orjson.dumps({
        "id": gen.response_id, "object": obj, "created": gen.created, "model": gen.model,
        "choices": [choice], "usage": usage(gen, num_output_tokens, cached_tokens),
    })


def stream_chunk(
    gen: Generation,
    token_index: int,
    finish_reason: str | None,
    cached_tokens: int,
) -> bytes:
    """SSE event(s) for one generated token; the first also carries the assistant role."""
    piece = gen.answer.pieces[token_index]
    events = []
    if gen.kind == "chat" and token_index == 0:
        events.append(_chunk(gen, {"role": "assistant", "content": ""}, None, 0, cached_tokens))
    delta: dict[str, Any] | str = {"content": piece} if gen.kind == "chat" else piece
    events.append(_chunk(gen, delta, finish_reason, token_index + 1, cached_tokens))
    return b"".join(events)


def _chunk(
    gen: Generation,
    delta: dict[str, Any] | str,
    finish_reason: str | None,
    num_output_tokens: int,
    cached_tokens: int,
) -> bytes:
    if gen.kind == "chat":
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None,
                                  "finish_reason": finish_reason}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish_reason}
        obj = "text_completion"
    if finish_reason is not None:
        choice["stop_reason"] = None
    payload: dict[str, Any] = {"id": gen.response_id, "object": obj, "created": gen.created,
                               "model": gen.model, "choices": [choice]}
    if gen.continuous_usage:
        payload["usage"] = usage(gen, num_output_tokens, cached_tokens)
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def stream_usage_chunk(gen: Generation, num_output_tokens: int, cached_tokens: int) -> bytes:
    """The final `choices: []` chunk sent when stream_options.include_usage is true."""
    obj = "chat.completion.chunk" if gen.kind == "chat" else "text_completion"
    payload = {"id": gen.response_id, "object": obj, "created": gen.created, "model": gen.model,
               "choices": [], "usage": usage(gen, num_output_tokens, cached_tokens)}
    return b"data: " + orjson.dumps(payload) + b"\n\n"


STREAM_DONE = b"data: [DONE]\n\n"
