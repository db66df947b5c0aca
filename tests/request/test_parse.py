"""The request parser: every refusal it decides (400, 404, 413, 422) and what it fills in."""

from __future__ import annotations

import base64
import struct
from typing import Any

import blake3
import orjson
import pytest

from kvgate.core.call import Call
from kvgate.errors import GatewayError
from kvgate.request import parse
from kvgate.request.parse import DEFAULT_IMAGE_TOKENS, parse_call, parse_into
from kvgate.vllm_compat.vision_tokens import llava_onevision_image_tokens

MODELS = frozenset({"demo", "other"})
MAX_IMAGE_BYTES = 2048


def parsed(body: Any, endpoint: str = "chat") -> Call:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return parse_call(raw, endpoint, models=MODELS,  # type: ignore[arg-type]
                      max_image_bytes=MAX_IMAGE_BYTES, received_s=1.0, request_id="r1")


def refused(body: Any, endpoint: str = "chat") -> GatewayError:
    with pytest.raises(GatewayError) as info:
        parsed(body, endpoint)
    error = info.value
    shape = orjson.loads(error.body())["error"]
    assert shape == {"message": error.message, "type": "invalid_request_error",
                     "code": error.code, "param": error.param}
    assert error.message
    return error


def chat(*content: object, **fields: object) -> dict[str, object]:
    parts = list(content) if content else "hello"
    return {"model": "demo", "messages": [{"role": "user", "content": parts}], **fields}


def gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\0" * 16


def image(data: bytes, mime: str = "image/gif") -> dict[str, object]:
    url = f"data:{mime};base64,{base64.b64encode(data).decode()}"
    return {"type": "image_url", "image_url": {"url": url}}


# -- what a valid request fills in --------------------------------------------------------------

def test_a_chat_request_fills_the_call() -> None:
    call = parsed(chat(stream=True, stream_options={"include_usage": True}, temperature=0))
    assert (call.request_id, call.endpoint, call.received_s) == ("r1", "chat", 1.0)
    assert call.model == "demo" and call.stream and call.include_usage
    assert call.body["messages"] == [{"role": "user", "content": "hello"}]
    assert call.image_digests == [] and call.image_tokens == []
    plain = parsed({"model": "other", "messages": [{"role": "system", "content": None}]})
    assert plain.model == "other" and not plain.stream and not plain.include_usage


def test_parse_call_makes_an_id_and_a_timestamp_when_not_given() -> None:
    one = parse_call(orjson.dumps(chat()), "chat", models=MODELS, max_image_bytes=1024)
    other = parse_call(orjson.dumps(chat()), "chat", models=MODELS, max_image_bytes=1024)
    assert one.request_id and one.request_id != other.request_id
    assert one.received_s > 0


def test_parse_into_fills_an_existing_call() -> None:
    call = Call(request_id="r9", endpoint="completions", received_s=2.0, tenant="team-a")
    parse_into(call, b'{"model": "demo", "prompt": [1, 2, 3], "stream": true}',
               models=MODELS, max_image_bytes=1024)
    assert call.model == "demo" and call.stream and call.body["prompt"] == [1, 2, 3]
    assert call.tenant == "team-a" and call.request_id == "r9"


@pytest.mark.parametrize("prompt", ["text", ["a", "b"], [1, 2], ["a", 3]])
def test_completion_prompts(prompt: object) -> None:
    assert parsed({"model": "demo", "prompt": prompt}, "completions").body["prompt"] == prompt


