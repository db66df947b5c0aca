"""Added latency at concurrency 1 with the hop on the client's CPU or on the other one.

python wake.py [ROUNDS]: the zero upstream and this client on CPU 0; KVGate (one worker, the
overhead scenario's plain config) and nginx (the overhead scenario's own nginx hop) each started
twice, once pinned to CPU 0 and once to CPU 1; then ROUNDS (default 30) rounds of 100 timed
requests per target, interleaved, each block opened by one untimed request, on one keep-alive
connection each (the overhead scenario's "hi" body and raw socket client). Prints each
target's p50 and its p50 less the direct call's.

On CPU 1 a hop waits for every request and response in an idle CPU of its own, which the
kernel wakes across CPUs; on CPU 0 it shares one CPU with the client and the upstream, so the
three take turns and no CPU sleeps while a request is on its way. The difference between the
two placements of one hop is what the cross-CPU wake-ups cost it on this machine.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
from pathlib import Path

import orjson

from kvgate.bench.gateway_overhead import CHAT_BODY
from kvgate.bench.peers import ensure_debian_package, nginx_proxy
from kvgate.bench.processes import free_port, local_process
from kvgate.bench.rawhttp import RawClient, pinned, request_bytes
from kvgate.bench.scenarios.overhead_targets import (
    CLIENT_CPU,
    Target,
    kvgate_config,
    zero_upstream,
)

CPUS = (CLIENT_CPU, 1 - CLIENT_CPU)
BLOCK = 100


def kvgate_on(stack: contextlib.ExitStack, config: Path, cpu: int) -> int:
    """`kvgate run` on ``config`` pinned to ``cpu``: its port."""
    port = free_port()
    stack.enter_context(local_process(
        pinned(cpu, [sys.executable, "-m", "kvgate", "run", "-c", str(config),
                     "--host", "127.0.0.1", "--port", str(port)]),
        f"http://127.0.0.1:{port}"))
    return port


def main(rounds: int) -> None:
    nginx, _ = ensure_debian_package("nginx", "nginx")
    with contextlib.ExitStack() as stack:
        upstream = zero_upstream(stack).port
        config = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "kvgate.yaml"
        config.write_bytes(orjson.dumps(kvgate_config(upstream)))  # JSON is YAML
        ports = {"direct": upstream}
        for cpu in CPUS:
            ports[f"kvgate cpu{cpu}"] = kvgate_on(stack, config, cpu)
            ports[f"nginx cpu{cpu}"] = Target(
                "nginx", stack.enter_context(nginx_proxy(nginx, upstream, cpu=cpu))).port
        # This process on the client's CPU only now: pinned() pins nothing from a process
        # that may use one CPU.
        os.sched_setaffinity(0, {CLIENT_CPU})
        clients = {name: RawClient(port) for name, port in ports.items()}
        requests = {name: request_bytes(port, "/v1/chat/completions", CHAT_BODY)
                    for name, port in ports.items()}
        samples: dict[str, list[float]] = {name: [] for name in ports}
        for turn in range(rounds + 1):  # the first round warms up
            for name in ports:
                for number in range(BLOCK + 1):
                    seconds, _ = clients[name].send(requests[name])
                    if turn and number:
                        samples[name].append(seconds)
        direct = statistics.median(samples["direct"])
        for name, values in samples.items():
            p50 = statistics.median(values)
            print(f"{name:12s} p50 {p50 * 1e3:.4f} ms  added {(p50 - direct) * 1e3:.4f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
