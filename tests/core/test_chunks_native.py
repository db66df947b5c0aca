"""A stream's per-chunk loops in C: built by the install (CI requires it) and the same as
their Python versions, on random reads, payloads and chunks, odd shapes and hostile values
included: where the C loop leaves a shape to Python, the answer (or the exception) is Python's.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from kvgate import native
from kvgate.core import _chunks_native, chunks

_CHUNK = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m",
          "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}


def _line(rng: random.Random) -> bytes:
    """One SSE line (without its newline) of the kinds upstreams send."""
    return rng.choice([
        b"data: " + orjson.dumps(_CHUNK), b"data:" + orjson.dumps(_CHUNK), b"data: [DONE]",
        b"data:  x \t", b"data:", b"data", b"dat", b"", b": keep-alive", b"event: message",
        b"id: 4", b"data: \x0b{}\x0c", b"data: \xff\xfe", b"retry: 10", b"data: a\r",
        b"DATA: no", b" data: leading space",
    ])


@pytest.mark.parametrize("seed", range(8))
def test_sse_events_split_every_read_as_python_does(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        stream = b"".join(_line(rng) + rng.choice([b"\n", b"\r\n", b"\n\n", b""])
                          for _ in range(rng.randrange(12)))
        cuts = sorted(rng.sample(range(len(stream) + 1), min(len(stream) + 1,
                                                             rng.randrange(1, 6))))
        reads = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        c_pending = py_pending = b""
        for read in reads:
            c_events, c_pending = _chunks_native.sse_events(c_pending, read)
            py_events, py_pending = chunks.py_sse_events(py_pending, read)
            assert (c_events, c_pending) == (py_events, py_pending), (reads, read)
            assert all(type(event) is bytes for event in c_events)
            assert type(c_pending) is bytes


def test_sse_events_refuse_what_is_not_bytes() -> None:
    for args in ((b"", "data: x\n"), ("", b"data: x\n"), (b"", bytearray(b"x\n")), (b"",)):
        with pytest.raises(TypeError):
            _chunks_native.sse_events(*args)


def _payload(rng: random.Random) -> bytes:
    """One ``data:`` payload: chunks of the usual shapes, and everything else."""
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    return rng.choice([
        orjson.dumps(_CHUNK), orjson.dumps({**_CHUNK, "usage": usage}),
        orjson.dumps({**_CHUNK, "choices": [], "usage": usage}),
        orjson.dumps({**_CHUNK, "usage": None}), b"[DONE]", b"[DONE] ", b"[done]",
        b'{"error": {"message": "boom", "code": 503}}', b'{"error": null}', b"{}",
        b"[1, 2]", b'"text"', b"12", b"null", b"{", b"", b"not json", b'{"a": 1}{',
        b'{"choices": [{"text": "x"}]}', "{\"t\": \"\u00e9\"}".encode(), b'{"t": "\xff"}',
    ])


@pytest.mark.parametrize("seed", range(8))
def test_leading_chunks_parse_as_python_does(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(300):
        payloads = [_payload(rng) for _ in range(rng.randrange(8))]
        c_batch: list[Any] = []
        py_batch: list[Any] = []
        c_result = _chunks_native.leading_chunks(payloads, c_batch)
        assert c_result == chunks.py_leading_chunks(payloads, py_batch), payloads
        assert c_batch == py_batch, payloads
        stop = c_result[0]
        # It stops exactly at [DONE] or a payload json_object refuses / parse_chunk raises on.
        assert stop == len(payloads) or payloads[stop] == b"[DONE]" or not isinstance(
            _loads(payloads[stop]), dict) or "error" in _loads(payloads[stop])


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def test_leading_chunks_append_to_a_batch_subclass_and_refuse_other_input() -> None:
    class Batch(list[Any]):
        pass

    batch = Batch([{"kept": True}])
    assert _chunks_native.leading_chunks([b"{}", b'{"usage": 1}'], batch) == (2, 1)
    assert batch == [{"kept": True}, {}, {"usage": 1}]
    with pytest.raises(TypeError):
        _chunks_native.leading_chunks((b"{}",), [])
    with pytest.raises(TypeError):
        _chunks_native.leading_chunks([b"{}"], ())
    # A payload that is not bytes is left to Python (which parses str as orjson does).
    assert _chunks_native.leading_chunks(["{}", b"{}"], []) == (0, 0)


class _Truthy:
    """A value no JSON parser makes, whose truth runs Python code."""

    def __bool__(self) -> bool:
        raise RuntimeError("asked for its truth")


_VALUES: list[Any] = [None, True, False, 0, 1, -0.0, 2.5, "", "x", "ok go", [], [1], {},
                      {"a": 1}]


def _value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if roll < 0.7 or depth > 2:
        return rng.choice(_VALUES)
    if roll < 0.8:
        return _Truthy()
    if roll < 0.9:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    return {k: _value(rng, depth + 1) for k in rng.sample(["text", "content", "x"], 2)}


def _choice(rng: random.Random) -> Any:
    if rng.random() < 0.1:
        return _value(rng)
    choice: dict[str, Any] = {"index": 0}
    if rng.random() < 0.7:
        choice["finish_reason"] = rng.choice([None, None, "stop", "length", "", _value(rng)])
    roll = rng.random()
    if roll < 0.5:
        delta: Any = {}
        if rng.random() < 0.8:
            delta["content"] = rng.choice(["a", " b", "", None, _value(rng)])
        if rng.random() < 0.2:
            delta["tool_calls"] = rng.choice([[{"id": "t"}], [], None, _value(rng)])
        if rng.random() < 0.2:
            delta["role"] = "assistant"
        choice["delta"] = delta if rng.random() < 0.9 else _value(rng)
    elif roll < 0.6:
        choice["delta"] = None
        choice["text"] = rng.choice(["t", "", None])
    elif roll < 0.9:
        choice["text"] = rng.choice(["t", "", None, _value(rng)])
    return choice


def _chunk(rng: random.Random) -> Any:
    if rng.random() < 0.03:
        return _value(rng)
    chunk: dict[str, Any] = {"id": "c"}
    roll = rng.random()
    if roll < 0.8:
        chunk["choices"] = [_choice(rng) for _ in range(rng.choice([1, 1, 1, 0, 2]))]
    elif roll < 0.9:
        chunk["choices"] = _value(rng)
    if rng.random() < 0.2:
        chunk["usage"] = rng.choice([{"prompt_tokens": 1}, None, {}, _value(rng)])
    return chunk


def _outcome(function: Any, batch: list[Any]) -> Any:
    try:
        return "ok", function(batch)
    except Exception as exc:  # the same exception type is the same answer
        return "raised", type(exc)


@pytest.mark.parametrize("seed", range(8))
def test_observe_reads_every_batch_as_python_does(seed: int) -> None:
    rng = random.Random(seed)
    left_to_python = 0
    for _ in range(400):
        batch = [_chunk(rng) for _ in range(rng.randrange(6))]
        expected = _outcome(chunks.py_observe, batch)
        assert _outcome(chunks.observe, batch) == expected, batch
        native_result = _chunks_native.observe(batch)
        if native_result is None:
            left_to_python += 1
        else:  # C answered itself: Python's answer, identical objects
            assert expected[0] == "ok" and native_result == expected[1], batch
            assert all(a is b for a, b in zip(native_result[0], expected[1][0], strict=True))
            assert all(a is b for a, b in zip(native_result[3], expected[1][3], strict=True))
    assert 0 < left_to_python < 200  # both paths ran


def test_observe_of_a_plain_stream() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    batch = [
        {**_CHUNK, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        _CHUNK, {**_CHUNK, "choices": [{"index": 0, "delta": {"content": " there"}}]},
        {**_CHUNK, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**_CHUNK, "choices": [], "usage": usage},
    ]
    assert _chunks_native.observe(batch) == (["hi", " there"], True, False, [usage])
    assert _chunks_native.observe([]) == ([], False, False, [])
    assert _chunks_native.observe(({},)) is None  # not a list: Python's
    assert _chunks_native.observe([{"choices": [{"text": "a", "delta": None}]}]) == (
        ["a"], False, False, [])


def test_the_install_built_the_extension() -> None:
    assert chunks.NATIVE_AVAILABLE
    assert chunks.sse_events is _chunks_native.sse_events
    assert chunks.leading_chunks is _chunks_native.leading_chunks


def test_an_install_without_it_says_so_once(monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(chunks, "NATIVE_AVAILABLE", False)
    monkeypatch.setattr(native, "_warned", set())
    with caplog.at_level("WARNING", logger="kvgate.streams"):
        chunks.warn_if_python()
        chunks.warn_if_python()
    assert [r.message for r in caplog.records if "is not built" in r.message] == [
        "kvgate.core._chunks_native is not built (no C compiler at install?): streams split, "
        "parse and read their chunks in Python, more CPU per streamed request; reinstall "
        "with a C compiler"]
