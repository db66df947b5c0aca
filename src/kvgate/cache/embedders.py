"""Text embedders for the semantic cache: unit vectors whose dot product is the similarity.

- ``hashing`` (default, no model): signed feature hashing of the lower-cased words and word
  pairs. Near-identical prompts (case, punctuation, whitespace, a word changed in a long
  prompt) score above 0.9; real rewordings mostly do not, so its hits are few and safe.
- ``minilm``: all-MiniLM-L6-v2 (``kvgate.cache.minilm``), which scores rewordings of the
  same question high: the embedder for hitting reworded prompts.
"""

from __future__ import annotations

import re
from itertools import pairwise
from typing import Protocol

import numpy as np
import xxhash

_WORD = re.compile(r"\w+")


class Embedder(Protocol):
    name: str
    dimensions: int

    def embed(self, text: str) -> np.ndarray:
        """A float32 vector of unit length (all zeros for text without words)."""
        ...


class HashingEmbedder:
    name = "hashing"

    def __init__(self, dimensions: int = 1024) -> None:
        self.dimensions = dimensions

    def embed(self, text: str) -> np.ndarray:
        words = _WORD.findall(text.lower())
        features = words + [f"{a} {b}" for a, b in pairwise(words)]
        vector = np.zeros(self.dimensions, dtype=np.float32)
        for feature in features:
            digest = xxhash.xxh3_64_intdigest(feature.encode())
            vector[digest % self.dimensions] += 1.0 if digest >> 63 else -1.0
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm else vector


def build_embedder(name: str) -> Embedder:
    if name == "hashing":
        return HashingEmbedder()
    if name == "minilm":
        from kvgate.cache.minilm import MiniLMEmbedder

        return MiniLMEmbedder.load()
    raise ValueError(f"unknown embedder {name!r}")
