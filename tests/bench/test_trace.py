"""Mooncake-style traces: parsing, the checked-in synthetic trace, replay prompts."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from kvgate.bench.loadgen import LoadSpec, arrival_times_s
from kvgate.bench.request import COMPLETIONS_PATH
from kvgate.bench.text import approx_tokens
from kvgate.bench.trace import (
    BlockText,
    TraceEntry,
    TraceError,
    dump_trace,
    load_trace,
    parse_trace,
    synthesize_trace,
)
from kvgate.bench.workloads import TraceReplayWorkload, WorkloadOptions

CHECKED_IN = Path(__file__).resolve().parents[2] / "benchmarks/traces/mooncake_synthetic.jsonl"


def test_parses_mooncake_lines() -> None:
    lines = ['{"timestamp": 27482, "input_length": 6955, "output_length": 52, '
             '"hash_ids": [46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59]}',
             "",
             '{"timestamp": 30535.5, "input_length": 6472, "output_length": 26, '
             '"hash_ids": [46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 60, 61]}']
    first, second = parse_trace(lines)
    assert first == TraceEntry(27482.0, 6955, 52, tuple(range(46, 60)))
    assert second.timestamp_ms == 30535.5
    assert parse_trace(dump_trace([first, second]).splitlines()) == [first, second]


@pytest.mark.parametrize(("line", "message"), [
    ("not json", "not JSON"),
    ("[1, 2]", "JSON object"),
    ('{"timestamp": 1, "input_length": 5, "output_length": 2}', "hash_ids"),
    ('{"timestamp": -1, "input_length": 5, "output_length": 2, "hash_ids": []}', "timestamp"),
    ('{"timestamp": 1, "input_length": 5.5, "output_length": 2, "hash_ids": []}',
     "input_length"),
    ('{"timestamp": 1, "input_length": 5, "output_length": 2, "hash_ids": ["a"]}', "hash_ids"),
])
def test_rejects_bad_lines_naming_the_line(line: str, message: str) -> None:
    good = '{"timestamp": 0, "input_length": 1, "output_length": 1, "hash_ids": [0]}'
    with pytest.raises(TraceError, match=message) as info:
        parse_trace([good, line], source="t.jsonl")
    assert "t.jsonl:2" in str(info.value)


def test_checked_in_trace_is_the_synthesizer_output() -> None:
    assert CHECKED_IN.read_text() == dump_trace(synthesize_trace())


def test_synthetic_trace_has_mooncake_sharing() -> None:
    entries = load_trace(CHECKED_IN)
    assert len(entries) == 200
    assert [e.timestamp_ms for e in entries] == sorted(e.timestamp_ms for e in entries)
    for entry in entries:
        # Mooncake: one hash id per started 512-token block.
        assert len(entry.hash_ids) == -(-entry.input_length // 512)
    firsts = [e.hash_ids[0] for e in entries]
    assert len(set(firsts)) <= 4  # every prompt starts with one of a few system prompts
    prefixes = {e.hash_ids[:3] for e in entries}
    assert len(prefixes) < len(entries) // 2


def test_shared_hash_ids_become_shared_text_of_the_right_length() -> None:
    blocks = BlockText(seed=0, block_tokens=8)
    a = TraceEntry(0, 20, 4, (1, 2, 3))
    b = TraceEntry(0, 19, 4, (1, 2, 9))
    c = TraceEntry(0, 30, 4, (1,))  # blocks cover 8 tokens: padded with unique text
    text_a, text_b, text_c = (blocks.prompt(e, i) for i, e in enumerate((a, b, c)))
    assert approx_tokens(text_a) == 20 and approx_tokens(text_b) == 19
    assert text_a[: 16 * 4] == text_b[: 16 * 4]
    assert text_a[16 * 4:] != text_b[16 * 4: 20 * 4]
    assert approx_tokens(text_c) == 30 and text_c.startswith(text_a[: 8 * 4])
    assert approx_tokens(blocks.prompt(a, 0, max_input_tokens=10)) == 10


def test_replay_workload_uses_timestamps_and_output_lengths(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(dump_trace([TraceEntry(1000, 600, 17, (0, 1)),
                                TraceEntry(1500, 700, 3, (0, 2))]))
    requests = TraceReplayWorkload(path=str(path)).build(WorkloadOptions(stream=False))
    assert [r.at_s for r in requests] == [1.0, 1.5]
    assert [r.max_output_tokens for r in requests] == [17, 3]
    assert [r.prompt_tokens_hint for r in requests] == [600, 700]
    assert arrival_times_s(requests, LoadSpec(mode="timestamps")) == [0.0, 0.5]
    first, second = (orjson.loads(r.body)["messages"][0]["content"] for r in requests)
    assert first[: 512 * 4] == second[: 512 * 4] and first[512 * 4:] != second[512 * 4: 600 * 4]


def test_replay_completions_api_and_default_trace() -> None:
    requests = TraceReplayWorkload(api="completions").build(WorkloadOptions(num_requests=3))
    assert len(requests) == 3 and all(r.path == COMPLETIONS_PATH for r in requests)
    assert isinstance(orjson.loads(requests[0].body)["prompt"], str)
    with pytest.raises(ValueError):
        TraceReplayWorkload(api="grpc")
