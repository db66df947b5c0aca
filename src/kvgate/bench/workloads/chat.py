"""Multi-round chat over a shared system prompt, vLLM production-stack's multi-round QA shape.

Every user's conversation starts with the same system prompt (~1000 tokens) and a long
user-specific context (their "history"), then asks ``num_rounds`` questions; each turn resends
the whole conversation so far, so a user's prompt grows and a replica that served the user's
previous turn holds most of it. Turns of one user never overlap (they share a session).

NOTE: the assistant turns in the history are generated filler of ``answer_tokens``, not the
server's actual answers, so that bodies can be built before the run. A prefix cache therefore
matches each turn up to the previous question, not through the previous answer; workloads that
echo real answers would have to build bodies during the run.

Requests are ordered round by round (every user's first question, then every second one); in
closed loop each worker takes one user at a time, in open loop arrivals follow this order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from kvgate.bench.request import BenchRequest
from kvgate.bench.text import filler
from kvgate.bench.workloads.base import WorkloadOptions, chat_request


@dataclass(frozen=True, slots=True)
class MultiRoundChatWorkload:
    name: ClassVar[str] = "chat"

    num_users: int = 10
    num_rounds: int = 5
    system_prompt_tokens: int = 1000
    user_history_tokens: int = 2000
    question_tokens: int = 40
    answer_tokens: int = 100

    def __post_init__(self) -> None:
        if self.num_users < 1 or self.num_rounds < 1:
            raise ValueError("num_users and num_rounds must be >= 1")
        if self.answer_tokens < 1:
            raise ValueError("answer_tokens must be >= 1")

    def build(self, options: WorkloadOptions) -> list[BenchRequest]:
        seed = options.seed
        rounds = self.num_rounds
        if options.num_requests is not None:
            rounds = math.ceil(options.num_requests / self.num_users)
        system = {"role": "system", "content": filler(self.system_prompt_tokens, "chat.system",
                                                      seed)}
        conversations: list[list[dict[str, Any]]] = [[system] for _ in range(self.num_users)]
        prompt_tokens = [self.system_prompt_tokens] * self.num_users
        requests: list[BenchRequest] = []
        for round_index in range(rounds):
            for user in range(self.num_users):
                if options.num_requests is not None and len(requests) >= options.num_requests:
                    return requests
                question = filler(self.question_tokens, "chat.question", seed, user, round_index)
                tokens = self.question_tokens
                if round_index == 0:
                    history = filler(self.user_history_tokens, "chat.history", seed, user)
                    question = history + question
                    tokens += self.user_history_tokens
                conversation = conversations[user]
                conversation.append({"role": "user", "content": question})
                prompt_tokens[user] += tokens
                requests.append(chat_request(
                    options, list(conversation), self.answer_tokens,
                    prompt_tokens_hint=prompt_tokens[user], session=user, tag=f"user{user}",
                ))
                answer = filler(self.answer_tokens, "chat.answer", seed, user, round_index)
                conversation.append({"role": "assistant", "content": answer})
                prompt_tokens[user] += self.answer_tokens
        return requests
