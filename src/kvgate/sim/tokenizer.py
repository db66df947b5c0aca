"""The simulator's tokenizer, which is defined in ``kvgate.vllm_compat.sim_tokenizer``.

A gateway with a ``kvgate-sim:`` tokenizer computes the same ids, and the serving path must not
import the simulator, so the code lives in the neutral package; the simulator's modules keep
importing it from here.
"""

from __future__ import annotations

from kvgate.vllm_compat.sim_tokenizer import (
    CHARS_PER_TOKEN,
    FIRST_TEXT_ID,
    LAST_TEXT_ID,
    SimTokenizer,
)

__all__ = ["CHARS_PER_TOKEN", "FIRST_TEXT_ID", "LAST_TEXT_ID", "SimTokenizer"]
