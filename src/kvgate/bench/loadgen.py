"""The load generator: closed loop at a concurrency, or open loop at a fixed, Poisson or
trace-recorded arrival rate, over one pooled aiohttp session.

Closed loop: ``concurrency`` workers each take the next conversation and send its turns one
after another, so the offered load adapts to the server (throughput is the measured quantity).
Open loop: arrivals are fixed in advance and a single dispatcher starts each request at its time
whether or not earlier ones have finished (latency under a given load is the measured quantity);
a turn of a conversation still waits for the previous turn. The dispatcher sleeps only when the
next arrival is in the future and then starts every request already due, so a coarse timer
(uvloop's are milliseconds) delays requests by at most one tick, never accumulates lag; each
record keeps its scheduled and actual start so lag is visible in the summary.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import aiohttp

from kvgate.bench.client import Client
from kvgate.bench.request import NO_SESSION, BenchRequest, RequestRecord
from kvgate.bench.text import seeded_rng

LoadMode = Literal["closed", "fixed", "poisson", "timestamps"]
LOAD_MODES: tuple[LoadMode, ...] = ("closed", "fixed", "poisson", "timestamps")


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """How requests are offered. ``rate_per_s`` is for fixed/poisson; ``speedup`` divides the
    gaps of a trace's own timestamps; ``duration_s`` stops starting new requests;
    ``think_s`` (closed loop) is the pause between an answer and its conversation's next turn,
    during which the worker holds that conversation (a user reading and typing)."""

    mode: LoadMode = "closed"
    concurrency: int = 16
    rate_per_s: float = 0.0
    speedup: float = 1.0
    duration_s: float | None = None
    request_timeout_s: float = 300.0
    #: Open-loop cap on connections (file descriptors); requests beyond it queue in the client.
    max_connections: int = 1000
    seed: int = 0
    think_s: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in LOAD_MODES:
            raise ValueError(f"load mode must be one of {', '.join(LOAD_MODES)}, got {self.mode}")
        if self.mode == "closed" and self.concurrency < 1:
            raise ValueError("closed loop needs concurrency >= 1")
        if self.mode in ("fixed", "poisson") and not self.rate_per_s > 0:
            raise ValueError(f"{self.mode} arrivals need rate_per_s > 0")
        if self.speedup <= 0:
            raise ValueError("speedup must be > 0")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError("duration_s must be > 0")
        if self.think_s < 0:
            raise ValueError("think_s must be >= 0")

    def describe(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class LoadProgress:
    """Counters the load generator bumps and a progress display polls (never the reverse)."""

    total: int
    started: int = 0
    completed: int = 0
    errors: int = 0
    output_tokens: int = 0

    @property
    def in_flight(self) -> int:
        return self.started - self.completed


@dataclass(slots=True)
class LoadResult:
    spec: LoadSpec
    #: One record per request started, in request order.
    records: list[RequestRecord]
    #: From the first arrival to the last completion.
    wall_s: float
    requests_offered: int
    extra: dict[str, Any] = field(default_factory=dict)


def arrival_times_s(requests: Sequence[BenchRequest], spec: LoadSpec) -> list[float]:
    """When each request is due, in seconds from the start (open-loop modes only)."""
    count = len(requests)
    if spec.mode == "fixed":
        gap_s = 1.0 / spec.rate_per_s
        return [i * gap_s for i in range(count)]
    if spec.mode == "poisson":
        rng = seeded_rng("arrivals", spec.seed)
        times, now_s = [], 0.0
        for _ in range(count):
            times.append(now_s)
            now_s += rng.expovariate(spec.rate_per_s)
        return times
    if spec.mode == "timestamps":
        stamps = [r.at_s for r in requests]
        if any(s is None for s in stamps):
            raise ValueError("timestamps mode needs a workload whose requests have at_s (a trace)")
        first = min((s for s in stamps if s is not None), default=0.0)
        return [((s or 0.0) - first) / spec.speedup for s in stamps]
    raise ValueError(f"{spec.mode} has no precomputed arrivals")


def session_predecessors(requests: Sequence[BenchRequest]) -> list[int]:
    """For each request, the index of the previous turn of its conversation, or -1."""
    last_of_session: dict[int, int] = {}
    previous = [-1] * len(requests)
    for index, request in enumerate(requests):
        if request.session != NO_SESSION:
            previous[index] = last_of_session.get(request.session, -1)
            last_of_session[request.session] = index
    return previous


def conversation_chains(requests: Sequence[BenchRequest]) -> list[list[int]]:
    """Requests grouped into conversations, ordered by each one's first request."""
    chains: list[list[int]] = []
    by_session: dict[int, list[int]] = {}
    for index, request in enumerate(requests):
        if request.session == NO_SESSION:
            chains.append([index])
            continue
        chain = by_session.get(request.session)
        if chain is None:
            chain = by_session[request.session] = []
            chains.append(chain)
        chain.append(index)
    return chains


