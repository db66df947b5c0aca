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
from kvgate.core.provider import WireBatch
from kvgate.providers.errors import UpstreamError
from kvgate.providers.openai_compatible import parse_chunk
from tests.routing.native_compare import outcome

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


def _mutated(rng: random.Random, data: bytes) -> bytes:
    """``data`` with a few random bytes changed, dropped or added: mostly no longer JSON, or
    JSON of another shape, for the scanner's validation."""
    out = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        at = rng.randrange(len(out) + 1)
        roll = rng.random()
        byte = rng.choice(b'{}[]",:\\ \t\r\nuetn0-.eE+a\x00\x1f\x7f\xc3\xa9\xed\xf4\x80')
        if roll < 0.4 and at < len(out):
            out[at] = byte
        elif roll < 0.7 and at < len(out):
            del out[at]
        else:
            out.insert(at, byte)
    return bytes(out)


#: Payloads written by hand for the scanner's edges; each is valid JSON unless it says so.
_EDGES = [
    b'{"choices":[{"delta":{"content":"caf\\u00e9 \\ud83d\\ude00 \\n\\"q\\" \\/ \\\\"}}]}',
    '{"choices":[{"delta":{"content":"é中😀"}}]}'.encode(),
    b'{"choices":[{"delta":{"content":"\\b\\f\\r\\t\\u0000\\u001F\\u07ff\\uFFFF"}}]}',
    b'{"choices":[{"delta":{"content":"\\ud83d"}}]}',  # a lone surrogate: orjson refuses
    b'{"choices":[{"delta":{"content":"\\udc00\\ud83d"}}]}',  # the pair reversed
    b'{"choices":[{"delta":{"content":"a"},"delta":{"content":"b"}}]}',  # orjson keeps "b"
    b'{"choices":[],"choices":[{"text":"x"}]}', b'{"usage":null,"usage":{"n":1}}',
    b'{"ch\\u006fices":[{"text":"x"}]}', b'{"choices":[{"te\\u0078t":"x"}]}',
    b'{"choices":[{"text":"x"}],"x\\u0041":1}',  # an escaped key we do not read
    b'{"choices":[{"finish_reason":0,"text":"x"}]}', b'{"choices":[{"finish_reason":1e2}]}',
    b'{"choices":[{"delta":{"tool_calls":0}}]}', b'{"choices":0}', b'{"choices":-0.0}',
    b'{"choices":[1,{"text":"x"}]}', b'{"choices":[{"text":"x"},{"text":"y"}]}',
    b'{"choices":{"0":{"text":"x"}}}', b'{"choices":"abc"}', b'{"choices":[{"delta":"x"}]}',
    b'{"choices":[{"delta":[],"text":"t"}]}', b'{"choices":[{"delta":false,"text":"t"}]}',
    b'{"choices":[{"delta":null,"text":"t"}]}', b'{"choices":[{"text":5}]}',
    b'{"choices":[{"text":["a"]}]}', b'{"choices":[{"text":{}}]}', b'{"usage":5}',
    b'{"usage":0}', b'{"usage":[]}', b'{"usage":"x"}', b'{"usage":true}',
    b'{"n":123456789012345678901}', b'{"n":1e400}', b'{"n":1e99}', b'{"n":-0.5e-05}',
    b'{"n":1.5E+2}', b'{"n":01}', b'{"n":1.}', b'{"n":.5}', b'{"n":-}', b'{"n":NaN}',
    b'{"n":' + b"1" * 400 + b"}", b'{"n":0.' + b"1" * 500 + b"}",
    b'{"a":' + b"[" * 70 + b"]" * 70 + b"}", b'{"a":' + b"[" * 30 + b"]" * 30 + b"}",
    b'{"s":"\xed\xa0\x80"}', b'{"s":"\xc0\xaf"}', b'{"s":"\xf4\x90\x80\x80"}',
    b'{"s":"\xf0\x9f\x98"}', b'{"s":"\x01"}', b'{"s":"\x7f"}', b'{"s":"\\x"}',
    b' \t{"choices":[]}\r\n ', b'{"choices":[]} x', b'{"a":tru}', b'{"a":nul}',
    b'\xef\xbb\xbf{"choices":[]}', b'{"error":null,"choices":[]}', b'{"x":{"error":1}}',
    b'{"choices":[{"delta":{"content":"a","role":"assistant"},"logprobs":{"content":'
    b'[{"token":"a","logprob":-0.25,"bytes":[97],"top_logprobs":[]}]},'
    b'"finish_reason":"stop","stop_reason":null}],"usage":{"prompt_tokens":3}}',
]


def _payloads(rng: random.Random) -> list[bytes]:
    out = []
    for _ in range(rng.randrange(8)):
        roll = rng.random()
        if roll < 0.3:
            out.append(_payload(rng))
        elif roll < 0.55:
            chunk = _chunk(rng, json_only=True)
            out.append(orjson.dumps(chunk))
        elif roll < 0.8:
            out.append(rng.choice(_EDGES))
        else:
            out.append(_mutated(rng, rng.choice([orjson.dumps(_CHUNK), *_EDGES])))
    return out


