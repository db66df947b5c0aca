"""How the ``overhead`` scenario measures its targets: interleaved c=1 blocks and c=32 rounds.

Shared by the plain case (:mod:`~kvgate.bench.scenarios.overhead`) and the long-prompt case
(:mod:`~kvgate.bench.scenarios.overhead_long`). A body is fixed bytes, or a ``(head, tail)``
pair: then request ``n`` posts ``head + n + tail``, so no two requests carry the same prompt.

NOTE: each c=1 block starts with :attr:`Sizes.block_warmup` untimed requests. The hops share
one CPU, so a block's first request finds its hop's caches cold from the others' blocks: it
took 0.62 ms against 0.27 for the rest (KVGate, median over 30 blocks; 26 of the 30 slowest
samples were first in their block), and with blocks of 100 those are exactly the 1% a p99
reads. A hop serving steady traffic has no such switch every 100 requests.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from kvgate.bench.rawhttp import (
    HttpFramingError,
    RawClient,
    ThroughputSample,
    closed_loop_rps,
    cpu_s,
    request_bytes,
    run_wrk,
)
from kvgate.bench.scenarios.overhead_targets import Target, client_cpu

CHAT_PATH = "/v1/chat/completions"
#: A streamed response's first chunk that carries a content delta.
CONTENT_MARKER = b'"content"'
#: Fixed bytes, or (head, tail) around a request counter.
Body = bytes | tuple[bytes, bytes]


@dataclass(frozen=True, slots=True)
class Sizes:
    requests_c1: int
    stream_requests_c1: int
    #: Requests per target per interleaving block at concurrency 1.
    block: int
    warmup: int
    rounds_c32: int
    duration_c32_s: float
    connections: int = 32
    #: Untimed requests that open each c=1 block (see the module's note).
    block_warmup: int = 1


FULL = Sizes(requests_c1=3000, stream_requests_c1=1500, block=100, warmup=200, rounds_c32=3,
             duration_c32_s=5.0)
QUICK = Sizes(requests_c1=100, stream_requests_c1=50, block=25, warmup=10, rounds_c32=1,
              duration_c32_s=1.0)


def nth_body(body: Body, n: int) -> bytes:
    return body if isinstance(body, bytes) else body[0] + str(n).encode() + body[1]




def _rotated(targets: list[Target], turn: int) -> list[Target]:
    shift = turn % len(targets)
    return targets[shift:] + targets[:shift]


def _drop(targets: list[Target], failed: dict[str, str], target: Target, what: str,
          exc: Exception) -> None:
    failed[target.name] = f"{what}: {type(exc).__name__}: {exc}"
    targets.remove(target)


def latency_c1(targets: list[Target], body: Body, total: int, sizes: Sizes, *,
               stream: bool, failed: dict[str, str], reconnects: dict[str, int],
               openers: dict[str, list[float]] | None = None,
               ) -> dict[str, list[float]]:
    """Seconds per request (streams: to the first content chunk) for each target, measured in
    interleaved blocks on one keep-alive connection each (reopened, untimed, when the server
    closed it while idle; counted in ``reconnects``). ``openers``: filled with the times of
    the requests that open each block, left out of the result (the module's note)."""
    marker = CONTENT_MARKER if stream else None
    clients: dict[str, RawClient] = {}
    fixed = {t.name: request_bytes(t.port, CHAT_PATH, body) for t in targets
             if isinstance(body, bytes)}
    sent = {t.name: 0 for t in targets}
    samples: dict[str, list[float]] = {t.name: [] for t in targets}

    def measure(target: Target, count: int, keep: bool) -> None:
        client = clients.get(target.name)
        if client is None:
            client = clients[target.name] = RawClient(target.port)
        for number in range(count + (sizes.block_warmup if keep else 0)):
            sent[target.name] += 1
            request = fixed.get(target.name) or request_bytes(
                target.port, CHAT_PATH, nth_body(body, sent[target.name]))
            total_s, first_s = client.send(request, marker)
            if keep:
                value = first_s if stream else total_s
                if value is None:
                    raise HttpFramingError("stream ended without a content chunk")
                if number >= sizes.block_warmup:
                    samples[target.name].append(value)
                elif openers is not None:
                    openers.setdefault(target.name, []).append(value)

    try:
        for turn in range(-1, max(1, total // sizes.block)):
            for target in _rotated(list(targets), max(turn, 0)):
                try:
                    measure(target, sizes.warmup if turn < 0 else sizes.block, keep=turn >= 0)
                except (OSError, ValueError) as exc:  # HttpFramingError is an OSError
                    _drop(targets, failed, target, "concurrency 1", exc)
    finally:
        for name, client in clients.items():
            reconnects[name] = reconnects.get(name, 0) + client.reconnects
            client.close()
    return {name: values for name, values in samples.items() if any(
        t.name == name for t in targets)}


def throughput_c32(targets: list[Target], body: Body, sizes: Sizes, *, use_wrk: bool,
                   failed: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """Closed-loop rounds, interleaved across targets; each with the hop's CPU per request."""
    rounds: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
    for turn in range(sizes.rounds_c32):
        for target in _rotated(list(targets), turn):
            cpu_before_s = cpu_s(target.pid)
            try:
                sample = _closed_loop(target, body, sizes, use_wrk=use_wrk)
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                _drop(targets, failed, target, "concurrency 32", exc)
                continue
            used_s = cpu_s(target.pid) - cpu_before_s
            rounds[target.name].append({
                **asdict(sample),
                "cpu_us_per_request": (round(used_s / sample.requests * 1e6, 1)
                                       if sample.requests else None),
            })
    return {name: values for name, values in rounds.items() if values}


def _closed_loop(target: Target, body: Body, sizes: Sizes, *, use_wrk: bool
                 ) -> ThroughputSample:
    if use_wrk:
        return run_wrk(target.process.url + CHAT_PATH, body, connections=sizes.connections,
                       duration_s=sizes.duration_c32_s, cpu=client_cpu())
    # Without wrk every request repeats request 1's prompt.
    request = request_bytes(target.port, CHAT_PATH, nth_body(body, 1))
    return closed_loop_rps(target.port, request,
                           connections=sizes.connections, duration_s=sizes.duration_c32_s)


@contextlib.contextmanager
def client_pinned() -> Iterator[None]:
    """This process (the c=1 client, the fallback c=32 generator) on the client CPU."""
    cpu = client_cpu()
    if cpu is None:
        yield
        return
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)

