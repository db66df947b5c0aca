"""A replica's rendering: the shared prompt format plus the seed of the answer it generates."""

from __future__ import annotations

import base64

import pytest

from kvgate.sim.filler import answer_seed
from kvgate.sim.prompt import PromptError, PromptRenderer
from kvgate.vllm_compat.mm_hash import image_mm_hash
from kvgate.vllm_compat.sim_prompt import IM_END_ID, LLAMA3_EOT_ID
from kvgate.vllm_compat.sim_tokenizer import SimTokenizer
from tests.sim.conftest import LLAMA, LLAVA

PNG_4X3 = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000040000000308020000003b9639910000001449444154789c"
    "63e4129163800126062480c20100093400428f0b6d120000000049454e44ae426082"
)
IMAGE_MESSAGE = {"role": "user", "content": [
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                        + base64.b64encode(PNG_4X3).decode()}},
    {"type": "text", "text": "what is this?"},
]}


def test_eos_follows_the_profile_template() -> None:
    assert PromptRenderer(LLAVA, SimTokenizer()).eos_token_id == IM_END_ID
    assert PromptRenderer(LLAMA, SimTokenizer()).eos_token_id == LLAMA3_EOT_ID


def test_seed_is_taken_from_the_prompt_and_its_images() -> None:
    renderer = PromptRenderer(LLAVA, SimTokenizer())
    rendered = renderer.render_chat([IMAGE_MESSAGE])
    (item,) = rendered.mm_items
    assert item.identifier == image_mm_hash(PNG_4X3, LLAVA.served_model_name)
    assert rendered.answer_seed == answer_seed(rendered.token_ids, (item.identifier,))
    assert rendered.num_image_tokens == item.length == LLAVA.image_tokens(4, 3)
    completion = renderer.render_completion("abcdefgh")
    assert completion.answer_seed == answer_seed(completion.token_ids)


def test_served_model_name_keys_image_hashes() -> None:
    renamed = LLAVA.with_overrides(served_model_name="my-llava")
    (item,) = PromptRenderer(renamed, SimTokenizer()).render_chat([IMAGE_MESSAGE]).mm_items
    assert item.identifier == image_mm_hash(PNG_4X3, "my-llava")


def test_continuation_keeps_the_fresh_requests_seed() -> None:
    renderer = PromptRenderer(LLAVA, SimTokenizer())
    question = {"role": "user", "content": "tell me a story"}
    continued = renderer.render_chat([question, {"role": "assistant", "content": " the and"}],
                                     add_generation_prompt=False, continue_final_message=True)
    assert continued.partial_answer == " the and"
    assert continued.answer_seed == renderer.render_chat([question]).answer_seed
    assert continued.answer_seed != renderer.render_chat([question, question]).answer_seed


def test_fixed_image_tokens_and_errors_pass_through() -> None:
    renderer = PromptRenderer(LLAVA, SimTokenizer(), image_tokens=100)
    assert renderer.resolve_image("https://example.com/cat.png")[1] == 100
    with pytest.raises(PromptError, match="image"):
        PromptRenderer(LLAMA, SimTokenizer()).render_chat([IMAGE_MESSAGE])