@pytest.mark.parametrize("seed", range(12))
def test_scan_reads_every_payload_as_parsing_it_does(seed: int) -> None:
    rng = random.Random(seed)
    statuses: set[str] = set()
    for _ in range(400):
        payloads = _payloads(rng)
        scanned = _chunks_native.scan(payloads)
        assert scanned[:4] == chunks.py_scan(payloads)[:4], payloads
        stop, observed = scanned[0], scanned[4]
        parsed = [orjson.loads(data) for data in payloads[:stop]]
        expected = outcome(chunks.py_observe, parsed)
        if observed is None:  # the relay observes the objects
            assert outcome(chunks.observe, parsed) == expected
        else:
            assert ("value", observed) == expected, payloads
            assert [type(t) for t in observed[0]] == [type(t) for t in expected[1][0]]
        if stop < len(payloads) and payloads[stop] != b"[DONE]":
            # Where the scan stops, the provider's own parse raises (openai_compatible).
            with pytest.raises(UpstreamError):
                parse_chunk(payloads[stop])
        statuses.update(_chunks_native.scan_status(data) for data in payloads)
    assert statuses == {"scanned", "unsure", "stop"}


@pytest.mark.parametrize("seed", range(6))
def test_what_the_scanner_reads_alone_orjson_parses_to_the_same(seed: int) -> None:
    """Mutated chunks, one at a time: whatever the scanner reads without orjson, orjson
    parses, and to the values the scanner read."""
    rng = random.Random(seed)
    sure = 0
    for _ in range(3000):
        data = _mutated(rng, rng.choice([orjson.dumps(_CHUNK), *_EDGES]))
        if _chunks_native.scan_status(data) != "scanned":
            continue
        sure += 1
        parsed = orjson.loads(data)  # raises if the scanner was wrong to be sure
        assert isinstance(parsed, dict) and "error" not in parsed, data
        assert _chunks_native.scan([data])[4] == chunks.py_observe([parsed]), data
    assert sure > 200


def test_plain_chunks_are_read_from_their_bytes() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    for chunk in (_CHUNK, {**_CHUNK, "choices": [], "usage": usage}, {"choices": []},
                  {**_CHUNK, "choices": [{"index": 0, "text": "x", "logprobs": None,
                                          "finish_reason": "length"}]}):
        assert _chunks_native.scan_status(orjson.dumps(chunk)) == "scanned", chunk
        assert _chunks_native.scan_status(orjson.dumps(chunk, option=orjson.OPT_INDENT_2)) == (
            "scanned")
    assert _chunks_native.scan([orjson.dumps(_CHUNK), orjson.dumps(
        {**_CHUNK, "choices": [], "usage": usage}), b"[DONE]"]) == (
        2, 1, True, True, (["hi"], False, False, [usage]))
    for data in (b'{"error": {"code": 500}}', b'{"choices": [], "error": 1}'):
        assert _chunks_native.scan_status(data) == "stop"
    for data in (b"[1]", b'{"choices": [{"finish_reason": 1}]}', b'{"a": 1e400}', b"{",
                 b'{"s": "\xed\xa0\x80"}', b'{"usage": 1, "usage": null}',
                 b'{"choices": [{"delta": {"content": "a", "content": ""}}]}'):
        assert _chunks_native.scan_status(data) == "unsure", data
    empty = b'{"choices": [{"delta": {"content": ""}, "finish_reason": ""}], "usage": {}}'
    assert _chunks_native.scan([empty]) == (1, 1, False, False, ([], False, False, []))
    with pytest.raises(TypeError):
        _chunks_native.scan((b"{}",))
    with pytest.raises(TypeError):
        _chunks_native.scan_status("{}")  # type: ignore[arg-type]


def test_a_wire_batch_parses_its_chunks_only_when_asked() -> None:
    payloads = [orjson.dumps(_CHUNK), b'{"n": 2}']
    batch = WireBatch(payloads)
    assert len(batch) == 2 and batch._chunks is None
    assert chunks.identity(batch) == ("chatcmpl-1", 7, "m") and batch._chunks is None
    assert batch[1] == {"n": 2} and list(batch) == [_CHUNK, {"n": 2}]
    assert batch.chunks() is batch.chunks()  # parsed once
    assert chunks.identity([{"id": None, "created": 1}, {"created": 2, "model": "x"}]) == (
        None, 2, "x")


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


def _chunk(rng: random.Random, *, json_only: bool = False) -> Any:
    if json_only:  # only what a JSON document can hold
        chunk = _chunk(rng)
        return orjson.loads(orjson.dumps(chunk, default=lambda value: None))
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


@pytest.mark.parametrize("seed", range(8))
def test_observe_reads_every_batch_as_python_does(seed: int) -> None:
    rng = random.Random(seed)
    left_to_python = 0
    for _ in range(400):
        batch = [_chunk(rng) for _ in range(rng.randrange(6))]
        expected = outcome(chunks.py_observe, batch)
        assert outcome(chunks.observe, batch) == expected, batch
        native_result = _chunks_native.observe(batch)
        if native_result is None:
            left_to_python += 1
        else:  # C answered itself: Python's answer, identical objects
            assert expected[0] == "value" and native_result == expected[1], batch
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
    assert chunks.scan is _chunks_native.scan


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
