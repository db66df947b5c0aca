"""Pure translation between OpenAI chat shapes and Anthropic's Messages API; no I/O here.

Kept apart from :mod:`kvgate.providers.anthropic` so every mapping can be read (and tested)
without a network: the request goes OpenAI -> Anthropic once, the response and each stream
event come back Anthropic -> OpenAI. Requests Anthropic cannot express (``n > 1``, a ``file://``
image, an audio part) are refused here with 400 rather than silently changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from kvgate.core.provider import JSONObject
from kvgate.providers.errors import (
    UpstreamError,
    UpstreamOverloaded,
    UpstreamRejected,
    UpstreamServerError,
    error_for_status,
)
from kvgate.providers.http_upstream import upstream_error_message

#: Anthropic's "overloaded" status: the API is up but shedding load, which failover treats
#: exactly like a 503.
OVERLOADED_STATUS = 529

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

#: The HTTP status Anthropic pairs with each error type; a mid-stream ``event: error`` carries
#: only the type, and failover decides by the status's exception class.
_STATUS_BY_ERROR_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": OVERLOADED_STATUS,
}

_IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_EMPTY_INPUT_SCHEMA: JSONObject = {"type": "object", "properties": {}}


def error_for_anthropic_status(status: int, message: str) -> UpstreamError:
    """:func:`error_for_status`, plus Anthropic's 529 as :class:`UpstreamOverloaded`."""
    if status == OVERLOADED_STATUS:
        return UpstreamOverloaded(message, upstream_status=status)
    return error_for_status(status, message)


def error_for_event(event: JSONObject, raw: bytes) -> UpstreamError:
    """The exception for a mid-stream ``{"type": "error", "error": {"type", "message"}}``."""
    error = event.get("error")
    error_type = error.get("type") if isinstance(error, dict) else None
    status = _STATUS_BY_ERROR_TYPE.get(error_type, 500) if isinstance(error_type, str) else 500
    return error_for_anthropic_status(status, upstream_error_message(status, raw))


def _reject(message: str) -> UpstreamRejected:
    return UpstreamRejected(message, upstream_status=400)


# --- request: OpenAI chat -> Anthropic Messages ------------------------------------------------


