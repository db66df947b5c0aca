"""Deterministic filler text measured in tokens.

Every piece is four characters, a space and a three-letter word, so the simulator's tokenizer
(four characters per token) counts exactly one token per piece and a real BPE tokenizer counts
about one. Prompts built from these pieces therefore have the token lengths the workloads ask
for, and two prompts that share a prefix of pieces share the same prefix of tokens.

Randomness always comes from ``random.Random(str)``: string seeds are hashed with SHA-512, so
the same seed gives the same text on every run and machine, whatever PYTHONHASHSEED is.
"""

from __future__ import annotations

import random

CHARS_PER_PIECE = 4

_WORDS = (
    "the", "and", "for", "its", "may", "one", "can", "not", "all", "new", "our", "use", "way",
    "how", "now", "out", "see", "two", "key", "set", "run", "fit", "hit", "map", "log", "add",
    "row", "bit", "end", "top", "few", "far", "yet", "own", "per", "via", "due", "big", "low",
    "old", "say", "ask", "try", "put", "got", "let", "ten", "raw", "sum", "max", "min", "job",
    "box", "day", "sky", "sea", "red", "tea", "cup", "car", "bus", "dog", "cat", "owl", "elk",
    "ant", "bee", "oak", "ivy", "fig", "yam", "pea", "gem", "ore", "tin", "zip", "ice",
    "fog", "sun", "art", "act", "age", "aim", "air", "arm", "bag", "bed", "cap", "cue", "den",
    "dot", "ear", "egg", "eye", "fan", "fee", "fox", "gap", "gas", "gym", "hat", "hub", "ink",
    "jar", "jet", "kit", "lab", "lap", "leg", "lid", "lip", "mix", "mud", "net", "nut", "pad",
)
PIECES: tuple[str, ...] = tuple(" " + word for word in _WORDS)


def seeded_rng(*parts: object) -> random.Random:
    """A generator seeded by the parts, stable across processes and Python runs."""
    return random.Random(":".join(str(part) for part in parts))


def filler(num_tokens: int, *seed_parts: object) -> str:
    """``num_tokens`` pieces of text, determined entirely by ``seed_parts``."""
    if num_tokens <= 0:
        return ""
    return "".join(seeded_rng("text", *seed_parts).choices(PIECES, k=num_tokens))


def approx_tokens(text: str) -> int:
    """Token count of text built from pieces (and a fair estimate for other English text)."""
    return -(-len(text) // CHARS_PER_PIECE)
