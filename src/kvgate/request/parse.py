"""Parse and validate a completion request body exactly once, into a :class:`Call`.

Checks are the ones that decide a status code at the edge (400/404/413/422); anything the
upstream understands better (e.g. a vLLM-only parameter) passes through untouched.
"""

from __future__ import annotations

import binascii
import time
import uuid
from collections.abc import Collection
from typing import Any

import blake3
import orjson

from kvgate.core.call import Call
from kvgate.core.provider import Endpoint, JSONObject
from kvgate.errors import GatewayError, bad_request
from kvgate.vllm_compat.image_header import read_image_header
from kvgate.vllm_compat.vision_tokens import llava_onevision_image_tokens

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
#: Vision tokens assumed for an image whose size cannot be read (http URLs, odd formats):
#: a mid-size LLaVA-style image.
DEFAULT_IMAGE_TOKENS = 1500
_NUMBER_FIELDS = {
    "temperature": (0.0, 2.0), "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0), "frequency_penalty": (-2.0, 2.0),
}
_POSITIVE_INT_FIELDS = ("max_tokens", "max_completion_tokens", "n")


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


def _check_common(body: JSONObject) -> None:
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise bad_request(f"'stream' must be a boolean, got {_type_name(stream)}", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object", param="stream_options")
    for name, (low, high) in _NUMBER_FIELDS.items():
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad_request(f"'{name}' must be a number, got {_type_name(value)}", param=name)
        if not low <= value <= high:
            raise bad_request(f"'{name}' must be between {low} and {high}", param=name)
    for name in _POSITIVE_INT_FIELDS:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad_request(f"'{name}' must be a positive integer", param=name)


def _image_digest(url: Any, param: str, max_image_bytes: int) -> tuple[bytes, int]:
    """(digest, estimated vision tokens) of an image part.

    The digest is of the decoded bytes for data URLs and of the URL otherwise; the token count
    follows LLaVA-OneVision's rule from the size in the image header when it can be read.
    """
    if not isinstance(url, str) or not url:
        raise bad_request("image_url.url must be a non-empty string", param=param)
    if not url.startswith("data:"):
        if not url.startswith(("http://", "https://")):
            raise bad_request(
                "image_url.url must be an http(s) URL or a base64 data URL", param=param
            )
        return blake3.blake3(url.encode()).digest(), DEFAULT_IMAGE_TOKENS
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise GatewayError(
            422, "image data URL must be of the form data:<mime>;base64,<data>",
            code="invalid_image", param=param,
        )
    # Checked before decoding so an oversized image costs no decode time.
    if len(payload) * 3 // 4 > max_image_bytes:
        raise GatewayError(
            413, f"image is larger than the limit of {max_image_bytes} bytes",
            code="image_too_large", param=param,
        )
    try:
        data = binascii.a2b_base64(payload, strict_mode=True)
    except binascii.Error as exc:
        raise GatewayError(
            422, f"image data is not valid base64: {exc}", code="invalid_image", param=param
        ) from None
    if not data:
        raise GatewayError(422, "image data is empty", code="invalid_image", param=param)
    size = read_image_header(data)
    tokens = (
        llava_onevision_image_tokens(size.width, size.height) if size is not None
        else DEFAULT_IMAGE_TOKENS
    )
    return blake3.blake3(data).digest(), tokens


#: Content part types OpenAI's chat API accepts besides text and images; anything else is a
#: 400, as OpenAI and vLLM answer, rather than forwarded for the upstream to reject.
_OTHER_PART_TYPES = frozenset({"input_audio", "file", "refusal", "video_url", "audio_url"})


def _check_messages(body: JSONObject) -> list[tuple[Any, str]]:
    """Check the messages' shape; return each image part's URL with its ``param`` path.

    Images are only collected here: decoding and hashing them is the expensive part of parsing,
    so it waits until every cheap check (the model included) has passed.
    """
    messages = body.get("messages")
    if messages is None:
        raise bad_request("'messages' is required", param="messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array", param="messages")
    images: list[tuple[Any, str]] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise bad_request(f"{where} must be an object", param=where)
        role = message.get("role")
        if role not in _ROLES:
            raise bad_request(
                f"{where}.role must be one of {', '.join(sorted(_ROLES))}", param=f"{where}.role"
            )
        content = message.get("content")
        if content is None or isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise bad_request(
                f"{where}.content must be a string or an array of content parts",
                param=f"{where}.content",
            )
        for part_index, part in enumerate(content):
            part_where = f"{where}.content[{part_index}]"
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise bad_request(f"{part_where} must be an object with a 'type'", param=part_where)
            kind = part["type"]
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise bad_request(f"{part_where}.text must be a string", param=part_where)
            elif kind == "image_url":
                image = part.get("image_url")
                url = image.get("url") if isinstance(image, dict) else image
                images.append((url, f"{part_where}.image_url.url"))
            elif kind not in _OTHER_PART_TYPES:
                raise bad_request(
                    f"{part_where}.type {kind!r} is not a known content part type "
                    "(text, image_url, input_audio, file, refusal, video_url, audio_url)",
                    param=f"{part_where}.type",
                )
    return images


def _check_prompt(body: JSONObject) -> None:
    prompt = body.get("prompt")
    if prompt is None:
        raise bad_request("'prompt' is required", param="prompt")
    if isinstance(prompt, str):
        return
    if isinstance(prompt, list) and prompt and all(
        isinstance(p, str | int) and not isinstance(p, bool) for p in prompt
    ):
        return
    raise bad_request(
        "'prompt' must be a string, an array of strings or an array of token ids", param="prompt"
    )


def parse_call(
    raw: bytes,
    endpoint: Endpoint,
    *,
    models: Collection[str],
    max_image_bytes: int,
    received_s: float | None = None,
    request_id: str | None = None,
) -> Call:
    """Validate ``raw`` and return the Call every later stage reads."""
    call = Call(
        request_id=request_id or uuid.uuid4().hex,
        endpoint=endpoint,
        received_s=time.perf_counter() if received_s is None else received_s,
    )
    parse_into(call, raw, models=models, max_image_bytes=max_image_bytes)
    return call


def parse_into(
    call: Call, raw: bytes, *, models: Collection[str], max_image_bytes: int
) -> None:
    """Validate ``raw`` and fill ``call``'s request fields; raise ``GatewayError`` (400, 404,
    413, 422) on the first problem.

    Cheap checks first: JSON, types, the model; images are decoded and hashed last, once.
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required and must be a string", param="model")
    if model not in models:
        raise GatewayError(
            404, f"The model '{model}' does not exist or is not served by this gateway",
            code="model_not_found", param="model",
        )
    _check_common(body)
    images: list[tuple[Any, str]] = []
    if call.endpoint == "chat":
        images = _check_messages(body)
    else:
        _check_prompt(body)
    call.body = body
    call.model = model
    call.stream = bool(body.get("stream"))
    call.include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    for url, param in images:
        digest, tokens = _image_digest(url, param, max_image_bytes)
        call.image_digests.append(digest)
        call.image_tokens.append(tokens)