def to_messages_request(body: JSONObject, *, default_max_tokens: int, stream: bool) -> JSONObject:
    """Build the Messages API body for an OpenAI chat body (which is left untouched).

    Fields with no Anthropic counterpart (``seed``, ``presence_penalty``, ``logprobs``, ...) are
    dropped, as OpenAI-compatible servers do with unknown sampling knobs.
    """
    if body.get("n") not in (None, 1):
        raise _reject("Anthropic models return one choice per request; n must be 1")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _reject("messages must be a non-empty list")
    system, turns = _translate_messages(messages)

    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    request: JSONObject = {
        "model": body.get("model"),
        # Required by the Messages API, unlike OpenAI's, hence the configured default.
        "max_tokens": default_max_tokens if max_tokens is None else max_tokens,
        "messages": turns,
    }
    if system:
        request["system"] = system
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            request[name] = body[name]
    stop = body.get("stop")
    if stop:
        request["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if isinstance(body.get("user"), str):
        request["metadata"] = {"user_id": body["user"]}
    tools = body.get("tools")
    if tools:
        request["tools"] = [_tool(tool, index) for index, tool in enumerate(tools)]
        tool_choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if tool_choice is not None:
            request["tool_choice"] = tool_choice
    if stream:
        request["stream"] = True
    return request


def _translate_messages(messages: list[Any]) -> tuple[str, list[JSONObject]]:
    """Split OpenAI messages into Anthropic's top-level system text and alternating turns."""
    system_texts: list[str] = []
    turns: list[JSONObject] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _reject(f"{where} must be an object")
        role = message.get("role")
        if role in ("system", "developer"):
            text = _text_of(message.get("content"), where)
            if text:
                system_texts.append(text)
            continue
        if role == "user":
            _append_turn(turns, "user", _user_blocks(message.get("content"), where))
        elif role == "assistant":
            _append_turn(turns, "assistant", _assistant_blocks(message, where))
        elif role == "tool":
            # Tool results travel in a user turn; consecutive ones merge into that one turn,
            # which is where Anthropic expects every result for the preceding tool_use blocks.
            _append_turn(turns, "user", [_tool_result_block(message, where)])
        else:
            raise _reject(f"{where}.role {role!r} is not supported by Anthropic models")
    return "\n\n".join(system_texts), turns


def _append_turn(turns: list[JSONObject], role: str, blocks: list[JSONObject]) -> None:
    # NOTE: empty turns are dropped and same-role neighbours merged: Anthropic rejects empty
    # content, and clients often replay an assistant turn whose content was "".
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _text_of(content: Any, where: str) -> str:
    """The text of a content that may only hold text (system, developer and tool messages)."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise _reject(f"{where}.content must be a string or a list of parts")
    texts: list[str] = []
    for index, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise _reject(f"{where}.content[{index}] must be a text part here")
        texts.append(str(part.get("text", "")))
    return "\n".join(texts)


def _text_blocks(texts: Iterable[str]) -> list[JSONObject]:
    # Anthropic refuses empty text blocks, which OpenAI clients send freely.
    return [{"type": "text", "text": text} for text in texts if text]


def _user_blocks(content: Any, where: str) -> list[JSONObject]:
    if content is None or isinstance(content, str):
        return _text_blocks([content or ""])
    if not isinstance(content, list):
        raise _reject(f"{where}.content must be a string or a list of parts")
    blocks: list[JSONObject] = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.extend(_text_blocks([str(part.get("text", ""))]))
        elif kind == "image_url":
            blocks.append(_image_block(part.get("image_url"), f"{where}.content[{index}]"))
        else:
            raise _reject(f"{where}.content[{index}]: part type {kind!r} is not supported")
    return blocks


def _image_block(image_url: Any, where: str) -> JSONObject:
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str):
        raise _reject(f"{where}.image_url.url must be a string")
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    if not url.startswith("data:"):
        raise _reject(f"{where}: image URLs must be http(s) or base64 data URLs")
    header, has_comma, data = url[5:].partition(",")
    media_type, *params = header.split(";")
    media_type = media_type.strip().lower()
    if media_type == "image/jpg":
        media_type = "image/jpeg"
    if not has_comma or "base64" not in params:
        raise _reject(f"{where}: image data URLs must be base64-encoded")
    if media_type not in _IMAGE_MEDIA_TYPES:
        allowed = ", ".join(sorted(_IMAGE_MEDIA_TYPES))
        raise _reject(f"{where}: image type {media_type!r} is not supported ({allowed})")
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _assistant_blocks(message: JSONObject, where: str) -> list[JSONObject]:
    content = message.get("content")
    if content is None or isinstance(content, str):
        blocks = _text_blocks([content or ""])
    elif isinstance(content, list):
        # Assistant parts are text or refusal; both are plain text to Anthropic.
        blocks = _text_blocks(
            str(part.get("text") or part.get("refusal") or "")
            for part in content
            if isinstance(part, dict)
        )
    else:
        raise _reject(f"{where}.content must be a string or a list of parts")
    for index, call in enumerate(message.get("tool_calls") or ()):
        blocks.append(_tool_use_block(call, f"{where}.tool_calls[{index}]"))
    return blocks


def _tool_use_block(call: Any, where: str) -> JSONObject:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or call.get("type", "function") != "function":
        raise _reject(f"{where} must be a function tool call")
    arguments = function.get("arguments") or "{}"
    try:
        tool_input = orjson.loads(arguments)
    except orjson.JSONDecodeError as exc:
        raise _reject(f"{where}.function.arguments is not valid JSON") from exc
    if not isinstance(tool_input, dict):
        raise _reject(f"{where}.function.arguments must encode a JSON object")
    return {
        "type": "tool_use",
        "id": call.get("id"),
        "name": function.get("name"),
        "input": tool_input,
    }


def _tool_result_block(message: JSONObject, where: str) -> JSONObject:
    block: JSONObject = {"type": "tool_result", "tool_use_id": message.get("tool_call_id")}
    text = _text_of(message.get("content"), where)
    if text:
        block["content"] = text
    return block


def _tool(tool: Any, index: int) -> JSONObject:
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(function, dict) or tool.get("type") != "function":
        raise _reject(f"tools[{index}] must be a function tool")
    translated: JSONObject = {
        "name": function.get("name"),
        "input_schema": function.get("parameters") or _EMPTY_INPUT_SCHEMA,
    }
    if function.get("description"):
        translated["description"] = function["description"]
    return translated


def _tool_choice(choice: Any, parallel_tool_calls: Any) -> JSONObject | None:
    is_serial = parallel_tool_calls is False
    if choice is None:
        # Anthropic's default is already "auto" with parallel calls allowed.
        return {"type": "auto", "disable_parallel_tool_use": True} if is_serial else None
    if choice == "auto":
        translated: JSONObject = {"type": "auto"}
    elif choice == "required":
        translated = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        translated = {"type": "tool", "name": choice["function"].get("name")}
    else:
        raise _reject(f"tool_choice {choice!r} is not supported")
    if is_serial:
        translated["disable_parallel_tool_use"] = True
    return translated


# --- response: Anthropic Message -> OpenAI chat.completion -------------------------------------


def finish_reason(stop_reason: Any) -> str:
    """OpenAI's finish_reason for an Anthropic stop_reason (unknown ones read as "stop")."""
    return _FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def to_openai_usage(usage: JSONObject) -> JSONObject:
    """OpenAI usage from Anthropic's.

    Anthropic's ``input_tokens`` counts only the uncached part of the prompt, while OpenAI's
    ``prompt_tokens`` counts all of it and reports the cached share inside it, so the cache
    reads and writes are added back in.
    """
    cache_read = int(usage.get("cache_read_input_tokens") or 0)
    cache_write = int(usage.get("cache_creation_input_tokens") or 0)
    prompt_tokens = int(usage.get("input_tokens") or 0) + cache_read + cache_write
    completion_tokens = int(usage.get("output_tokens") or 0)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cache_read},
    }


