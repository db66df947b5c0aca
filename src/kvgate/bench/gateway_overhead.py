"""Gateway overhead: KVGate vs a direct call to a zero-latency upstream, in one run.

Measures (one gateway worker, exact cache off so every request goes upstream):
  * added latency at concurrency 1, p50 / p99, non-streamed (raw keep-alive socket client);
  * added time-to-first-chunk for streams at concurrency 1;
  * throughput at concurrency 32 (wrk, non-streamed);
  * gateway RSS when idle and after the load.
On a 2-core machine the gateway is pinned to CPU 1, the upstream and the load generators to
CPU 0, so the two sides do not steal each other's core. With ``--workers N`` (N > 1) the
gateway's workers may run on every CPU, sharing CPU 0 with the upstream and wrk: on 2 cores
that figure is bounded by the whole machine, not by the gateway.

Run from the repository root:
  python -m kvgate.bench.gateway_overhead [--requests 3000] [--duration-s 10] [--workers 2]
Writes benchmarks/results/gateway_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kvgate.bench.processes import free_port
from kvgate.bench.rawhttp import cpu_s, process_tree, wrk_script

CHAT_BODY = json.dumps({"model": "zero", "messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 8}).encode()
STREAM_BODY = json.dumps({"model": "zero", "stream": True, "max_tokens": 8,
                          "messages": [{"role": "user", "content": "hi"}]}).encode()


def pinned(cpu: int, args: list[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(cpu), *args]
    return args


def wait_port(port: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} not open")


def request_bytes(port: int, path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
            ).encode() + body


class RawClient:
    """A keep-alive HTTP/1.1 client on a blocking socket: microseconds of its own overhead."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def _read_until(self, marker: bytes) -> None:
        while marker not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.buffer += data

    def blocking(self, request: bytes) -> float:
        started = time.perf_counter()
        self.sock.sendall(request)
        self._read_until(b"\r\n\r\n")
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        match = re.search(rb"content-length: *(\d+)", head, re.I)
        assert match is not None, head
        length = int(match.group(1))
        self.buffer = rest
        while len(self.buffer) < length:
            self.buffer += self.sock.recv(65536)
        self.buffer = self.buffer[length:]
        return time.perf_counter() - started

    def first_chunk(self, request: bytes) -> float:
        """Time to the first content chunk; then drains the chunked stream."""
        started = time.perf_counter()
        self.sock.sendall(request)
        self._read_until(b'"content"')
        ttft = time.perf_counter() - started
        self._read_until(b"\r\n0\r\n\r\n")
        self.buffer = self.buffer.partition(b"\r\n0\r\n\r\n")[2]
        return ttft


def percentiles_ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000
    return {"p50": round(pick(0.5), 4), "p90": round(pick(0.9), 4), "p99": round(pick(0.99), 4),
            "mean": round(statistics.fmean(ordered) * 1000, 4)}


