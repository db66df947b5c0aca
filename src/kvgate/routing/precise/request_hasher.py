"""A request's vLLM block hashes, computed in the gateway exactly as the replica will.

Three steps, each reproducing vLLM (0.33) for one deployment:

1. **Render and tokenize** with the model's own tokenizer and chat template (``renderers``):
   a local Hugging Face tokenizer directory, or ``kvgate-sim:<profile>`` for simulated
   replicas (their deterministic tokenizer stand-in and templates). Chat prompts are rendered
   to text and tokenized without special tokens added, completions with them, as vLLM does.
2. **Place images**: each image's placeholder tokens and its identifier, vLLM's blake3 hash of
   the encoded bytes and model id (``vllm_compat.mm_hash``) or the content part's ``uuid``.
3. **Hash** the full blocks with the replica's algorithm and NONE_HASH seed, with extra keys
   for images, the LoRA adapter and ``cache_salt`` (``vllm_compat.hashing``), and keep each
   hash as the 64-bit integer the replica's events carry.

What cannot be reproduced is cut off, never guessed: blocks from an image whose bytes the
gateway does not have (an http URL) or whose token count it cannot tell on are left out, so
the match is exact for the prefix before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kvgate.config.schema import DeploymentSettings
from kvgate.core.call import Call
from kvgate.routing.precise.index import token_block_key
from kvgate.routing.precise.renderers import PromptRenderer, RenderError, load_renderer
from kvgate.vllm_compat.hashing import (
    BlockHasher,
    LoraKey,
    MMPlaceholder,
    iter_block_spans,
    resolve_none_hash_seed,
    to_event_extra_keys,
    to_event_hash,
)

_NON_CRYPTO = ("xxhash", "xxhash_cbor")


@dataclass(frozen=True, slots=True)
class RequestBlocks:
    """The event keys of a prompt's full blocks, in order, and the prompt's length in tokens."""

    keys: tuple[int, ...]
    num_prompt_tokens: int
    block_size: int

    def hit_tokens(self, num_blocks: int) -> int:
        """Tokens a hit on the first ``num_blocks`` saves (vLLM recomputes the last token)."""
        return min(num_blocks * self.block_size, max(0, self.num_prompt_tokens - 1))


NO_BLOCKS = RequestBlocks((), 0, 1)


class RequestHasher:
    """Hashes requests for every deployment that shares one (tokenizer, hash) configuration.

    NOTE: block digests are memoized (bounded, LRU-ish): requests sharing a prefix share its
    blocks, and a dict lookup on (parent, tokens, keys) costs a fraction of vLLM's
    pickle + SHA-256 per block.
    """

    def __init__(self, renderer: PromptRenderer, hasher: BlockHasher, block_size: int,
                 lora: LoraKey | None = None, *, memo_blocks: int = 65_536,
                 token_blocks: bool = False) -> None:
        self.renderer = renderer
        #: Key blocks by ``index.token_block_key`` instead of the replica's hash.
        self.token_blocks = token_blocks
        self.block_size = block_size
        self._hasher = hasher
        self._lora = lora
        #: (parent digest, block tokens, extra keys) -> (event key, digest).
        self._memo: dict[tuple[object, ...], tuple[int, bytes]] = {}
        self._memo_blocks = memo_blocks

    def hash_call(self, call: Call) -> RequestBlocks:
        """The request's block keys; empty when it cannot be rendered exactly."""
        try:
            prompt = self.renderer.render(call)
        except RenderError:
            return NO_BLOCKS
        token_ids: Sequence[int] = prompt.token_ids
        if prompt.exact_tokens < len(token_ids):
            token_ids = token_ids[:prompt.exact_tokens]
        salt = call.body.get("cache_salt")
        salt = salt if isinstance(salt, str) and salt else None
        keys = (self._token_block_keys(token_ids, prompt.mm_items, salt) if self.token_blocks
                else self._event_keys(token_ids, prompt.mm_items, salt))
        return RequestBlocks(keys, len(prompt.token_ids), self.block_size)

    def _token_block_keys(self, token_ids: Sequence[int], mm_items: Sequence[MMPlaceholder],
                          cache_salt: str | None) -> tuple[int, ...]:
        keys: list[int] = []
        parent = 0
        for start, end, extra in iter_block_spans(len(token_ids), self.block_size, 0, mm_items,
                                                  self._lora, cache_salt):
            parent = token_block_key(parent, token_ids[start:end], to_event_extra_keys(extra))
            keys.append(parent)
        return tuple(keys)

    def _event_keys(self, token_ids: Sequence[int], mm_items: Sequence[MMPlaceholder],
                    cache_salt: str | None) -> tuple[int, ...]:
        memo, hasher = self._memo, self._hasher
        keys: list[int] = []
        parent: bytes | None = None
        for start, end, extra in iter_block_spans(len(token_ids), self.block_size, 0, mm_items,
                                                  self._lora, cache_salt):
            block = tuple(token_ids[start:end])
            memo_key = (parent, block, extra)
            found = memo.get(memo_key)
            if found is None:
                digest = hasher.hash_block(parent, block, extra)
                found = memo[memo_key] = (to_event_hash(digest), digest)
                if len(memo) > self._memo_blocks:
                    # NOTE: dropping the older half at once keeps memory bounded at O(1)
                    # amortised per block; an exact LRU would reorder on every hit.
                    for key in list(memo)[: len(memo) // 2]:
                        del memo[key]
            keys.append(found[0])
            parent = found[1]
        return tuple(keys)


def hasher_key(settings: DeploymentSettings) -> tuple[object, ...]:
    """Deployments with equal keys get identical hashes for every request."""
    return (settings.tokenizer, settings.block_size, settings.hash_algo, settings.hash_seed,
            settings.mm_model_id or settings.model, settings.image_tokens, settings.lora_path)


def unreproducible_reason(settings: DeploymentSettings) -> str | None:
    """Why this deployment's block hashes cannot be computed in the gateway, or None."""
    if settings.tokenizer is None:
        return "no tokenizer configured"
    if settings.hash_algo in _NON_CRYPTO and settings.hash_seed is None:
        return (f"{settings.hash_algo} without hash_seed: the replica seeds it with a random "
                "secret")
    return None


def build_request_hasher(settings: DeploymentSettings, *, token_blocks: bool = False,
                         ) -> RequestHasher:
    """The hasher for one deployment (which needs a tokenizer). ``token_blocks``: key blocks
    by their content (for replicas whose own hashes cannot be reproduced)."""
    assert settings.tokenizer is not None
    model_id = settings.mm_model_id or settings.model
    renderer = load_renderer(settings.tokenizer, model_id=model_id,
                             image_tokens=settings.image_tokens)
    seed = resolve_none_hash_seed(settings.hash_algo, settings.hash_seed)
    lora = LoraKey(settings.model, settings.lora_path) if settings.lora_path else None
    return RequestHasher(renderer, BlockHasher(settings.hash_algo, seed), settings.block_size,
                         lora, token_blocks=token_blocks)


__all__ = [
    "NO_BLOCKS",
    "MMPlaceholder",
    "RequestBlocks",
    "RequestHasher",
    "build_request_hasher",
    "hasher_key",
    "unreproducible_reason",
]