def tool_call(block: JSONObject, arguments: str) -> JSONObject:
    return {
        "id": block.get("id"),
        "type": "function",
        "function": {"name": block.get("name"), "arguments": arguments},
    }


def to_chat_completion(message: JSONObject, *, created: int) -> JSONObject:
    """The ``chat.completion`` object for an Anthropic ``Message``."""
    if message.get("type") != "message" or not isinstance(message.get("content"), list):
        raise UpstreamServerError("upstream answered with something other than a Message")
    texts: list[str] = []
    tool_calls: list[JSONObject] = []
    for block in message["content"]:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            tool_calls.append(tool_call(block, orjson.dumps(block.get("input") or {}).decode()))
        # Other blocks (thinking, server tool results) have no chat.completion counterpart.
    reply: JSONObject = {
        "role": "assistant",
        # OpenAI sends null content beside tool calls, and a string otherwise.
        "content": "".join(texts) if texts or not tool_calls else None,
    }
    if tool_calls:
        reply["tool_calls"] = tool_calls
    return {
        "id": message.get("id"),
        "object": "chat.completion",
        "created": created,
        "model": message.get("model"),
        "choices": [
            {
                "index": 0,
                "message": reply,
                "finish_reason": finish_reason(message.get("stop_reason")),
                "logprobs": None,
            }
        ],
        "usage": to_openai_usage(message.get("usage") or {}),
    }
