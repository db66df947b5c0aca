"""Profiles: vision-token rule and derived figures."""

from __future__ import annotations

import pytest

from kvgate.sim.profiles import PROFILES, get_profile
from kvgate.vllm_compat.sim_prompt import PROMPT_FORMATS
from kvgate.vllm_compat.vision_tokens import llava_onevision_image_tokens


@pytest.mark.parametrize(
    ("width", "height", "tokens"),
    [(384, 384, 1485), (640, 480, 2929), (1024, 768, 4725), (1920, 1080, 7269),
     (1153, 944, 8748)],
)
def test_llava_onevision_token_counts(width: int, height: int, tokens: int) -> None:
    assert llava_onevision_image_tokens(width, height) == tokens


def test_profile_lookup_and_overrides() -> None:
    assert set(PROFILES) >= {"llava-onevision-7b-a40", "llama-3.1-8b-h100"}
    with pytest.raises(KeyError, match="known"):
        get_profile("nope")
    llava = get_profile("llava-onevision-7b-a40")
    assert llava.image_tokens(None, None) == llava.prompt_format.default_image_tokens
    assert llava.image_tokens(384, 384) == 1485
    assert llava.with_overrides(num_gpu_blocks=10).num_gpu_blocks == 10
    assert llava.num_gpu_blocks != 10  # frozen original untouched
    assert not get_profile("llama-3.1-8b-h100").prompt_format.accepts_images


def test_gateway_prompt_formats_are_the_profiles_formats() -> None:
    """A gateway's ``kvgate-sim:<profile>`` tokenizer renders what that profile's replica does."""
    assert set(PROMPT_FORMATS) == set(PROFILES)
    for name, profile in PROFILES.items():
        assert PROMPT_FORMATS[name] is profile.prompt_format


def test_offload_transfer_is_cheaper_than_recomputing_a_block() -> None:
    for profile in PROFILES.values():
        recompute_s = profile.block_size * profile.compute_s_per_token
        assert profile.block_load_s < recompute_s / 10


def test_slowed_scales_every_duration_and_nothing_else() -> None:
    llava = get_profile("cpu-tiny-llava")
    slow = llava.slowed(3.0)
    assert slow.step_overhead_s == pytest.approx(3 * llava.step_overhead_s)
    assert slow.compute_s_per_token == pytest.approx(3 * llava.compute_s_per_token)
    assert slow.frontend_s == pytest.approx(3 * llava.frontend_s)
    assert slow.vision_encoder_s_per_token == pytest.approx(3 * llava.vision_encoder_s_per_token)
    assert slow.num_gpu_blocks == llava.num_gpu_blocks and slow.block_size == llava.block_size
    assert slow.block_load_s == llava.block_load_s
    assert llava.slowed(1.0) == llava