def latency_pair(direct_port: int, gateway_port: int, body: bytes, n: int, stream: bool,
                 ) -> tuple[list[float], list[float]]:
    direct, gateway = RawClient(direct_port), RawClient(gateway_port)
    d_req = request_bytes(direct_port, "/v1/chat/completions", body)
    g_req = request_bytes(gateway_port, "/v1/chat/completions", body)
    measure = "first_chunk" if stream else "blocking"
    for _ in range(200):  # warm-up: connections, caches, JIT-free but allocator-warm
        getattr(direct, measure)(d_req)
        getattr(gateway, measure)(g_req)
    d_samples, g_samples = [], []
    # Interleave in blocks so drift (thermal, other load) hits both sides alike.
    for _ in range(n // 100):
        d_samples += [getattr(direct, measure)(d_req) for _ in range(100)]
        g_samples += [getattr(gateway, measure)(g_req) for _ in range(100)]
    return d_samples, g_samples


def wrk(port: int, duration_s: int, connections: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(wrk_script(CHAT_BODY))
    out = subprocess.run(
        pinned(0, ["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency",
                   "-s", script.name, f"http://127.0.0.1:{port}/v1/chat/completions"]),
        capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {
        "requests_per_s": rps,
        "non_2xx": int(errors.group(1)) if errors else 0,
        "p50_ms": float(p50.group(1)) * scale[p50.group(2)] if p50 else -1,
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else -1,
    }


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, every core summed (/proc/stat)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / ticks, sum(fields) / ticks


def rss_mb(pid: int) -> dict[str, float]:
    """Resident memory of each process in the tree, and their sum."""
    sizes = {}
    for member in process_tree(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                sizes[str(member)] = round(int(line.split()[1]) / 1024, 1)
    return {"total": round(sum(sizes.values()), 1), "per_process": sizes}  # type: ignore[dict-item]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--duration-s", type=int, default=10)
    parser.add_argument("--http-server", choices=["kvgate", "uvicorn", "granian"],
                        default="kvgate")
    parser.add_argument("--workers", type=int, default=1, help="gateway worker processes")
    # Relative to the working directory: run from the repository root.
    parser.add_argument("--out", default="benchmarks/results/gateway_overhead.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed for the throughput figure: apt-get install wrk")

    up_port, gw_port = free_port(), free_port()
    upstream = subprocess.Popen(pinned(0, [sys.executable, "-m", "kvgate.bench.zero_upstream",
                                           "--port", str(up_port)]), stdout=subprocess.DEVNULL)
    config_path = Path(tempfile.mkdtemp()) / "overhead.yaml"
    config_path.write_text(f"""
server: {{ log_level: warning, http_server: {args.http_server} }}
providers:
  zero: {{ type: openai_compatible, api_base: "http://127.0.0.1:{up_port}/v1" }}
models:
  - name: zero
    deployments: [ {{ provider: zero, model: zero }} ]
cache: {{ exact: {{ enabled: false }} }}
""")
    command = [sys.executable, "-m", "kvgate", "run", "-c", str(config_path), "--host",
               "127.0.0.1", "--port", str(gw_port), "--workers", str(args.workers)]
    gateway = subprocess.Popen(pinned(1, command) if args.workers == 1 else command,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(up_port)
        wait_port(gw_port)
        # Several workers: the parent's socket opens before the workers have started.
        time.sleep(0.5 if args.workers == 1 else 3.0)
        idle_rss = rss_mb(gateway.pid)
        direct, via = latency_pair(up_port, gw_port, CHAT_BODY, args.requests, stream=False)
        d_stream, g_stream = latency_pair(up_port, gw_port, STREAM_BODY, args.requests // 2,
                                          stream=True)
        wrk_direct = wrk(up_port, args.duration_s, 32)
        cpu_before_s, upstream_before_s = cpu_s(gateway.pid), cpu_s(upstream.pid)
        machine_before = machine_busy_s()
        wrk_gateway = wrk(gw_port, args.duration_s, 32)
        machine_after = machine_busy_s()
        # CPU time per request does not depend on what else the machine runs, so it gives the
        # one-core capacity even when wall-clock throughput is disturbed by other load.
        served = wrk_gateway["requests_per_s"] * args.duration_s
        cpu_us_per_request = (cpu_s(gateway.pid) - cpu_before_s) / max(1.0, served) * 1e6
        # The upstream shares the machine: with several workers its share bounds theirs.
        upstream_cpu_us = (cpu_s(upstream.pid) - upstream_before_s) / max(1.0, served) * 1e6
        loaded_rss = rss_mb(gateway.pid)
    finally:
        gateway.terminate()
        upstream.terminate()
        gateway.wait(10)
        upstream.wait(10)
        config_path.unlink()

    d, g = percentiles_ms(direct), percentiles_ms(via)
    ds, gs = percentiles_ms(d_stream), percentiles_ms(g_stream)
    result = {
        "benchmark": "gateway_overhead",
        "source": "measured on this machine (no GPU): KVGate over a zero-latency upstream",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "command": "python -m kvgate.bench.gateway_overhead " + " ".join(sys.argv[1:]),
        "http_server": args.http_server,
        "workers": args.workers,
        "gateway_cpus": "1" if args.workers == 1 else "all (shared with the upstream and wrk)",
        "concurrency_1_blocking_ms": {"direct": d, "gateway": g,
                                      "added_p50": round(g["p50"] - d["p50"], 4),
                                      "added_p99": round(g["p99"] - d["p99"], 4)},
        "concurrency_1_stream_ttft_ms": {"direct": ds, "gateway": gs,
                                         "added_p50": round(gs["p50"] - ds["p50"], 4),
                                         "added_p99": round(gs["p99"] - ds["p99"], 4)},
        "concurrency_32_blocking": {
            "direct": wrk_direct, "gateway": wrk_gateway,
            "gateway_cpu_us_per_request": round(cpu_us_per_request, 1),
            "upstream_cpu_us_per_request": round(upstream_cpu_us, 1),
            "gateway_cores_busy": round(cpu_us_per_request * wrk_gateway["requests_per_s"] / 1e6,
                                        2),
            # Every process on the machine (wrk, the upstream, anything else running) together.
            "machine_busy_share": round((machine_after[0] - machine_before[0])
                                        / max(1e-9, machine_after[1] - machine_before[1]), 3),
            "one_core_capacity_requests_per_s": round(1e6 / cpu_us_per_request),
        },
        "load_average_1m_before": os.getloadavg()[0],
        "gateway_rss_mb": {"idle": idle_rss, "after_load": loaded_rss},
        "targets": {"added_p50_ms": 0.5, "added_p99_ms": 1.5, "requests_per_s_c32": 3000,
                    "stream_ttft_added_ms": 0.5, "idle_rss_mb": 150},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    c1, st = result["concurrency_1_blocking_ms"], result["concurrency_1_stream_ttft_ms"]
    print(f"{'measure':<38}{'direct':>12}{'gateway':>12}{'added':>10}")
    for q in ("p50", "p99"):
        print(f"{f'c=1 blocking {q} (ms)':<38}{d[q]:>12.3f}{g[q]:>12.3f}"
              f"{c1['added_' + q]:>10.3f}")
    print(f"{'c=1 stream TTFT p50 (ms)':<38}{ds['p50']:>12.3f}{gs['p50']:>12.3f}"
          f"{st['added_p50']:>10.3f}")
    print(f"{'c=32 blocking requests/s':<38}{wrk_direct['requests_per_s']:>12.0f}"
          f"{wrk_gateway['requests_per_s']:>12.0f}")
    print(f"gateway CPU per request {cpu_us_per_request:.0f} us "
          f"(one-core capacity {1e6 / cpu_us_per_request:.0f} requests/s)")
    print(f"gateway RSS idle {idle_rss['total']:.1f} MB {idle_rss['per_process']}, "
          f"after load {loaded_rss['total']:.1f} MB; "
          f"non-2xx {wrk_gateway['non_2xx']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
