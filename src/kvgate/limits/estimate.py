"""A request's worst-case cost at admission, before any upstream has seen it.

Tokens: the prompt's characters over ``prompt_chars_per_token`` (rounded up) plus a few per
message for the chat format, the images' vision tokens, and the output bound -- ``max_tokens``
/ ``max_completion_tokens``, else the model's configured cap -- times the choices asked for.
Price: each token kind at the dearest deployment of the model (failover may end anywhere), so
the estimate is at least the real cost whenever the prompt is not denser than assumed and the
answer is bounded. The per-model figures are computed once at start-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kvgate.config.schema import DeploymentSettings
from kvgate.core.call import Call
from kvgate.core.provider import JSONObject
from kvgate.limits.admission import NUSD_PER_USD, Estimate

#: Chat-format tokens around each message (role, separators), as OpenAI's counting guide has.
TOKENS_PER_MESSAGE = 4
#: The assistant's reply header.
TOKENS_PER_REPLY = 3


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """The dearest per-token prices among a model's deployments, and its output cap."""

    nusd_per_input_token: float
    nusd_per_output_token: float
    max_output_tokens: int

    @classmethod
    def of(cls, deployments: list[DeploymentSettings], default_max_output_tokens: int
           ) -> ModelPrice:
        return cls(
            max(d.cost_per_1k_input for d in deployments) * NUSD_PER_USD / 1000,
            max(d.cost_per_1k_output for d in deployments) * NUSD_PER_USD / 1000,
            max(d.max_output_tokens or default_max_output_tokens for d in deployments),
        )


class CostEstimator:
    def __init__(self, prices: dict[str, ModelPrice], *, prompt_chars_per_token: float) -> None:
        self._prices = prices
        self._chars_per_token = prompt_chars_per_token

    def __call__(self, call: Call) -> Estimate:
        price = self._prices.get(call.model)
        body = call.body
        prompt = self.prompt_tokens(body) + sum(call.image_tokens)
        output = _output_bound(body, price.max_output_tokens if price else 0)
        if price is None:  # not a configured model: the parse stage refused it already
            return Estimate(prompt + output, 0)
        nusd = prompt * price.nusd_per_input_token + output * price.nusd_per_output_token
        return Estimate(prompt + output, math.ceil(nusd))

    def prompt_tokens(self, body: JSONObject) -> int:
        """Text tokens of the prompt (images are counted by the parser's vision tokens)."""
        chars = 0
        extra_tokens = 0
        messages = body.get("messages")
        if isinstance(messages, list):
            extra_tokens = TOKENS_PER_REPLY + TOKENS_PER_MESSAGE * len(messages)
            for message in messages:
                if isinstance(message, dict):
                    chars += _message_chars(message)
        else:
            chars += _text_chars(body.get("prompt"))
        tools = body.get("tools")
        if isinstance(tools, list):  # function schemas are part of the prompt
            chars += sum(len(str(tool)) for tool in tools)
        return extra_tokens + math.ceil(chars / self._chars_per_token)


def _message_chars(message: JSONObject) -> int:
    chars = _text_chars(message.get("content"))
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        chars += sum(len(str(c)) for c in calls)
    return chars


def _text_chars(content: object) -> int:
    """Characters of a string, or of the text parts of a list (image parts are skipped: the
    parser priced them in vision tokens)."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, str):
                total += len(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                total += len(part["text"])
        return total
    return 0


def _output_bound(body: JSONObject, default_tokens: int) -> int:
    limit = body.get("max_completion_tokens")
    if not isinstance(limit, int) or isinstance(limit, bool):
        limit = body.get("max_tokens")
    per_choice = limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 \
        else default_tokens
    choices = max(_positive(body.get("n")), _positive(body.get("best_of")))
    return per_choice * choices


def _positive(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1
