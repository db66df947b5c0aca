"""The simulated models' prompt format: messages -> token ids and image placeholders."""

from __future__ import annotations

import base64

import pytest

from kvgate.vllm_compat.mm_hash import image_mm_hash
from kvgate.vllm_compat.sim_prompt import (
    IM_END_ID,
    IM_START_ID,
    LLAMA3_BOS_ID,
    LLAMA3_EOT_ID,
    LLAMA_31,
    LLAVA_ONEVISION_QWEN2,
    PromptError,
    SimPromptRenderer,
)
from kvgate.vllm_compat.sim_tokenizer import SimTokenizer

LLAVA_MODEL = "llava-hf/llava-onevision-qwen2-7b-ov-hf"
PNG_4X3 = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000040000000308020000003b9639910000001449444154789c"
    "63e4129163800126062480c20100093400428f0b6d120000000049454e44ae426082"
)
# A 640x480 JPEG's start of image and start-of-frame segment: all the renderer reads (it never
# decodes pixels), so no imaging library is needed to build it.
JPEG_640X480_HEADER = bytes.fromhex("ffd8" "ffc00011" "08" "01e0" "0280" "03" "012200021101031101")


def _data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _llava(image_tokens: int | None = None) -> SimPromptRenderer:
    return SimPromptRenderer(LLAVA_ONEVISION_QWEN2, SimTokenizer(), model_id=LLAVA_MODEL,
                             image_tokens=image_tokens)


def _llama() -> SimPromptRenderer:
    return SimPromptRenderer(LLAMA_31, SimTokenizer(), model_id="meta-llama/Llama-3.1-8B")


def test_formats() -> None:
    assert LLAVA_ONEVISION_QWEN2.accepts_images and not LLAMA_31.accepts_images
    assert LLAVA_ONEVISION_QWEN2.eos_token_id == IM_END_ID
    assert LLAMA_31.eos_token_id == LLAMA3_EOT_ID
    assert LLAVA_ONEVISION_QWEN2.image_tokens(None, None) == 6_561
    assert LLAVA_ONEVISION_QWEN2.image_tokens(384, 384) == 1485
    assert LLAMA_31.image_tokens(384, 384) == 0


def test_chatml_structure() -> None:
    rendered = _llava().render_chat([{"role": "user", "content": "hi"}])
    ids = rendered.token_ids
    assert ids[0] == IM_START_ID and IM_END_ID in ids
    # The generation prompt opens an assistant turn.
    assert ids[-1 - SimTokenizer.count("assistant\n")] == IM_START_ID
    assert rendered.partial_answer == "" and rendered.mm_items == ()
    assert rendered.num_fresh_tokens == len(ids)


def test_llama3_starts_with_bos() -> None:
    rendered = _llama().render_chat([{"role": "user", "content": "hi"}])
    assert rendered.token_ids[0] == LLAMA3_BOS_ID


def test_editing_a_later_message_keeps_earlier_tokens() -> None:
    renderer = _llava()
    system = {"role": "system", "content": "You are a careful assistant. " * 20}
    a = renderer.render_chat([system, {"role": "user", "content": "first question"}]).token_ids
    b = renderer.render_chat([system, {"role": "user", "content": "other question"}]).token_ids
    common = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    assert common > 150


def test_image_placeholder_from_data_url() -> None:
    renderer = _llava()
    rendered = renderer.render_chat([{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": _data_url(PNG_4X3)}},
    ]}])
    (item,) = rendered.mm_items
    assert item.identifier == image_mm_hash(PNG_4X3, LLAVA_MODEL)
    assert item.length == LLAVA_ONEVISION_QWEN2.image_tokens(4, 3)
    # Images come first in their message, as vLLM places them.
    span = rendered.token_ids[item.offset:item.offset + item.length]
    assert set(span) == {LLAVA_ONEVISION_QWEN2.image_token_id}
    assert item.offset == 1 + len(SimTokenizer().encode("user\n"))


def test_model_id_keys_image_hashes() -> None:
    other = SimPromptRenderer(LLAVA_ONEVISION_QWEN2, SimTokenizer(), model_id="another/model")
    url = _data_url(PNG_4X3)
    assert other.resolve_image(url)[0] == image_mm_hash(PNG_4X3, "another/model")
    assert other.resolve_image(url)[0] != _llava().resolve_image(url)[0]


def test_http_image_url_is_hashed_not_fetched() -> None:
    renderer = _llava()
    identifier, tokens = renderer.resolve_image("https://example.com/cat.png")
    assert identifier == renderer.resolve_image("https://example.com/cat.png")[0]
    assert identifier != renderer.resolve_image("https://example.com/dog.png")[0]
    assert tokens == LLAVA_ONEVISION_QWEN2.default_image_tokens
    assert renderer.resolve_image("https://example.com/cat.png", uuid="u1")[0] == "u1"


def test_fixed_image_tokens_override() -> None:
    assert _llava(image_tokens=100).resolve_image(_data_url(PNG_4X3))[1] == 100


def test_continue_final_message_extends_the_fresh_prompt() -> None:
    renderer = _llava()
    history = [{"role": "user", "content": "tell me a story"}]
    fresh = renderer.render_chat(history)
    partial = " the and for"
    cont = renderer.render_chat(
        [*history, {"role": "assistant", "content": partial}],
        add_generation_prompt=False, continue_final_message=True,
    )
    assert cont.partial_answer == partial
    assert cont.token_ids == fresh.token_ids + SimTokenizer().encode(partial)
    assert cont.num_fresh_tokens == len(fresh.token_ids)


@pytest.mark.parametrize("messages", [
    [],
    [{"content": "no role"}],
    [{"role": "user", "content": [{"type": "input_audio"}]}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///x"}}]}],
])
def test_bad_messages(messages: list[object]) -> None:
    with pytest.raises(PromptError):
        _llava().render_chat(messages)


def test_continue_needs_assistant_and_excludes_generation_prompt() -> None:
    renderer = _llava()
    with pytest.raises(PromptError):
        renderer.render_chat([{"role": "user", "content": "x"}], add_generation_prompt=False,
                             continue_final_message=True)
    with pytest.raises(PromptError):
        renderer.render_chat([{"role": "assistant", "content": "x"}],
                             continue_final_message=True)


def test_text_only_model_rejects_images() -> None:
    with pytest.raises(PromptError, match="image"):
        _llama().render_chat([{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}])


def test_completion_prompts() -> None:
    renderer = _llava()
    assert renderer.render_completion("abcdefgh").token_ids == SimTokenizer().encode("abcdefgh")
    assert renderer.render_completion([5, 6, 7]).token_ids == [5, 6, 7]
    assert renderer.render_completion(["abcd"]).token_ids == SimTokenizer().encode("abcd")
    assert _llama().render_completion("abcd").token_ids[0] == LLAMA3_BOS_ID
    with pytest.raises(PromptError):
        renderer.render_completion({"x": 1})


def test_jpeg_size_sets_token_count() -> None:
    _, tokens = _llava().resolve_image(
        "data:image/jpeg;base64," + base64.b64encode(JPEG_640X480_HEADER).decode()
    )
    assert tokens == LLAVA_ONEVISION_QWEN2.image_tokens(640, 480) == 2929
