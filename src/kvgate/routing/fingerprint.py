"""A request's prompt as a chain of block hashes that approximates the engine's KV blocks.

The engine caches a prompt in fixed-size token blocks, each hash chained to its parent, so a
block can only be reused when everything before it matches. The gateway has no tokenizer (the
precise mode adds one), so it renders the conversation to bytes and cuts it into fixed-size
character blocks (about ``block_chars / 4`` tokens each) chained the same way. Every image is a
link of its own, keyed by the digest of its bytes and weighted by its vision-token count: the
same text with another image diverges at that image; the same image in another request
converges on the same link.

Cost: one xxh3 call per block over bytes the request already holds, so a 100k-token prompt
fingerprints in about a millisecond (see tests); nothing is stored per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import xxhash

if TYPE_CHECKING:
    from kvgate.core.call import Call

_hash = xxhash.xxh3_64_intdigest
#: Roughly what one token of English text costs in characters.
CHARS_PER_TOKEN = 4
#: Fields that change the rendered prompt (chat template inputs), hashed first.
_PROMPT_FIELDS = ("tools", "tool_choice", "response_format", "chat_template",
                  "chat_template_kwargs", "functions")
_ROLE_MARKERS = {role: f"\x00<|{role}|>".encode() for role in (
    "system", "developer", "user", "assistant", "tool", "function")}


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """Chained link hashes in prompt order, and each link's length in (estimated) tokens."""

    hashes: tuple[int, ...]
    tokens: tuple[int, ...]

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens)

    def tokens_in_first(self, num_links: int) -> int:
        return sum(self.tokens[:num_links])


class _ChainBuilder:
    __slots__ = ("_block_chars", "_block_tokens", "_buffer", "hashes", "parent", "tokens")

    def __init__(self, block_chars: int, seed: int) -> None:
        self._block_chars = block_chars
        self._block_tokens = max(1, block_chars // CHARS_PER_TOKEN)
        self._buffer = bytearray()
        self.parent = seed
        self.hashes: list[int] = []
        self.tokens: list[int] = []

    def add_text(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        size = self._block_chars
        if len(buffer) < size:
            return
        full = len(buffer) - len(buffer) % size
        view = memoryview(buffer)
        parent, hashes, block_tokens = self.parent, self.hashes, self._block_tokens
        for start in range(0, full, size):
            parent = _hash(view[start:start + size], parent)
            hashes.append(parent)
        self.tokens.extend([block_tokens] * (full // size))
        self.parent = parent
        view.release()
        del buffer[:full]

    def add_image(self, digest: bytes, num_tokens: int) -> None:
        # The text before an image is part of every request that shares this image position:
        # close it as a short link so the image's link has a stable parent.
        if self._buffer:
            self.parent = _hash(bytes(self._buffer), self.parent)
            self.hashes.append(self.parent)
            self.tokens.append(max(1, len(self._buffer) // CHARS_PER_TOKEN))
            self._buffer.clear()
        self.parent = _hash(digest, self.parent)
        self.hashes.append(self.parent)
        self.tokens.append(num_tokens)


def _content_text(part: dict[str, Any]) -> bytes:
    text = part.get("text")
    return text.encode() if isinstance(text, str) else orjson.dumps(part)


def fingerprint(call: Call, *, block_chars: int, seed: int = 0) -> Fingerprint:
    """Fingerprint a validated chat or completion call.

    Only whole blocks are hashed: the unfinished tail block is what differs between requests
    and would never match anyway (vLLM caches full blocks only, too).
    """
    builder = _ChainBuilder(block_chars, seed)
    body = call.body
    extras = [body[k] for k in _PROMPT_FIELDS if body.get(k) is not None]
    if extras:
        builder.add_text(orjson.dumps(extras, option=orjson.OPT_SORT_KEYS))
    messages = body.get("messages")
    if messages is None:
        prompt = body.get("prompt")
        builder.add_text(prompt.encode() if isinstance(prompt, str) else orjson.dumps(prompt))
        return Fingerprint(tuple(builder.hashes), tuple(builder.tokens))
    image_index = 0
    for message in messages:
        builder.add_text(_ROLE_MARKERS.get(message.get("role"), b"\x00<|?|>"))
        content = message.get("content")
        if isinstance(content, str):
            builder.add_text(content.encode())
        elif isinstance(content, list):
            for part in content:
                if part.get("type") == "image_url":
                    builder.add_image(call.image_digests[image_index],
                                      call.image_tokens[image_index])
                    image_index += 1
                else:
                    builder.add_text(_content_text(part))
        if message.get("tool_calls"):
            builder.add_text(orjson.dumps(message["tool_calls"], option=orjson.OPT_SORT_KEYS))
    return Fingerprint(tuple(builder.hashes), tuple(builder.tokens))
