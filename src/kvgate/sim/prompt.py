"""A replica's prompt rendering: the simulated model's prompt format, plus the answer's seed.

Messages become token ids and image placeholders in ``kvgate.vllm_compat.sim_prompt``, which a
gateway with a ``kvgate-sim:`` tokenizer shares (it must compute the replica's ids without
importing the simulator). What only a replica needs is added here: the seed that picks the
answer it generates, taken from the fresh prompt so that a continuation
(``continue_final_message``) resumes the very answer a fresh request gets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kvgate.sim.filler import answer_seed
from kvgate.sim.profiles import Profile
from kvgate.vllm_compat.hashing import MMPlaceholder
from kvgate.vllm_compat.sim_prompt import PromptError, SimPrompt, SimPromptRenderer
from kvgate.vllm_compat.sim_tokenizer import SimTokenizer


@dataclass(frozen=True, slots=True)
class RenderedPrompt:
    """Token ids, image placeholders and the seed of the answer a fresh request would get."""

    token_ids: list[int]
    mm_items: tuple[MMPlaceholder, ...]
    answer_seed: int
    partial_answer: str = ""

    @property
    def num_image_tokens(self) -> int:
        return sum(item.length for item in self.mm_items)


class PromptRenderer:
    """Renders requests for one profile (its served model name keys the image hashes)."""

    def __init__(
        self, profile: Profile, tokenizer: SimTokenizer, image_tokens: int | None = None
    ) -> None:
        self.profile = profile
        self.tokenizer = tokenizer
        self.eos_token_id = profile.prompt_format.eos_token_id
        self._renderer = SimPromptRenderer(
            profile.prompt_format, tokenizer, model_id=profile.served_model_name,
            image_tokens=image_tokens,
        )

    def render_chat(
        self,
        messages: Sequence[Any],
        *,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
    ) -> RenderedPrompt:
        return _seeded(self._renderer.render_chat(
            messages, add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
        ))

    def render_completion(self, prompt: Any) -> RenderedPrompt:
        return _seeded(self._renderer.render_completion(prompt))

    def resolve_image(self, url: str, uuid: str | None = None) -> tuple[str, int]:
        """(identifier, placeholder tokens) of one image URL; never fetches anything."""
        return self._renderer.resolve_image(url, uuid)


def _seeded(prompt: SimPrompt) -> RenderedPrompt:
    fresh = prompt.token_ids
    if prompt.num_fresh_tokens < len(fresh):
        fresh = fresh[:prompt.num_fresh_tokens]  # copied only for continuations
    seed = answer_seed(fresh, tuple(item.identifier for item in prompt.mm_items))
    return RenderedPrompt(prompt.token_ids, prompt.mm_items, seed, prompt.partial_answer)


__all__ = ["PromptError", "PromptRenderer", "RenderedPrompt"]
