"""Mooncake-style traces: parse, write, synthesize, and turn entries into prompts.

A trace is JSON Lines, one request per line::

    {"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47, 48]}

``timestamp`` is the arrival in milliseconds, ``hash_ids`` name the prompt's 512-token blocks in
order (Mooncake's block size), and two requests with the same leading ids share that prefix.
Replay gives each id a fixed block of filler text, so shared ids become shared prompt text and a
prefix cache sees exactly the sharing the trace recorded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson

from kvgate.bench.text import CHARS_PER_PIECE, filler, seeded_rng

MOONCAKE_BLOCK_TOKENS = 512


class TraceError(ValueError):
    """A trace line that is not a valid entry; the message names the line."""


@dataclass(frozen=True, slots=True)
class TraceEntry:
    timestamp_ms: float
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]

    def to_json(self) -> dict[str, object]:
        stamp_ms = float(self.timestamp_ms)
        stamp = int(stamp_ms) if stamp_ms.is_integer() else stamp_ms
        return {"timestamp": stamp, "input_length": self.input_length,
                "output_length": self.output_length, "hash_ids": list(self.hash_ids)}


def _entry(data: object, where: str) -> TraceEntry:
    if not isinstance(data, dict):
        raise TraceError(f"{where}: expected a JSON object")
    try:
        stamp, input_length = data["timestamp"], data["input_length"]
        output_length, hash_ids = data["output_length"], data["hash_ids"]
    except KeyError as exc:
        raise TraceError(f"{where}: missing field {exc.args[0]!r}") from None
    if isinstance(stamp, bool) or not isinstance(stamp, int | float) or stamp < 0:
        raise TraceError(f"{where}: timestamp must be a non-negative number of milliseconds")
    for name, value in (("input_length", input_length), ("output_length", output_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise TraceError(f"{where}: {name} must be a non-negative integer")
    if not isinstance(hash_ids, list) or not all(
        isinstance(h, int) and not isinstance(h, bool) for h in hash_ids
    ):
        raise TraceError(f"{where}: hash_ids must be a list of integers")
    return TraceEntry(float(stamp), input_length, output_length, tuple(hash_ids))


def parse_trace(lines: Iterable[str | bytes], *, source: str = "trace") -> list[TraceEntry]:
    """Entries of a JSONL trace; blank lines are skipped, anything else invalid raises."""
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise TraceError(f"{source}:{number}: not JSON ({exc})") from None
        entries.append(_entry(data, f"{source}:{number}"))
    return entries


def load_trace(path: str | Path) -> list[TraceEntry]:
    with open(path, "rb") as file:
        return parse_trace(file, source=str(path))


def dump_trace(entries: Iterable[TraceEntry]) -> str:
    return "".join(orjson.dumps(e.to_json()).decode() + "\n" for e in entries)


class BlockText:
    """The text of each hash id's block, made once per id (trace prompts repeat blocks)."""

    def __init__(self, seed: int, block_tokens: int = MOONCAKE_BLOCK_TOKENS) -> None:
        self._seed = seed
        self.block_tokens = block_tokens
        self._blocks: dict[int, str] = {}

    def block(self, hash_id: int) -> str:
        text = self._blocks.get(hash_id)
        if text is None:
            text = self._blocks[hash_id] = filler(self.block_tokens, "trace.block", self._seed,
                                                  hash_id)
        return text

    def prompt(self, entry: TraceEntry, index: int, max_input_tokens: int = 0) -> str:
        """``input_length`` tokens: the entry's blocks in order, the last one cut to fit.

        An entry whose blocks cover fewer tokens than ``input_length`` is padded with text
        unique to the entry (nothing else could share it).
        """
        length = entry.input_length
        if max_input_tokens:
            length = min(length, max_input_tokens)
        parts: list[str] = []
        remaining = length
        for hash_id in entry.hash_ids:
            if remaining <= 0:
                break
            take = min(remaining, self.block_tokens)
            parts.append(self.block(hash_id)[: take * CHARS_PER_PIECE])
            remaining -= take
        if remaining > 0:
            parts.append(filler(remaining, "trace.unique", self._seed, index))
        return "".join(parts)


def synthesize_trace(
    num_requests: int = 200,
    *,
    seed: int = 0,
    rate_per_s: float = 4.0,
    num_system_prompts: int = 4,
    new_conversation_probability: float = 0.35,
    max_blocks: int = 12,
) -> list[TraceEntry]:
    """A small trace with Mooncake's kinds of sharing: a few popular system prompts (1-4
    blocks, Zipf-like popularity) and multi-turn conversations whose next turn extends the
    previous turn's blocks. Poisson arrivals at ``rate_per_s``; deterministic for a seed."""
    rng = seeded_rng("trace.synthesize", seed)
    next_id = 0

    def fresh(count: int) -> list[int]:
        nonlocal next_id
        ids = list(range(next_id, next_id + count))
        next_id += count
        return ids

    system_prompts = [fresh(rng.randint(1, 4)) for _ in range(num_system_prompts)]
    popularity = [1.0 / (rank + 1) for rank in range(num_system_prompts)]
    conversations: list[list[int]] = []
    entries: list[TraceEntry] = []
    now_ms = 0.0
    for _ in range(num_requests):
        if not conversations or rng.random() < new_conversation_probability:
            system = rng.choices(system_prompts, weights=popularity)[0]
            blocks = system + fresh(rng.randint(1, 3))
            conversations.append(blocks)
        else:
            index = rng.randrange(len(conversations))
            previous = conversations[index]
            # The previous turn's last block was partial, so it is new text here: drop its id.
            blocks = previous[:-1] + fresh(rng.randint(1, 3))
            if len(blocks) > max_blocks:
                blocks = blocks[: max_blocks]
            conversations[index] = blocks
        input_length = (len(blocks) - 1) * MOONCAKE_BLOCK_TOKENS + rng.randint(
            1, MOONCAKE_BLOCK_TOKENS)
        output_length = int(math.exp(rng.uniform(math.log(8), math.log(512))))
        entries.append(TraceEntry(float(round(now_ms)), input_length, output_length,
                                  tuple(blocks)))
        now_ms += rng.expovariate(rate_per_s) * 1000
    return entries