@pytest.mark.parametrize("part", [
    {"type": "text", "text": "hi"},
    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    {"type": "file", "file": {"file_id": "f1"}},
    {"type": "refusal", "refusal": "no"},
    {"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}},
    {"type": "audio_url", "audio_url": {"url": "https://example.com/a.wav"}},
])
def test_known_content_parts_pass(part: dict[str, object]) -> None:
    assert parsed(chat(part)).body["messages"][0]["content"] == [part]


# -- 400 ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "param", "code"), [
    (b"{not json", None, "invalid_json"),
    (b"", None, "invalid_json"),
    (b"[1, 2]", None, "invalid_request"),
    (b'"text"', None, "invalid_request"),
    ({"messages": []}, "model", "invalid_request"),
    ({"model": "", "messages": []}, "model", "invalid_request"),
    ({"model": 7, "messages": []}, "model", "invalid_request"),
    ({"model": "demo"}, "messages", "invalid_request"),
    ({"model": "demo", "messages": []}, "messages", "invalid_request"),
    ({"model": "demo", "messages": "hi"}, "messages", "invalid_request"),
    ({"model": "demo", "messages": ["hi"]}, "messages[0]", "invalid_request"),
    ({"model": "demo", "messages": [{"content": "x"}]}, "messages[0].role", "invalid_request"),
    ({"model": "demo", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role",
     "invalid_request"),
    ({"model": "demo", "messages": [{"role": "user", "content": 5}]}, "messages[0].content",
     "invalid_request"),
    (chat("text"), "messages[0].content[0]", "invalid_request"),
    (chat({"text": "no type"}), "messages[0].content[0]", "invalid_request"),
    (chat({"type": 3}), "messages[0].content[0]", "invalid_request"),
    (chat({"type": "text"}), "messages[0].content[0]", "invalid_request"),
    (chat({"type": "text", "text": 1}), "messages[0].content[0]", "invalid_request"),
    (chat(stream="yes"), "stream", "invalid_request"),
    (chat(stream=1), "stream", "invalid_request"),
    (chat(stream_options=3), "stream_options", "invalid_request"),
    (chat(temperature="hot"), "temperature", "invalid_request"),
    (chat(temperature=True), "temperature", "invalid_request"),
    (chat(temperature=2.5), "temperature", "invalid_request"),
    (chat(top_p=-0.1), "top_p", "invalid_request"),
    (chat(presence_penalty=3), "presence_penalty", "invalid_request"),
    (chat(frequency_penalty=-3), "frequency_penalty", "invalid_request"),
    (chat(max_tokens=0), "max_tokens", "invalid_request"),
    (chat(max_tokens=1.5), "max_tokens", "invalid_request"),
    (chat(max_tokens=True), "max_tokens", "invalid_request"),
    (chat(max_completion_tokens=-1), "max_completion_tokens", "invalid_request"),
    (chat(n="2"), "n", "invalid_request"),
])
def test_malformed_chat_requests_are_400(body: Any, param: str | None, code: str) -> None:
    error = refused(body)
    assert (error.status, error.param, error.code) == (400, param, code)


def test_an_unknown_content_part_type_is_400_pointing_at_the_part() -> None:
    body = {"model": "demo", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "bogus"}]}]}
    error = refused(body)
    assert error.status == 400
    assert error.param == "messages[1].content[1].type"
    assert "'bogus'" in error.message


