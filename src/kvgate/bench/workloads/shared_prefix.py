"""Generated shared-prefix groups, SGLang's ``generated-shared-prefix`` shape.

``num_groups`` system prompts, each followed by ``prompts_per_group`` distinct questions; the
prompts are shuffled together, so a router only keeps a group's prefix warm if it sends the
group's requests to the same replica. Defaults are SGLang's (64 x 16, 2048-token system prompt,
128-token questions, 256 output tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from kvgate.bench.request import BenchRequest
from kvgate.bench.text import filler, seeded_rng
from kvgate.bench.workloads.base import WorkloadOptions, chat_request


@dataclass(frozen=True, slots=True)
class SharedPrefixWorkload:
    name: ClassVar[str] = "shared_prefix"

    num_groups: int = 64
    prompts_per_group: int = 16
    system_prompt_tokens: int = 2048
    question_tokens: int = 128
    output_tokens: int = 256

    def __post_init__(self) -> None:
        if self.num_groups < 1 or self.prompts_per_group < 1:
            raise ValueError("num_groups and prompts_per_group must be >= 1")
        if self.output_tokens < 1:
            raise ValueError("output_tokens must be >= 1")

    def build(self, options: WorkloadOptions) -> list[BenchRequest]:
        per_group = self.prompts_per_group
        if options.num_requests is not None:
            per_group = math.ceil(options.num_requests / self.num_groups)
        pairs = [(g, p) for g in range(self.num_groups) for p in range(per_group)]
        seeded_rng("shared_prefix.order", options.seed).shuffle(pairs)
        if options.num_requests is not None:
            pairs = pairs[: options.num_requests]
        system_prompts = {
            g: filler(self.system_prompt_tokens, "shared_prefix.system", options.seed, g)
            for g in {g for g, _ in pairs}
        }
        requests = []
        for group, prompt in pairs:
            question = filler(self.question_tokens, "shared_prefix.question", options.seed,
                              group, prompt)
            messages = [{"role": "system", "content": system_prompts[group]},
                        {"role": "user", "content": question}]
            requests.append(chat_request(
                options, messages, self.output_tokens,
                prompt_tokens_hint=self.system_prompt_tokens + self.question_tokens,
                tag=f"group{group}",
            ))
        return requests
