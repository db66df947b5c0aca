"""Replay of a Mooncake-style trace (see :mod:`kvgate.bench.trace`).

Each entry becomes one request whose prompt is the text of its hash ids' blocks, with
``max_tokens`` = the entry's output length (add ``--ignore-eos`` so vLLM-like servers generate
all of it) and ``at_s`` = its timestamp, which the ``timestamps`` load mode replays. An empty
``path`` replays the built-in synthetic trace (:func:`~kvgate.bench.trace.synthesize_trace`:
``synthetic_requests`` entries drawn with the run's seed); at the defaults and seed 0 it is the
one checked in as ``benchmarks/traces/mooncake_synthetic.jsonl``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kvgate.bench.request import COMPLETIONS_PATH, BenchRequest, encode_body
from kvgate.bench.text import approx_tokens
from kvgate.bench.trace import MOONCAKE_BLOCK_TOKENS, BlockText, load_trace, synthesize_trace
from kvgate.bench.workloads.base import WorkloadOptions, chat_request


@dataclass(frozen=True, slots=True)
class TraceReplayWorkload:
    name: ClassVar[str] = "trace"

    path: str = ""
    block_tokens: int = MOONCAKE_BLOCK_TOKENS
    #: Clip prompts to this many tokens (0 = no clip), for servers with a short context.
    max_input_tokens: int = 0
    #: "chat" sends one user message; "completions" sends the raw prompt to /v1/completions.
    api: str = "chat"
    #: Entries of the built-in synthetic trace (without ``path``).
    synthetic_requests: int = 200
    #: A window of the trace: entries skipped from its start, and the most kept after them
    #: (0 = the rest). A window later in a trace starts with the conversations it catches
    #: mid-way, whose earlier turns it leaves out (they arrive cold).
    first_entry: int = 0
    max_entries: int = 0

    def __post_init__(self) -> None:
        if self.api not in ("chat", "completions"):
            raise ValueError(f"api must be 'chat' or 'completions', got {self.api!r}")
        if self.block_tokens < 1 or self.synthetic_requests < 1:
            raise ValueError("block_tokens and synthetic_requests must be >= 1")
        if self.first_entry < 0 or self.max_entries < 0:
            raise ValueError("first_entry and max_entries must be >= 0")

    def build(self, options: WorkloadOptions) -> list[BenchRequest]:
        entries = (load_trace(self.path) if self.path
                   else synthesize_trace(self.synthetic_requests, seed=options.seed))
        entries = entries[self.first_entry:]
        if self.max_entries:
            entries = entries[: self.max_entries]
        if not entries:
            raise ValueError(f"the trace has no entries from entry {self.first_entry} on")
        if options.num_requests is not None:
            entries = entries[: options.num_requests]
        blocks = BlockText(options.seed, self.block_tokens)
        requests = []
        for index, entry in enumerate(entries):
            prompt = blocks.prompt(entry, index, self.max_input_tokens)
            max_tokens = max(1, entry.output_length)
            prompt_tokens = approx_tokens(prompt)
            at_s = entry.timestamp_ms / 1000
            tag = f"hash{entry.hash_ids[0]}" if entry.hash_ids else ""
            if self.api == "chat":
                requests.append(chat_request(
                    options, [{"role": "user", "content": prompt}], max_tokens,
                    prompt_tokens_hint=prompt_tokens, tag=tag, at_s=at_s,
                ))
                continue
            body: dict[str, object] = {"model": options.model, "prompt": prompt,
                                       "max_tokens": max_tokens, "stream": options.stream}
            if options.stream:
                body["stream_options"] = {"include_usage": True}
            if options.ignore_eos:
                body["ignore_eos"] = True
            requests.append(BenchRequest(
                body=encode_body(body), stream=options.stream, path=COMPLETIONS_PATH,
                at_s=at_s, prompt_tokens_hint=prompt_tokens, max_output_tokens=max_tokens,
                tag=tag,
            ))
        return requests
