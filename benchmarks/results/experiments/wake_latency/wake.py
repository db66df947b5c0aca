"""Added latency at concurrency 1 with the hop on the client's CPU or on the other one.

python wake.py [ROUNDS]: the zero upstream and this client on CPU 0; KVGate (one worker, the
overhead scenario's plain config) and nginx (a bare keep-alive reverse proxy) each started
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

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from kvgate.bench.gateway_overhead import CHAT_BODY
from kvgate.bench.rawhttp import RawClient, request_bytes
from kvgate.bench.scenarios.overhead_targets import kvgate_config

UPSTREAM = 19501
PORTS = {"kvgate cpu0": (19502, 0), "kvgate cpu1": (19503, 1),
         "nginx cpu0": (19504, 0), "nginx cpu1": (19505, 1)}
BLOCK = 100


def nginx_config(directory: Path, port: int) -> str:
    return f"""worker_processes 1; daemon off; pid {directory}/pid; error_log {directory}/err;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {directory}; proxy_temp_path {directory};
 upstream up {{ server 127.0.0.1:{UPSTREAM}; keepalive 32; }}
 keepalive_requests 1000000; keepalive_timeout 600s;
 server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://up;
   proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; }} }} }}"""


def main(rounds: int) -> None:
    os.sched_setaffinity(0, {0})
    processes: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], cpu: int) -> None:
        processes.append(subprocess.Popen(["taskset", "-c", str(cpu), *args],
                                          stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))

    tmp = Path(tempfile.mkdtemp(prefix="wake-"))
    try:
        start([sys.executable, "-m", "kvgate.bench.zero_upstream", "--port", str(UPSTREAM)], 0)
        (tmp / "kvgate.yaml").write_bytes(orjson.dumps(kvgate_config(UPSTREAM)))
        for name, (port, cpu) in PORTS.items():
            if name.startswith("kvgate"):
                start([sys.executable, "-m", "kvgate", "run", "-c", str(tmp / "kvgate.yaml"),
                       "--host", "127.0.0.1", "--port", str(port)], cpu)
            else:
                directory = tmp / name.replace(" ", "_")
                directory.mkdir()
                (directory / "nginx.conf").write_text(nginx_config(directory, port))
                start([shutil.which("nginx") or "/usr/sbin/nginx", "-c",
                       str(directory / "nginx.conf"), "-p", str(directory)], cpu)
        time.sleep(5)
        ports = {"direct": UPSTREAM, **{name: port for name, (port, _) in PORTS.items()}}
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
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
