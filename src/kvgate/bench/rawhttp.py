"""Measuring a proxy hop to microseconds: a raw keep-alive HTTP/1.1 client, wrk, CPU and RSS.

The load generator in :mod:`kvgate.bench.loadgen` (aiohttp) costs more per request than the hops
the overhead scenario measures, so that scenario talks HTTP on a blocking socket instead: a
request is prebuilt bytes, a response is framed by its ``content-length`` or its chunks and
never parsed further. Throughput at concurrency 32 comes from wrk (C, one thread) when it is
installed, else from :func:`closed_loop_rps`, an asyncio client on the same framing (slower:
its figures are labelled with the generator that produced them).

CPU time is read from ``/proc`` for a process and all its descendants, because several servers
run the application in worker processes (nginx, granian, uvicorn with workers).
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_HEAD_END = b"\r\n\r\n"
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.I)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding: *chunked", re.I)
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})")


class HttpFramingError(ConnectionError):
    """The peer closed the connection or sent a response this client cannot frame."""


def request_bytes(port: int, path: str, body: bytes, *,
                  headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """A complete ``POST`` of a JSON body, ready to send as is on a keep-alive connection."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return (f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
            f"content-type: application/json\r\n{extra}content-length: {len(body)}\r\n\r\n"
            ).encode() + body


class RawClient:
    """One keep-alive connection on a blocking socket: microseconds of its own overhead.

    :meth:`send` returns the seconds until the response ended and, when given a ``marker``,
    until the first body chunk that contains it (for streams: the first content delta).
    """

    def __init__(self, port: int, *, timeout_s: float = 30.0) -> None:
        self.port = port
        self._timeout_s = timeout_s
        self._sock = self._connect()
        self._buffer = b""
        #: Times the server had closed the idle connection and a new one was opened.
        self.reconnects = 0

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=self._timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def close(self) -> None:
        self._sock.close()

    def _reopen_if_closed(self) -> None:
        """Servers close keep-alive connections left idle (uvicorn after 5 s), e.g. while the
        other targets take their turn; reconnect then, outside the timed section. Costs one
        non-blocking poll per request."""
        readable, _, _ = select.select([self._sock], [], [], 0)
        if readable and not self._sock.recv(1, socket.MSG_PEEK):
            self._sock.close()
            self._sock = self._connect()
            self._buffer = b""
            self.reconnects += 1

    def _recv(self) -> None:
        data = self._sock.recv(65536)
        if not data:
            raise HttpFramingError(f"127.0.0.1:{self.port} closed the connection")
        self._buffer += data

    def send(self, request: bytes, marker: bytes | None = None) -> tuple[float, float | None]:
        """(seconds to the end of the response, seconds to the first chunk with ``marker``)."""
        self._reopen_if_closed()
        started_s = time.perf_counter()
        self._sock.sendall(request)
        while (end := self._buffer.find(_HEAD_END)) < 0:
            self._recv()
        head = self._buffer[:end]
        status = _STATUS.match(head)
        if status is None or status.group(1) != b"200":
            raise HttpFramingError(f"127.0.0.1:{self.port} answered {head[:200]!r}")
        self._buffer = self._buffer[end + 4:]
        length = _CONTENT_LENGTH.search(head)
        if length is not None:
            size = int(length.group(1))
            while len(self._buffer) < size:
                self._recv()
            body, self._buffer = self._buffer[:size], self._buffer[size:]
            first_s = None
            if marker is not None and marker in body:
                first_s = time.perf_counter() - started_s
            return time.perf_counter() - started_s, first_s
        if _CHUNKED.search(head) is None:
            raise HttpFramingError(f"127.0.0.1:{self.port}: neither content-length nor chunked")
        first_s = self._read_chunks(marker, started_s)
        return time.perf_counter() - started_s, first_s

    def _read_chunks(self, marker: bytes | None, started_s: float) -> float | None:
        first_s: float | None = None
        pos = 0
        while True:
            while (line_end := self._buffer.find(b"\r\n", pos)) < 0:
                self._recv()
            size = int(self._buffer[pos:line_end].split(b";", 1)[0], 16)
            chunk_end = line_end + 2 + size
            while len(self._buffer) < chunk_end + 2:
                self._recv()
            if (first_s is None and marker is not None
                    and marker in self._buffer[line_end + 2:chunk_end]):
                first_s = time.perf_counter() - started_s
            pos = chunk_end + 2
            if size == 0:  # NOTE: trailers are not supported; no server here sends them.
                self._buffer = self._buffer[pos:]
                return first_s


# -- concurrency 32 ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ThroughputSample:
    """One fixed-duration closed-loop run."""

    generator: str
    #: Responses completed within the run.
    requests: int
    requests_per_s: float
    non_2xx: int
    #: Connect/read/write errors and timeouts (wrk's "Socket errors").
    socket_errors: int
    p50_ms: float | None
    p99_ms: float | None


def wrk_path() -> str | None:
    return shutil.which("wrk")