@pytest.mark.parametrize(("part", "param"), [
    ({"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}, "image_url.url"),
    ({"type": "image_url", "image_url": {"url": ""}}, "image_url.url"),
    ({"type": "image_url", "image_url": {}}, "image_url.url"),
    ({"type": "image_url", "image_url": 7}, "image_url.url"),
])
def test_an_image_url_that_is_no_url_is_400(part: dict[str, object], param: str) -> None:
    error = refused(chat({"type": "text", "text": "x"}, part))
    assert (error.status, error.param) == (400, f"messages[0].content[1].{param}")


@pytest.mark.parametrize("body", [
    {"model": "demo"},
    {"model": "demo", "prompt": None},
    {"model": "demo", "prompt": {"a": 1}},
    {"model": "demo", "prompt": []},
    {"model": "demo", "prompt": [True]},
    {"model": "demo", "prompt": [1.5]},
    {"model": "demo", "prompt": [["nested"]]},
])
def test_malformed_completion_prompts_are_400(body: dict[str, object]) -> None:
    error = refused(body, "completions")
    assert (error.status, error.param) == (400, "prompt")


def test_completions_do_not_need_messages_nor_chat_prompts() -> None:
    assert refused({"model": "demo", "prompt": "x"}, "chat").param == "messages"
    assert refused({"model": "demo", "messages": [{"role": "user", "content": "x"}]},
                   "completions").param == "prompt"


# -- 404 ----------------------------------------------------------------------------------------

def test_an_unknown_model_is_404() -> None:
    error = refused({"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]})
    assert (error.status, error.code, error.param) == (404, "model_not_found", "model")
    assert "gpt-9" in error.message


def test_the_model_is_checked_before_the_rest_of_the_body() -> None:
    """Cheap checks first: an unknown model is 404 whatever else is wrong."""
    bad_image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}
    assert refused({**chat(bad_image), "model": "gpt-9"}).status == 404
    huge = image(b"\0" * (MAX_IMAGE_BYTES * 2))
    assert refused({**chat(huge), "model": "gpt-9"}).status == 404
    assert refused({"model": "gpt-9", "messages": "not a list"}).status == 404


# -- 413 and 422: images ------------------------------------------------------------------------

def test_an_oversized_image_is_413_without_decoding() -> None:
    error = refused(chat(image(b"\0" * (MAX_IMAGE_BYTES + 16))))
    assert (error.status, error.code, error.param) == (
        413, "image_too_large", "messages[0].content[0].image_url.url")


@pytest.mark.parametrize("url", [
    "data:image/png;base64,@@@not-base64@@@",
    "data:image/png;base64,AAA",  # bad padding
    "data:image/png,rawbytes",  # not base64
    "data:image/png;base64",  # no comma
    "data:image/png;base64,",  # empty
])
def test_a_broken_data_url_is_422(url: str) -> None:
    error = refused(chat({"type": "image_url", "image_url": {"url": url}}))
    assert (error.status, error.code, error.param) == (
        422, "invalid_image", "messages[0].content[0].image_url.url")


def test_images_are_decoded_only_after_every_cheap_check() -> None:
    bad_image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}
    later_bad_message = {"model": "demo", "messages": [
        {"role": "user", "content": [bad_image]}, {"role": "robot", "content": "x"}]}
    assert refused(later_bad_message).param == "messages[1].role"
    assert refused(chat(bad_image, temperature=9)).status == 400


def test_images_are_decoded_once_in_prompt_order(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[str] = []
    real = parse._image_digest

    def counting(url: Any, param: str, max_image_bytes: int) -> tuple[bytes, int]:
        decoded.append(param)
        return real(url, param, max_image_bytes)

    monkeypatch.setattr(parse, "_image_digest", counting)
    wide, tall = gif(640, 120), gif(100, 900)
    link = "https://example.com/cat.png"
    body = {"model": "demo", "messages": [
        {"role": "user", "content": [image(wide), {"type": "text", "text": "and"},
                                     {"type": "image_url", "image_url": link}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [image(tall, "image/png"), image(wide)]},
    ]}
    call = parsed(body)
    assert decoded == ["messages[0].content[0].image_url.url",
                       "messages[0].content[2].image_url.url",
                       "messages[2].content[0].image_url.url",
                       "messages[2].content[1].image_url.url"]
    digest = blake3.blake3
    assert call.image_digests == [digest(wide).digest(), digest(link.encode()).digest(),
                                  digest(tall).digest(), digest(wide).digest()]
    assert call.image_tokens == [llava_onevision_image_tokens(640, 120), DEFAULT_IMAGE_TOKENS,
                                 llava_onevision_image_tokens(100, 900),
                                 llava_onevision_image_tokens(640, 120)]
    assert call.image_tokens[0] != call.image_tokens[2]


def test_an_unreadable_image_header_gets_the_default_token_estimate() -> None:
    call = parsed(chat(image(b"not an image at all", "image/png")))
    assert call.image_tokens == [DEFAULT_IMAGE_TOKENS]
    assert call.image_digests == [blake3.blake3(b"not an image at all").digest()]