class _Run:
    """State of one run; everything it touches is local to it."""

    def __init__(self, client: Client, requests: Sequence[BenchRequest], spec: LoadSpec,
                 progress: LoadProgress, origin_s: float) -> None:
        self.client = client
        self.requests = requests
        self.spec = spec
        self.progress = progress
        self.origin_s = origin_s
        self.records: list[RequestRecord | None] = [None] * len(requests)
        self.deadline_s = math.inf if spec.duration_s is None else spec.duration_s

    def _now_s(self) -> float:
        return time.perf_counter() - self.origin_s

    def _dispatch(self, index: int, scheduled_s: float) -> RequestRecord:
        """Mark a request as sent (synchronously, so waiting turns can tell it will be)."""
        request = self.requests[index]
        record = RequestRecord(index, request.tag, request.session, scheduled_s)
        self.records[index] = record
        return record

    async def _send(self, record: RequestRecord) -> None:
        progress = self.progress
        progress.started += 1
        await self.client.send(self.requests[record.index], record)
        progress.completed += 1
        progress.output_tokens += record.output_tokens
        if record.error:
            progress.errors += 1

    async def closed_loop(self) -> None:
        chains: Iterator[list[int]] = iter(conversation_chains(self.requests))

        think_s = self.spec.think_s

        async def worker() -> None:
            # Sharing one iterator is safe: next() never awaits, so no two workers interleave.
            for chain in chains:
                for turn, index in enumerate(chain):
                    if turn and think_s:
                        await asyncio.sleep(think_s)
                    now_s = self._now_s()
                    if now_s >= self.deadline_s:
                        return
                    await self._send(self._dispatch(index, now_s))

        await asyncio.gather(*(worker() for _ in range(self.spec.concurrency)))

    async def open_loop(self) -> None:
        arrivals = arrival_times_s(self.requests, self.spec)
        order = sorted(range(len(arrivals)), key=arrivals.__getitem__)
        previous = session_predecessors(self.requests)
        # Events only for requests someone waits on; a conversation-free workload allocates none.
        done: dict[int, asyncio.Event] = {p: asyncio.Event() for p in previous if p >= 0}
        tasks: set[asyncio.Task[None]] = set()

        async def send_after(record: RequestRecord) -> None:
            index = record.index
            try:
                before = previous[index]
                if before >= 0:
                    await done[before].wait()
                    if self.records[before] is None:
                        # The previous turn was never sent (cut by duration_s): neither is this.
                        self.records[index] = None
                        return
                    # Waiting for the previous turn is the workload's doing, not dispatch lag.
                    record.scheduled_s = max(record.scheduled_s, self._now_s())
                await self._send(record)
            finally:
                event = done.get(index)
                if event is not None:
                    event.set()

        for index in order:
            due_s = arrivals[index]
            if due_s >= self.deadline_s:
                break
            wait_s = due_s - self._now_s()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            task = asyncio.create_task(send_after(self._dispatch(index, due_s)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        # Release turns waiting on a predecessor that was never sent (cut by duration_s).
        for index, event in done.items():
            if self.records[index] is None:
                event.set()
        if tasks:
            await asyncio.gather(*tasks)


async def run_load(
    base_url: str,
    requests: Sequence[BenchRequest],
    spec: LoadSpec,
    *,
    headers: Mapping[str, str] | None = None,
    progress: LoadProgress | None = None,
) -> LoadResult:
    """Offer ``requests`` to the gateway at ``base_url`` (e.g. ``http://127.0.0.1:8080``)."""
    progress = progress if progress is not None else LoadProgress(total=len(requests))
    limit = spec.concurrency if spec.mode == "closed" else spec.max_connections
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=spec.request_timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     auto_decompress=False) as session:
        origin_s = time.perf_counter()
        client = Client(session, base_url, headers or {}, origin_s)
        run = _Run(client, requests, spec, progress, origin_s)
        if spec.mode == "closed":
            await run.closed_loop()
        else:
            await run.open_loop()
        wall_s = time.perf_counter() - origin_s
    records = [r for r in run.records if r is not None]
    return LoadResult(spec=spec, records=records, wall_s=wall_s, requests_offered=len(requests))
