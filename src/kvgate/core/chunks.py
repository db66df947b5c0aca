"""A streamed answer's per-chunk work, in C where the package was built with it.

Every network read of a stream ran three loops over its chunks: the SSE split into
``data:`` payloads (:class:`~kvgate.providers.http_upstream.EventStream`), their parse into
chunk objects (:class:`~kvgate.providers.openai_compatible.ChunkStream`) and the relay's
look at each for its text, end and usage (:class:`~kvgate.resilience.stream_relay.StreamRelay`).
With the objects' making (orjson, ~0.8 us a chunk), those loops were most of what a streamed
request cost beyond a blocking one (issue 15). ``_chunks_native.c`` splits in one pass and
reads what the gateway needs of each payload from its bytes (:func:`scan`), building no chunk
objects: the API forwards the bytes (:class:`~kvgate.core.provider.WireBatch`) and they are
parsed only where a chunk must change. The functions below are the Python versions, which
serve where no compiler built it and which the tests hold the C ones to
(``tests/core/test_chunks_native.py``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from kvgate.core.provider import JSONObject, WireBatch
from kvgate.native import warn_missing

__all__ = ["NATIVE_AVAILABLE", "Observed", "Scanned", "identity", "observe", "scan",
           "sse_events", "warn_if_python"]

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


#: What a batch of chunks says, for the relay: each chunk's text (a chat delta's content, a
#: completion's text) where it has one; whether some chunk's first choice has a finish_reason;
#: whether some delta calls tools (such an answer cannot be resumed as text); each chunk's
#: usage where it has one.
Observed = tuple[list[Any], bool, bool, list[Any]]
#: What :func:`py_scan` read of a read's payloads.
Scanned = tuple[int, int, bool, bool, Observed | None]


def py_scan(payloads: list[bytes]) -> Scanned:
    """What ``payloads`` say up to the first ``[DONE]``, error chunk or payload that is not a
    JSON object (:data:`Scanned`): where it stopped (the caller deals with that payload),
    how many chunks before it carry ``usage``, whether the last of them has ``usage`` and no
    (or empty) ``choices`` (vLLM's closing usage chunk), whether its ``choices`` is ``[]``,
    and what they say (:func:`py_observe`; None here: the caller observes the parsed chunks,
    as the C version leaves to it a chunk whose shape only Python's observe reads)."""
    parsed: list[JSONObject] = []
    for data in payloads:
        if type(data) is not bytes or data == _DONE:
            break
        try:
            chunk = orjson.loads(data)
        except Exception:
            break
        if type(chunk) is not dict or "error" in chunk:
            break
        parsed.append(chunk)
    usage_chunks = sum("usage" in chunk for chunk in parsed)
    last = parsed[-1] if parsed else {}
    return (len(parsed), usage_chunks, "usage" in last and not last.get("choices"),
            bool(parsed) and last.get("choices") == [], None)


def py_observe(batch: Sequence[JSONObject]) -> Observed:
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
    scan = _chunks_native.scan
    _native_observe = _chunks_native.observe
else:
    sse_events = py_sse_events
    scan = py_scan

    def _native_observe(batch: list[JSONObject]) -> Observed | None:
        return None


def observe(batch: Sequence[JSONObject]) -> Observed:
    """:func:`py_observe`: what the scan found, for a batch read from the wire; in C for
    other lists of chunks, in Python for a shape the C loop leaves to it (a value no JSON
    parser makes, a chunk Python's version fails on)."""
    if isinstance(batch, WireBatch):
        # NOTE: once a chunk changed (a continuation), the objects are what the client gets:
        # read them, so that the relay's changes to a usage reach it.
        if batch.observed is not None and batch.payloads is not None:
            return batch.observed
        batch = batch.chunks()
    return (isinstance(batch, list) and _native_observe(batch)) or py_observe(batch)


def identity(batch: Sequence[JSONObject]) -> tuple[Any, Any, Any]:
    """The answer's id, created time and model: the first chunk's that has an id (else the
    last chunk's). A batch read from the wire is not parsed whole for it: its chunks one by
    one, usually the first alone."""
    found: tuple[Any, Any, Any] = (None, None, None)
    chunks: Iterable[JSONObject] = batch
    if isinstance(batch, WireBatch) and batch.payloads is not None:
        chunks = map(orjson.loads, batch.payloads)
    for chunk in chunks:
        found = chunk.get("id"), chunk.get("created"), chunk.get("model")
        if found[0] is not None:
            break
    return found


def warn_if_python() -> None:
    """Log once (per process) that streams run their per-chunk loops in Python."""
    if not NATIVE_AVAILABLE:
        warn_missing("_chunks_native", "streams split, parse and read their chunks in "
                     "Python, more CPU per streamed request", logger="kvgate.streams")