_WRK_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk_script(body: bytes | tuple[bytes, bytes]) -> str:
    """wrk's Lua script POSTing ``body`` as JSON; a ``(head, tail)`` pair posts ``head + n +
    tail`` with ``n`` counting requests, so no two are equal."""
    # Lua long brackets take the JSON verbatim (it has no "]]").
    lua = 'wrk.method = "POST"\nwrk.headers["content-type"] = "application/json"\n'
    if isinstance(body, bytes):
        return lua + f"wrk.body = [[{body.decode()}]]\n"
    return lua + (f"local head = [[{body[0].decode()}]]\nlocal tail = [[{body[1].decode()}]]\n"
                  "local n = 0\nrequest = function()\n  n = n + 1\n"
                  "  return wrk.format(nil, nil, nil, head .. n .. tail)\nend\n")


def run_wrk(url: str, body: bytes | tuple[bytes, bytes], *, connections: int,
            duration_s: float, cpu: int | None = None, timeout_s: float = 30.0
            ) -> ThroughputSample:
    """wrk, one thread, ``connections`` keep-alive connections POSTing ``body``; a ``(head,
    tail)`` pair posts ``head + n + tail`` with ``n`` counting requests, so no two are equal."""
    wrk = wrk_path()
    if wrk is None:
        raise FileNotFoundError("wrk is not installed")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(wrk_script(body))
    try:
        # A slow hop (seconds per request at c=32) must be measured, not cut by wrk's default
        # 2 s timeout.
        args = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--latency",
                f"--timeout={timeout_s:g}s", "-s", script.name, url]
        out = subprocess.run(pinned(cpu, args), capture_output=True, text=True, check=True,
                             timeout=duration_s + timeout_s + 30).stdout
    finally:
        os.unlink(script.name)
    rps = re.search(r"Requests/sec:\s*([\d.]+)", out)
    done = re.search(r"(\d+) requests in ", out)
    if rps is None or done is None:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                              r"timeout (\d+)", out)

    def quantile(q: str) -> float | None:
        match = re.search(rf"{q}%\s+([\d.]+)(us|ms|s)\b", out)
        return float(match.group(1)) * _WRK_UNITS_MS[match.group(2)] if match else None

    return ThroughputSample(
        "wrk", int(done.group(1)), float(rps.group(1)), int(errors.group(1)) if errors else 0,
        sum(int(n) for n in socket_errors.groups()) if socket_errors else 0,
        quantile("50"), quantile("99"))


def closed_loop_rps(port: int, request: bytes, *, connections: int, duration_s: float
                    ) -> ThroughputSample:
    """The fallback when wrk is missing: ``connections`` asyncio connections in closed loop."""
    return asyncio.run(_closed_loop(port, request, connections, duration_s))


async def _closed_loop(port: int, request: bytes, connections: int, duration_s: float
                       ) -> ThroughputSample:
    latencies_s: list[float] = []
    failures = 0
    stop_s = time.perf_counter() + duration_s

    async def connection() -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (started_s := time.perf_counter()) < stop_s:
                writer.write(request)
                head = await reader.readuntil(_HEAD_END)
                if not head.startswith(b"HTTP/1.1 200"):
                    failures += 1
                length = _CONTENT_LENGTH.search(head)
                if length is not None:
                    await reader.readexactly(int(length.group(1)))
                else:
                    await _drain_chunks(reader)
                latencies_s.append(time.perf_counter() - started_s)
        finally:
            writer.close()

    started_s = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    elapsed_s = time.perf_counter() - started_s
    latencies_s.sort()

    def quantile(q: float) -> float | None:
        if not latencies_s:
            return None
        return round(latencies_s[min(len(latencies_s) - 1, int(q * len(latencies_s)))] * 1000, 3)

    return ThroughputSample("python-asyncio", len(latencies_s),
                            round(len(latencies_s) / elapsed_s, 1), failures, 0,
                            quantile(0.5), quantile(0.99))


async def _drain_chunks(reader: asyncio.StreamReader) -> None:
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        await reader.readexactly(size + 2)
        if size == 0:
            return


# -- processes ---------------------------------------------------------------------------------


def can_pin() -> bool:
    """Pinning needs taskset and at least two CPUs (one per side)."""
    return shutil.which("taskset") is not None and len(os.sched_getaffinity(0)) > 1


def pinned(cpu: int | None, args: Sequence[str]) -> list[str]:
    """``args`` run on ``cpu`` only (via taskset), or unchanged when pinning is off."""
    if cpu is None or not can_pin():
        return list(args)
    return ["taskset", "-c", str(cpu), *args]


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the HTTP server may run the app in worker processes)."""
    pids, index = [pid], 0
    while index < len(pids):
        try:
            tasks = list(Path(f"/proc/{pids[index]}/task").iterdir())
        except FileNotFoundError:  # exited meanwhile
            tasks = []
        for task in tasks:
            try:
                pids.extend(int(c) for c in (task / "children").read_text().split())
            except FileNotFoundError:
                continue
        index += 1
    return pids


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process tree has used so far (all threads)."""
    ticks = 0
    for member in process_tree(pid):
        try:
            stat = Path(f"/proc/{member}/stat").read_text()
        except FileNotFoundError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident memory of the process tree, summed, in MiB."""
    total_kb = 0
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except FileNotFoundError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total_kb += int(line.split()[1])
    return round(total_kb / 1024, 1)
