"""Timing probes against one replica (real ``vllm serve`` or ``kvgate sim``) for the ``simfit``
scenario: streamed requests timed by the client, and the replica's own timers from /metrics.

    snapshot = read_server(url)
    probes = asyncio.run(stream_batch(url, [body]))       # alone: nothing else runs
    delta = read_server(url).minus(snapshot)
    delta.prefill_s        # engine seconds from scheduling to the first token
    probes[0].ttft_s - delta.queue_s - delta.prefill_s   # the API server's share

The replica's histograms (``vllm:request_prefill_time_seconds`` and friends, summed over label
sets) split a request's TTFT into front end, queue and engine, which a client cannot; their
deltas around a request sent alone belong to that request only.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import aiohttp
import orjson

from kvgate.bench.request import CHAT_PATH

#: /metrics series (summed over label sets) -> :class:`ServerTimers` field.
_SERIES = {
    "vllm:request_queue_time_seconds_sum": "queue_s",
    "vllm:request_prefill_time_seconds_sum": "prefill_s",
    "vllm:request_decode_time_seconds_sum": "decode_s",
    "vllm:time_to_first_token_seconds_sum": "ttft_s",
    "vllm:time_to_first_token_seconds_count": "requests",
    "vllm:inter_token_latency_seconds_sum": "itl_sum_s",
    "vllm:inter_token_latency_seconds_count": "itl_count",
    "vllm:prefix_cache_queries_total": "prefix_queries",
    "vllm:prefix_cache_hits_total": "prefix_hits",
    "vllm:prompt_tokens_total": "prompt_tokens",
}
CACHE_CONFIG_INFO = "vllm:cache_config_info"


@dataclass(frozen=True, slots=True)
class ServerTimers:
    """Cumulative sums of a replica's request timers and token counters (or their growth)."""

    queue_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    ttft_s: float = 0.0
    requests: float = 0.0
    itl_sum_s: float = 0.0
    itl_count: float = 0.0
    prefix_queries: float = 0.0
    prefix_hits: float = 0.0
    prompt_tokens: float = 0.0

    def minus(self, earlier: ServerTimers) -> ServerTimers:
        return ServerTimers(**{f.name: getattr(self, f.name) - getattr(earlier, f.name)
                               for f in fields(self)})

    @property
    def mean_itl_s(self) -> float | None:
        """The replica's mean gap between consecutive tokens of a request."""
        return self.itl_sum_s / self.itl_count if self.itl_count else None


def parse_timers(text: str) -> ServerTimers:
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = _SERIES.get(line.split("{", 1)[0].split(" ", 1)[0])
        if name is not None:
            values[name] = values.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return ServerTimers(**values)


def parse_info_labels(text: str, name: str = CACHE_CONFIG_INFO) -> dict[str, str]:
    """The labels of the first sample of an info-style gauge (e.g. vLLM's cache config)."""
    for line in text.splitlines():
        if line.startswith(name + "{"):
            body = line[len(name) + 1:line.rindex("}")]
            return _split_labels(body)
    return {}


def _split_labels(body: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    i = 0
    while i < len(body):
        eq = body.index("=", i)
        key = body[i:eq].strip().lstrip(",").strip()
        j = eq + 2  # past ="
        value = []
        while body[j] != '"':
            if body[j] == "\\":
                j += 1
            value.append(body[j])
            j += 1
        labels[key] = "".join(value)
        i = j + 1
    return labels


def read_metrics_text(url: str, timeout_s: float = 10.0) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=timeout_s) as response:
        text: str = response.read().decode("utf-8")
        return text


def read_server(url: str) -> ServerTimers:
    return parse_timers(read_metrics_text(url))


@dataclass(slots=True)
class Probe:
    """One streamed request as the client saw it (seconds since it was sent)."""

    ttft_s: float | None = None
    #: Arrival of every event carrying a choice, first included.
    event_times_s: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    error: str = ""

    @property
    def gaps_s(self) -> list[float]:
        times = self.event_times_s
        return [b - a for a, b in itertools.pairwise(times)]


def chat_body(model: str, content: str | list[dict[str, Any]], max_tokens: int) -> bytes:
    """A streamed chat request that generates exactly ``max_tokens`` tokens."""
    return orjson.dumps({
        "model": model, "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.0, "stream": True,
        "stream_options": {"include_usage": True},
    })


async def _stream_one(session: aiohttp.ClientSession, url: str, body: bytes) -> Probe:
    probe = Probe()
    started = time.perf_counter()
    async with session.post(url + CHAT_PATH, data=body,
                            headers={"content-type": "application/json"}) as response:
        if response.status != 200:
            probe.error = f"http_{response.status}: {(await response.read())[:200]!r}"
            return probe
        buffer = b""
        async for data in response.content.iter_any():
            now = time.perf_counter() - started
            buffer += data.replace(b"\r\n", b"\n")
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                _read_event(event, now, probe)
    return probe


def _read_event(event: bytes, now_s: float, probe: Probe) -> None:
    if not event.startswith(b"data: ") or event.startswith(b"data: [DONE]"):
        return
    chunk = orjson.loads(event[6:])
    if chunk.get("choices"):
        if probe.ttft_s is None:
            probe.ttft_s = now_s
        probe.event_times_s.append(now_s)
    usage = chunk.get("usage")
    if usage:
        probe.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        probe.output_tokens = int(usage.get("completion_tokens") or 0)
        details = usage.get("prompt_tokens_details") or {}
        probe.cached_tokens = int(details.get("cached_tokens") or 0)


async def stream_batch(url: str, bodies: Sequence[bytes], timeout_s: float = 300.0,
                       ) -> list[Probe]:
    """Send every body at once (one connection each); their probes, in order."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        return list(await asyncio.gather(*(_stream_one(session, url, b) for b in bodies)))


@dataclass(frozen=True, slots=True)
class Observation:
    """A batch of requests sent at once, with the replica's timer growth over it."""

    probes: list[Probe]
    server: ServerTimers

    @property
    def frontend_s(self) -> float | None:
        """Client TTFT minus the engine's queue and prefill time, for a request sent alone:
        HTTP, tokenizing, image processing and streaming the first chunk."""
        probe = self.probes[0]
        if len(self.probes) != 1 or probe.ttft_s is None or not self.server.requests:
            return None
        return probe.ttft_s - self.server.queue_s - self.server.prefill_s


def observe(url: str, bodies: Sequence[bytes]) -> Observation:
    """Send ``bodies`` at once and wait for them; the replica must be otherwise idle."""
    before = read_server(url)
    probes = asyncio.run(stream_batch(url, bodies))
    errors = [p.error for p in probes if p.error]
    if errors:
        raise RuntimeError(f"{url}: {len(errors)} request(s) failed: {errors[0]}")
    # vLLM updates its histograms when the final output is processed, a moment after the
    # client has seen [DONE]: wait until every request is counted.
    deadline = time.monotonic() + 5.0
    while True:
        delta = read_server(url).minus(before)
        if delta.requests >= len(bodies) or time.monotonic() > deadline:
            return Observation(probes, delta)
        time.sleep(0.05)
