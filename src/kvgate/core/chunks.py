"""A streamed answer's per-chunk work, in C where the package was built with it.

Every network read of a stream runs three loops over its chunks: the SSE split into
``data:`` payloads (:class:`~kvgate.providers.http_upstream.EventStream`), their parse into
chunk objects (:class:`~kvgate.providers.openai_compatible.ChunkStream`) and the relay's
look at each for its text, end and usage (:class:`~kvgate.resilience.stream_relay.StreamRelay`).
In Python those loops were about half of what a streamed request costs beyond a blocking one
(issue 15). ``_chunks_native.c`` runs the same loops; the functions below are the Python
versions, which serve where no compiler built it and which the tests hold the C ones to
(``tests/core/test_chunks_native.py``).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import orjson

from kvgate.core.provider import JSONObject
from kvgate.native import warn_missing

__all__ = ["NATIVE_AVAILABLE", "Observed", "leading_chunks", "observe", "sse_events",
           "warn_if_python"]

_DONE = b"[DONE]"


def py_sse_events(pending: bytes, chunk: bytes) -> tuple[list[bytes], bytes]:
    """The ``data:`` payloads (stripped) of the lines that ``pending + chunk`` ends, and the
    unterminated rest, which is the next read's ``pending``."""
    pending += chunk
    if b"\n" not in chunk:
        return [], pending
    lines = pending.split(b"\n")
    rest = lines.pop()
    return [line[5:].strip() for line in lines if line[:5] == b"data:"], rest


def py_leading_chunks(payloads: list[bytes], batch: list[JSONObject]) -> tuple[int, int]:
    """Append to ``batch`` the chunk objects of ``payloads`` up to the first ``[DONE]``, error
    chunk or payload that is not a JSON object; return where it stopped and how many of the
    appended chunks carry ``usage``. The caller deals with what it stopped at."""
    usage_chunks = 0
    for index, data in enumerate(payloads):
        if data == _DONE:
            return index, usage_chunks
        try:
            chunk = orjson.loads(data)
        except Exception:
            return index, usage_chunks
        if type(chunk) is not dict or "error" in chunk:
            return index, usage_chunks
        usage_chunks += "usage" in chunk
        batch.append(chunk)
    return len(payloads), usage_chunks


#: What a batch of chunks says, for the relay: each chunk's text (a chat delta's content, a
#: completion's text) where it has one; whether some chunk's first choice has a finish_reason;
#: whether some delta calls tools (such an answer cannot be resumed as text); each chunk's
#: usage where it has one.
Observed = tuple[list[Any], bool, bool, list[Any]]


def py_observe(batch: list[JSONObject]) -> Observed:
    """What ``batch`` says (:data:`Observed`), from each chunk's first choice and usage."""
    texts: list[Any] = []
    usages: list[Any] = []
    finished = tool_calls = False
    for chunk in batch:
        choices = chunk.get("choices")
        if choices:
            choice = choices[0]
            if choice.get("finish_reason"):
                finished = True
            delta = choice.get("delta")
            if delta is None:
                text = choice.get("text")
            else:
                text = delta.get("content")
                if delta.get("tool_calls"):
                    tool_calls = True
            if text:
                texts.append(text)
        usage = chunk.get("usage")
        if usage:
            usages.append(usage)
    return texts, finished, tool_calls, usages


NATIVE_AVAILABLE = importlib.util.find_spec("kvgate.core._chunks_native") is not None

if NATIVE_AVAILABLE:
    from kvgate.core import _chunks_native

    sse_events = _chunks_native.sse_events
    leading_chunks = _chunks_native.leading_chunks

    def observe(batch: list[JSONObject]) -> Observed:
        """:func:`py_observe`, in C; in Python for a shape the C loop leaves to it (a value
        no JSON parser makes, a chunk Python's version fails on)."""
        return _chunks_native.observe(batch) or py_observe(batch)
else:
    sse_events = py_sse_events
    leading_chunks = py_leading_chunks
    observe = py_observe


def warn_if_python() -> None:
    """Log once (per process) that streams run their per-chunk loops in Python."""
    if not NATIVE_AVAILABLE:
        warn_missing("_chunks_native", "streams split, parse and read their chunks in "
                     "Python, more CPU per streamed request", logger="kvgate.streams")
