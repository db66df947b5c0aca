"""A deterministic in-process provider: same request, same answer, zero keys.

It is a product feature (the zero-key demo, load tests of the gateway itself, failure drills),
so it behaves like a real upstream: usage counts, streaming at a configured speed, failures on
request, and vLLM's ``continue_final_message`` so a stream cut mid-answer can be resumed.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import orjson
import xxhash

from kvgate.config.schema import MockProviderSettings
from kvgate.core.provider import ChunkBatch, JSONObject, UpstreamCall
from kvgate.providers.errors import UpstreamServerError, error_for_status

_VOCABULARY = (
    "the", "cache", "holds", "each", "prefix", "block", "while", "replicas", "serve",
    "requests", "and", "the", "router", "keeps", "affinity", "so", "warm", "tokens", "skip",
    "prefill", "latency", "drops", "throughput", "rises", "images", "hash", "by", "bytes",
    "load", "stays", "balanced", "across", "the", "fleet", "with", "budgets", "limits", "and",
    "failover",
)
#: Rough characters per token, used to count prompt tokens like a tokenizer would.
_CHARS_PER_TOKEN = 4
_TOKENS_PER_MESSAGE = 4
_TOKENS_PER_IMAGE = 85


def _prompt_tokens(body: JSONObject) -> int:
    if "messages" not in body:
        prompt = body.get("prompt", "")
        text = prompt if isinstance(prompt, str) else orjson.dumps(prompt).decode()
        return max(1, len(text) // _CHARS_PER_TOKEN)
    total = 0
    for message in body["messages"]:
        total += _TOKENS_PER_MESSAGE
        content = message.get("content")
        if isinstance(content, str):
            total += len(content) // _CHARS_PER_TOKEN
        elif isinstance(content, list):
            for part in content:
                if part.get("type") == "text":
                    total += len(part.get("text", "")) // _CHARS_PER_TOKEN
                else:
                    total += _TOKENS_PER_IMAGE
    return max(1, total)


def _answer_tokens(key: bytes, count: int) -> list[str]:
    """``count`` filler tokens chosen by the bytes of a hash of ``key``."""
    # One XOF call instead of a seeded PRNG: seeding ``random.Random`` with bytes hashes them
    # with SHA-512 first and costs more than the rest of the mock put together. The XOF reads
    # a 128-bit digest of the key, not the key: SHAKE over an 8k-token prompt's 40 kB took
    # 56 us a request, more than the gateway's own work in an in-process load test.
    picks = hashlib.shake_128(xxhash.xxh3_128_digest(key)).digest(count)
    size = len(_VOCABULARY)
    words = [_VOCABULARY[b % size] for b in picks]
    if not words:
        return []
    return [words[0].capitalize(), *(" " + w for w in words[1:])]


class MockProvider:
    """Implements :class:`~kvgate.core.provider.Provider` without any network."""

    def __init__(self, name: str, settings: MockProviderSettings) -> None:
        self._name = name
        self._settings = settings
        self._failure_rng = random.Random(settings.seed)
        self._token_interval_s = 1.0 / settings.tokens_per_s if settings.tokens_per_s else 0.0

    def _plan(self, call: UpstreamCall) -> tuple[list[str], str, int]:
        """Return (tokens still to emit, finish_reason, prompt_tokens) for a request."""
        body = call.body
        messages = body.get("messages")
        partial = ""
        key_body: Any = messages if messages is not None else body.get("prompt")
        if (
            messages
            and body.get("continue_final_message")
            and messages[-1].get("role") == "assistant"
        ):
            # Continuing a partial answer: the answer is keyed on the conversation without it,
            # so partial + continuation equals what a fresh request would have produced.
            partial_content = messages[-1].get("content") or ""
            partial = partial_content if isinstance(partial_content, str) else ""
            key_body = messages[:-1]
        key = orjson.dumps([body.get("model"), key_body, body.get("seed")])
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        if not isinstance(limit, int):
            limit = None
        # The answer is as long as the request allows (an engine under a load test told
        # max_tokens=N writes N tokens); without a limit, default_output_tokens and "stop".
        # A continuation is the rest of the same answer, and its max_tokens counts only new
        # tokens, as in vLLM: the original length is the partial's tokens plus the limit.
        if limit is None:
            count = self._settings.default_output_tokens
        else:
            # Answers are prefixes of one another (one XOF stream per key), so a longer count
            # only extends the same text.
            count = limit + len(partial.split())
        tokens = _answer_tokens(key, count)
        if partial:
            tokens = _remaining_after(tokens, partial)
        finish = "stop"
        if limit is not None and limit <= len(tokens):
            tokens, finish = tokens[:limit], "length"
        return tokens, finish, _prompt_tokens(body)

    def _maybe_fail(self) -> None:
        if self._settings.fail_rate and self._failure_rng.random() < self._settings.fail_rate:
            raise error_for_status(
                self._settings.fail_status,
                f"mock provider {self._name}: injected failure ({self._settings.fail_status})",
            )

    async def complete(self, call: UpstreamCall) -> JSONObject:
        self._maybe_fail()
        tokens, finish, prompt_tokens = self._plan(call)
        delay_s = self._settings.ttft_ms / 1000 + len(tokens) * self._token_interval_s
        if delay_s:
            await asyncio.sleep(delay_s)
        text = "".join(tokens)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(tokens),
            "total_tokens": prompt_tokens + len(tokens),
        }
        created = int(time.time())
        model = call.body.get("model")
        if call.endpoint == "completions":
            return {
                "id": f"cmpl-{call.request_id}",
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
                "usage": usage,
            }
        return {
            "id": f"chatcmpl-{call.request_id}",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                }
            ],
            "usage": usage,
        }

    def stream(self, call: UpstreamCall) -> aclosing[AsyncGenerator[ChunkBatch, None]]:
        return aclosing(self._batches(call))

    async def _batches(self, call: UpstreamCall) -> AsyncGenerator[ChunkBatch, None]:
        """The answer's chunks, batched as a fast engine's would arrive: everything written
        between two pauses (``tokens_per_s``) travels together."""
        self._maybe_fail()
        tokens, finish, prompt_tokens = self._plan(call)
        chat = call.endpoint == "chat"
        base: JSONObject = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{call.request_id}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": call.body.get("model"),
        }
        if self._settings.ttft_ms:
            await asyncio.sleep(self._settings.ttft_ms / 1000)
        batch: list[JSONObject] = []
        if chat:
            batch.append({**base, "choices": [{
                "index": 0, "delta": {"role": "assistant", "content": ""},
                "finish_reason": None}]})
        cut_after = self._settings.fail_after_chunks
        for index, token in enumerate(tokens):
            if cut_after is not None and index >= cut_after:
                if batch:
                    yield batch
                raise UpstreamServerError(
                    f"mock provider {self._name}: stream cut after {cut_after} chunks"
                )
            if index and self._token_interval_s:
                yield batch
                batch = []
                await asyncio.sleep(self._token_interval_s)
            choice: JSONObject = (
                {"index": 0, "delta": {"content": token}, "finish_reason": None}
                if chat
                else {"index": 0, "text": token, "finish_reason": None, "logprobs": None}
            )
            batch.append({**base, "choices": [choice]})
        final: JSONObject = (
            {"index": 0, "delta": {}, "finish_reason": finish}
            if chat
            else {"index": 0, "text": "", "finish_reason": finish, "logprobs": None}
        )
        batch.append({**base, "choices": [final]})
        batch.append({
            **base,
            "choices": [],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(tokens),
                "total_tokens": prompt_tokens + len(tokens),
            },
        })
        yield batch

    async def check_health(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


def _remaining_after(tokens: list[str], partial: str) -> list[str]:
    """The tokens that follow ``partial`` in the full answer (a cut mid-token is finished)."""
    full = "".join(tokens)
    if not full.startswith(partial):
        return tokens
    consumed = 0
    for index, token in enumerate(tokens):
        if consumed + len(token) > len(partial):
            head = token[len(partial) - consumed :]
            return [head, *tokens[index + 1 :]] if head else tokens[index + 1 :]
        consumed += len(token)
    return []
