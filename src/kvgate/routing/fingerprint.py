"""A request's prompt as a chain of block hashes that approximates the engine's KV blocks.

The engine caches a prompt in fixed-size token blocks, each hash chained to its parent, so a
block can only be reused when everything before it matches. The gateway has no tokenizer (the
precise mode adds one), so it renders the conversation to bytes and cuts it into fixed-size
character blocks (about ``block_chars / 4`` tokens each) chained the same way. Every image is a
link of its own, keyed by the digest of its bytes and weighted by its vision-token count: the
same text with another image diverges at that image; the same image in another request
converges on the same link.

Cost: one xxh3 call per block over the UTF-8 bytes of each message (never joined), seeded by
the block before; where the package was built with it, the whole builder runs in C for the
common shapes (``_chain_native.c``, calling the ``xxhash`` package's own function;
``py_fingerprint`` and ``py_chain`` are the Python reference). An 8k-token chat prompt
fingerprints in about 13.5 us (11.6 with its system prompt in the memo) and a 100k-token one
in about 0.12 ms (65 us); the Python builder: 28 / 25 us and 0.18 / 0.11 ms (``python -m
kvgate.bench.routing_cost``, 2026-12-06, 2 cores). The floor is the hashing: xxh3 seeded
anew for every 256-byte block derives its secret each time (66 ns a block, against 15 ns
per 256 bytes in one unseeded pass). Nothing is stored per request.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import xxhash

from kvgate.native import warn_missing

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from kvgate.core.call import Call
    from kvgate.core.deployment import Deployment

_hash = xxhash.xxh3_64_intdigest


def py_chain(data: bytes, start: int, end: int, size: int, parent: int,
             out: list[int]) -> int:
    """Append to ``out`` the hash of each block ``data[k:k + size]`` for ``k`` in
    ``range(start, end, size)``, each seeded by the one before (the first by ``parent``);
    the last one. The Python version of ``_chain_native.chain``."""
    with memoryview(data) as view:
        for block_start in range(start, end, size):
            parent = _hash(view[block_start:block_start + size], parent)
            out.append(parent)
    return parent


_chain: Callable[[bytes, int, int, int, int, list[int]], int] = py_chain
try:
    from kvgate.routing import _chain_native
except ImportError:  # no C compiler at install, or xxhash's function not reachable
    _chain_native = None  # type: ignore[assignment]
else:
    # The C loop calls the xxhash package's own function (its vector-dispatching entry where
    # there is one); should a build ever hash otherwise, fingerprints would stop matching
    # the ones recorded: keep Python then. Short and long inputs take different code in xxh3.
    _PROBE = bytes(range(256)) * 16
    if all(_chain_native.chain(_PROBE, 0, size * 2, size, 7, []) == py_chain(
            _PROBE, 0, size * 2, size, 7, []) for size in (6, 256, 2048)):
        _chain = _chain_native.chain
#: Whether the fingerprint's block loop runs in C (and, for common prompt shapes, its whole
#: builder: see :func:`fingerprint`).
NATIVE_CHAIN = _chain is not py_chain


def warn_if_python() -> None:
    """Log once per process when the block loop runs in Python (a scorer calls it at start)."""
    if not NATIVE_CHAIN:
        warn_missing("_chain_native", "the prompt fingerprint hashes its blocks in Python, "
                     "about 15 us more per 8k-token prompt")


#: Roughly what one token of English text costs in characters.
CHARS_PER_TOKEN = 4
#: Fields that change the rendered prompt (chat template inputs), hashed first.
_PROMPT_FIELDS = ("tools", "tool_choice", "response_format", "chat_template",
                  "chat_template_kwargs", "functions")
_ROLE_MARKERS = {role: f"\x00<|{role}|>".encode() for role in (
    "system", "developer", "user", "assistant", "tool", "function")}
_UNKNOWN_ROLE = b"\x00<|?|>"
if NATIVE_CHAIN:
    _chain_native.configure(_PROMPT_FIELDS, _ROLE_MARKERS, _UNKNOWN_ROLE, CHARS_PER_TOKEN)


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """Chained link hashes in prompt order, each link's length in (estimated) tokens, and
    their sum (counted while building: summing 1,600 links costs microseconds per read)."""

    hashes: tuple[int, ...]
    tokens: tuple[int, ...]
    total_tokens: int

    def tokens_in_first(self, num_links: int) -> int:
        return sum(self.tokens[:num_links])


class MessageMemo:
    """The links of long messages already fingerprinted, so a prompt shared by many requests
    (a system prompt, a document) is hashed once, not once per request.

    A message's links depend on the chain before it (the parent hash and the unfinished block)
    and on its bytes; the key is those, the bytes by their xxh3 digest (one C call over the
    whole message, about 20x cheaper than a call per block). A hit appends the links computed
    the first time, so fingerprints are the same with or without a memo; 64-bit digests
    collide as rarely as the chain's own links. Bounded by ``max_links`` (an entry with no whole
    link counts as one), oldest first out.

    NOTE: one per strategy (not module state); single-threaded (the event loop's).
    """

    __slots__ = ("_entries", "_links", "_order", "max_links", "min_bytes")

    def __init__(self, *, max_links: int = 65_536, min_bytes: int = 2048) -> None:
        self.max_links = max_links
        #: Shorter messages are hashed directly: a lookup would save too little.
        self.min_bytes = min_bytes
        self._entries: dict[tuple[int, bytes, int], tuple[tuple[int, ...], bytes]] = {}
        #: The keys, oldest first. NOTE: not ``next(iter(self._entries))``: a dict used as a
        #: queue leaves the popped slots at its front until it resizes, and each ``iter``
        #: steps over all of them (2.4 us per put once full, against 0.4 with this deque;
        #: every chat request's new last turn is put).
        self._order: deque[tuple[int, bytes, int]] = deque()
        self._links = 0

    def get(self, key: tuple[int, bytes, int]) -> tuple[tuple[int, ...], bytes] | None:
        return self._entries.get(key)

    def put(self, key: tuple[int, bytes, int], links: tuple[int, ...], tail: bytes) -> None:
        entries = self._entries
        weight = _memo_weight(links)
        if key in entries or weight > self.max_links:
            return
        entries[key] = (links, tail)
        self._order.append(key)
        self._links += weight
        while self._links > self.max_links:
            self._links -= _memo_weight(entries.pop(self._order.popleft())[0])


def _memo_weight(links: tuple[int, ...]) -> int:
    """What a memo entry counts toward ``max_links``: its links, one at least (a message
    shorter than a block, block_chars above min_bytes, has none and would never leave)."""
    return max(1, len(links))


class _ChainBuilder:
    """Hashes each whole block straight from the bytes of the piece that holds it.

    NOTE: only the bytes of a block that straddles two pieces (a role marker and the text
    after it, say) are copied, at most ``block_chars`` per piece; a prompt's text is never
    joined into one buffer. One xxh3 call per block is the floor in pure Python (chained
    seeds make every call wait for the one before), about 0.1 us each.
    """

    __slots__ = ("_block_chars", "_block_tokens", "_memo", "_tail", "hashes", "parent",
                 "tokens", "total_tokens")

    def __init__(self, block_chars: int, seed: int, memo: MessageMemo | None) -> None:
        self._memo = memo
        self._block_chars = block_chars
        self._block_tokens = max(1, block_chars // CHARS_PER_TOKEN)
        #: The unfinished block: fewer than ``block_chars`` bytes.
        self._tail = b""
        self.parent = seed
        self.hashes: list[int] = []
        self.tokens: list[int] = []
        self.total_tokens = 0

    def add_text(self, data: bytes) -> None:
        memo = self._memo
        if memo is None or len(data) < memo.min_bytes:
            self._hash_blocks(data)
            return
        key = (self.parent, self._tail, _hash(data, self.parent))
        known = memo.get(key)
        if known is None:
            num_before = len(self.hashes)
            self._hash_blocks(data)
            memo.put(key, tuple(self.hashes[num_before:]), self._tail)
            return
        links, self._tail = known
        if links:
            self.parent = links[-1]
            self.hashes.extend(links)
            self.tokens.extend([self._block_tokens] * len(links))
            self.total_tokens += self._block_tokens * len(links)

    def _hash_blocks(self, data: bytes) -> None:
        size = self._block_chars
        start = 0
        parent, hashes = self.parent, self.hashes
        if self._tail:
            start = size - len(self._tail)
            if len(data) < start:
                self._tail += data
                return
            parent = _hash(self._tail + data[:start], parent)
            hashes.append(parent)
        elif len(data) < size:
            self._tail = data
            return
        num_before = len(hashes)
        full_end = len(data) - (len(data) - start) % size
        parent = _chain(data, start, full_end, size, parent, hashes)
        self.parent = parent
        self._tail = data[full_end:]
        num_blocks = len(hashes) - num_before + (1 if start else 0)
        self.tokens.extend([self._block_tokens] * num_blocks)
        self.total_tokens += self._block_tokens * num_blocks

    def add_image(self, digest: bytes, num_tokens: int) -> None:
        # The text before an image is part of every request that shares this image position:
        # close it as a short link so the image's link has a stable parent.
        if self._tail:
            self._add_link(_hash(self._tail, self.parent),
                           max(1, len(self._tail) // CHARS_PER_TOKEN))
            self._tail = b""
        self._add_link(_hash(digest, self.parent), num_tokens)

    def _add_link(self, link_hash: int, num_tokens: int) -> None:
        self.parent = link_hash
        self.hashes.append(link_hash)
        self.tokens.append(num_tokens)
        self.total_tokens += num_tokens

    def build(self) -> Fingerprint:
        return Fingerprint(tuple(self.hashes), tuple(self.tokens), self.total_tokens)


def _content_text(part: dict[str, Any]) -> bytes:
    text = part.get("text")
    return text.encode() if isinstance(text, str) else orjson.dumps(part)


def declared_image_tokens(deployments: Iterable[Deployment]) -> int | None:
    """The vision tokens per image that every one of ``deployments`` declares alike
    (``image_tokens``), or None: then each image weighs what parsing estimated from its size
    (LLaVA-OneVision's rule), which for another vision encoder can be several times off."""
    declared = {d.settings.image_tokens for d in deployments}
    if len(declared) != 1:
        return None
    return declared.pop()


def fingerprint(call: Call, *, block_chars: int, seed: int = 0,
                memo: MessageMemo | None = None,
                image_tokens: int | None = None) -> Fingerprint:
    """Fingerprint a validated chat or completion call.

    Only whole blocks are hashed: the unfinished tail block is what differs between requests
    and would never match anyway (vLLM caches full blocks only, too). A ``memo`` (kept by the
    caller across requests, for one ``block_chars``) skips hashing long messages seen before.
    ``image_tokens``: every image's weight when the model's replicas declare it (see
    :func:`declared_image_tokens`); None: the parse-time estimate per image.

    NOTE: the C builder takes the common shapes (string and text-part messages, images, a
    string prompt) whole: about 4x faster than the loop below on an 8k-token chat, most of
    it the Python around each message and the encoded copy of each string. It answers None
    for the rest (prompt fields, tool calls, other parts), which the loop below takes.
    """
    if NATIVE_CHAIN:
        built = _chain_native.build(call.body, call.image_digests, call.image_tokens,
                                    image_tokens or 0, block_chars, seed, memo)
        if built is not None:
            return Fingerprint(*built)
    return py_fingerprint(call, block_chars=block_chars, seed=seed, memo=memo,
                          image_tokens=image_tokens)


def py_fingerprint(call: Call, *, block_chars: int, seed: int = 0,
                   memo: MessageMemo | None = None,
                   image_tokens: int | None = None) -> Fingerprint:
    """:func:`fingerprint` in Python: every shape (the C builder's reference)."""
    builder = _ChainBuilder(block_chars, seed, memo)
    body = call.body
    extras = [body[k] for k in _PROMPT_FIELDS if body.get(k) is not None]
    if extras:
        builder.add_text(orjson.dumps(extras, option=orjson.OPT_SORT_KEYS))
    messages = body.get("messages")
    if messages is None:
        prompt = body.get("prompt")
        builder.add_text(prompt.encode() if isinstance(prompt, str) else orjson.dumps(prompt))
        return builder.build()
    image_index = 0
    for message in messages:
        builder.add_text(_ROLE_MARKERS.get(message.get("role"), _UNKNOWN_ROLE))
        content = message.get("content")
        if isinstance(content, str):
            builder.add_text(content.encode())
        elif isinstance(content, list):
            for part in content:
                if part.get("type") == "image_url":
                    builder.add_image(call.image_digests[image_index],
                                      image_tokens or call.image_tokens[image_index])
                    image_index += 1
                else:
                    builder.add_text(_content_text(part))
        if message.get("tool_calls"):
            builder.add_text(orjson.dumps(message["tool_calls"], option=orjson.OPT_SORT_KEYS))
    return builder.build()
