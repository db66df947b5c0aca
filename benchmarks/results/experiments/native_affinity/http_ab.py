"""The affinity index's C core against its Python core, over HTTP: three `kvgate run` gateways
in front of one zero upstream, 64 deployments of one provider, the overhead scenario's long
prompts (~8k tokens, a shared ~7k-token system prompt and a distinct user turn):
round_robin (C core built, unused), prefix_kv_aware on the C core, prefix_kv_aware on the
Python core (the same sources copied without the compiled extension).

python benchmarks/results/experiments/native_affinity/http_ab.py [BLOCK] [BLOCKS] [LEFT_OUT] [N]

LEFT_OUT: the compiled files the Python arm's copy leaves out (a glob; default ``*.so``, both
extensions; ``_floats_native*`` for the scorer's passes alone, the index's core kept). N: the
deployments (default 64).

c=1, one raw keep-alive client, arms interleaved in blocks of BLOCK requests (one block of
warm-up each), BLOCKS measured blocks; per arm the gateway process's CPU per request (from
/proc, 10 ms ticks: read the sum over all blocks) and the c=1 latency p50 / p99 in ms.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import orjson

from kvgate.bench.processes import free_port, local_process
from kvgate.bench.rawhttp import RawClient, cpu_s, request_bytes
from kvgate.bench.scenarios.overhead_long import long_body
from kvgate.bench.scenarios.overhead_targets import kvgate_config

SRC = Path(__file__).resolve().parents[4] / "src"


def main() -> None:
    block = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    blocks = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    left_out = sys.argv[3] if len(sys.argv) > 3 else "*.so"
    deployments = int(sys.argv[4]) if len(sys.argv) > 4 else 64
    head, tail = long_body()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        python_src = tmp / "src"
        shutil.copytree(SRC, python_src, ignore=shutil.ignore_patterns(left_out, "__pycache__"))
        up = free_port()
        stack.enter_context(local_process(
            [sys.executable, "-m", "kvgate.bench.zero_upstream", "--port", str(up)],
            f"http://127.0.0.1:{up}", ready_path="/v1/models"))
        arms = {"round_robin": ("round_robin", SRC), "prefix_c_core": ("prefix_kv_aware", SRC),
                "prefix_python_core": ("prefix_kv_aware", python_src)}
        gateways = {}
        for name, (strategy, src) in arms.items():
            config = tmp / f"{name}.yaml"
            config.write_bytes(orjson.dumps(kvgate_config(up, deployments=deployments,
                                                          strategy=strategy)))
            port = free_port()
            os.environ["PYTHONPATH"] = str(src)
            gateways[name] = stack.enter_context(local_process(
                [sys.executable, "-m", "kvgate", "run", "-c", str(config), "--host",
                 "127.0.0.1", "--port", str(port)], f"http://127.0.0.1:{port}"))
        os.environ.pop("PYTHONPATH")
        clients = {name: RawClient(int(g.url.rsplit(":", 1)[1])) for name, g in gateways.items()}
        cpu = dict.fromkeys(gateways, 0.0)
        latencies: dict[str, list[float]] = {name: [] for name in gateways}
        number = 0
        for round_number in range(blocks + 1):
            for name, gateway in gateways.items():
                client = clients[name]
                requests = []
                for _ in range(block):
                    number += 1
                    requests.append(request_bytes(client.port, "/v1/chat/completions",
                                                  head + str(number).encode() + tail))
                started = cpu_s(gateway.process.pid)
                seconds = [client.send(request)[0] for request in requests]
                if round_number:  # block 0 warms up
                    cpu[name] += cpu_s(gateway.process.pid) - started
                    latencies[name].extend(seconds)
        result = {}
        for name in gateways:
            ordered = sorted(latencies[name])
            result[name] = {
                "cpu_us_per_request": round(cpu[name] / (block * blocks) * 1e6, 1),
                "p50_ms": round(statistics.median(ordered) * 1e3, 3),
                "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))] * 1e3, 3),
            }
        print(orjson.dumps({"block": block, "blocks": blocks, "left_out": left_out,
                            "deployments": deployments, "arms": result},
                           option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
