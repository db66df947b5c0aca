"""The simulated model's tokenizer: four characters per token, ids from a stable hash.

``kvgate sim`` replicas tokenize with it, and so does a gateway configured with a
``kvgate-sim:<profile>`` tokenizer, which must compute the very ids a replica computes. It lives
here, not in ``kvgate.sim``, so the serving path never imports the simulator.

Real tokenizers are large and model-specific; routing and caching only need that the same text
always yields the same ids, that different text yields different ids, and a realistic count
(~4 characters per token for English). Text is cut into 4-character pieces from its start, so a
generated answer made of 4-character pieces re-tokenizes to exactly the ids that produced it --
which is what lets a continued answer hit the decode blocks it left behind.

Special tokens (chat-template markers, image placeholders, EOS) never come out of `encode`: the
prompt renderer inserts their ids directly, as a real chat template does.
"""

from __future__ import annotations

import xxhash

CHARS_PER_TOKEN = 4
# Text ids avoid the special ids of both templates (Qwen2 >= 151643, Llama 3 >= 128000).
FIRST_TEXT_ID = 256
LAST_TEXT_ID = 127_999


class SimTokenizer:
    """Text <-> ids for the simulated model. Holds a bounded memo of piece ids (per instance)."""

    def __init__(self, memo_size: int = 1 << 16) -> None:
        self._memo: dict[str, int] = {}
        self._memo_size = memo_size
        self._id_span = LAST_TEXT_ID - FIRST_TEXT_ID + 1

    def piece_id(self, piece: str) -> int:
        """The id of one piece of at most 4 characters."""
        token_id = self._memo.get(piece)
        if token_id is None:
            token_id = FIRST_TEXT_ID + xxhash.xxh32_intdigest(piece.encode("utf-8")) % self._id_span
            if len(self._memo) >= self._memo_size:
                # NOTE: dropping the whole memo is O(1) amortised and keeps memory bounded; a
                # true LRU would cost more per call than the hash it saves.
                self._memo.clear()
            self._memo[piece] = token_id
        return token_id

    def encode(self, text: str) -> list[int]:
        """Ids of `text` cut into 4-character pieces from its first character."""
        piece_id = self.piece_id
        return [
            piece_id(text[start:start + CHARS_PER_TOKEN])
            for start in range(0, len(text), CHARS_PER_TOKEN)
        ]

    @staticmethod
    def count(text: str) -> int:
        """Number of tokens `encode(text)` returns, without computing them."""
        return -(-len(text) // CHARS_PER_TOKEN)


class MemoTokenizer(SimTokenizer):
    """The same tokenizer, remembering the ids of long texts.

    A conversation resends every earlier message each turn and many users share one system
    prompt; the ids are a pure function of the text, so a router or a load generator that sees
    them again and again computes them once. Bounded: the memo is dropped whole when it holds
    ``max_texts`` (O(1) amortised, like the piece memo).
    """

    def __init__(self, min_chars: int = 256, max_texts: int = 50_000) -> None:
        super().__init__()
        self._min_chars = min_chars
        self._max_texts = max_texts
        # Tuples: a caller may extend the list it gets back, so each call returns a fresh one.
        self._texts: dict[str, tuple[int, ...]] = {}

    def encode(self, text: str) -> list[int]:
        if len(text) < self._min_chars:
            return super().encode(text)
        ids = self._texts.get(text)
        if ids is None:
            if len(self._texts) >= self._max_texts:
                self._texts.clear()
            ids = self._texts[text] = tuple(super().encode(text))
        return list(ids)


__all__ = ["CHARS_PER_TOKEN", "FIRST_TEXT_ID", "LAST_TEXT_ID", "MemoTokenizer", "SimTokenizer"]
