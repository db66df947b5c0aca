"""Where KV-aware routing's extra CPU goes over HTTP (the overhead scenario's long prompts),
against in-process: both KVGate arms (round_robin, prefix_kv_aware over 64 deployments of the
zero upstream, as ``kvgate bench scenario overhead`` starts them) under ``wrk -t1 -c32``
posting ~8k-token bodies, each arm's process sampled by py-spy (raw collapsed stacks, native
frames off, 400 Hz) for ROUND_S seconds while its CPU time is read.

python profile.py OUT_DIR [ROUNDS]   (from the repository root)

Writes OUT_DIR/{arm}_{round}.txt (py-spy's collapsed stacks) and prints per arm: requests,
CPU us per request, and each top-level phase's share of the samples, as us per request.
"""

from __future__ import annotations

import collections
import contextlib
import subprocess
import sys
import time
from pathlib import Path

from kvgate.bench.rawhttp import cpu_s, run_wrk
from kvgate.bench.request import CHAT_PATH
from kvgate.bench.scenarios.overhead_long import DEPLOYMENTS, long_body
from kvgate.bench.scenarios.overhead_targets import Targets, client_cpu, zero_upstream

ROUND_S = 10
#: Frames whose inclusive samples are reported (substring of py-spy's "func (file:line)").
PHASES = ("prepare (kvgate/routing/prefix_kv_aware.py",
          "choose (kvgate/routing/prefix_kv_aware.py",
          "_dispatched (kvgate/routing/prefix_kv_aware.py",
          "_released (kvgate/routing/ticket_hooks.py",
          "flush (kvgate/routing/write_behind.py", "fingerprint (kvgate/routing/fingerprint.py",
          "parse_into (kvgate/request/parse.py", "_run_once (asyncio/base_events.py",
          "collect", "_send_completion (kvgate/api/app.py", "_metadata (kvgate/api/app.py")


def inclusive(path: Path) -> tuple[int, collections.Counter[str]]:
    total, counts = 0, collections.Counter[str]()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        samples = int(n)
        total += samples
        frames = set(stack.split(";"))
        for phase in PHASES:
            if any(phase in frame for frame in frames):
                counts[phase] += samples
    return total, counts


def main(out_dir: str, rounds: int) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        upstream = zero_upstream(stack)
        targets = Targets(stack, upstream.port)
        for strategy in ("round_robin", "prefix_kv_aware"):
            targets.add(f"kvgate-{strategy}", targets.kvgate_routed(strategy, DEPLOYMENTS), None)
        body = long_body()
        for target in targets.running:  # warm each arm
            run_wrk(target.process.url + CHAT_PATH, body, connections=32, duration_s=2,
                    cpu=client_cpu())
        for turn in range(rounds):
            for target in (targets.running if turn % 2 == 0 else targets.running[::-1]):
                name = target.name.removeprefix("kvgate-")
                path = out / f"{name}_{turn + 1}.txt"
                spy = subprocess.Popen(
                    ["py-spy", "record", "-p", str(target.pid), "-r", "400",
                     "-d", str(ROUND_S + 1), "-f", "raw", "-o", str(path)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(0.5)
                before_s = cpu_s(target.pid)
                sample = run_wrk(target.process.url + CHAT_PATH, body, connections=32,
                                 duration_s=ROUND_S, cpu=client_cpu())
                used_s = cpu_s(target.pid) - before_s
                spy.wait()
                total, counts = inclusive(path)
                per_request_us = used_s / sample.requests * 1e6
                phases = ", ".join(f"{p.split(' (')[0]} {counts[p] / total * per_request_us:.1f}"
                                   for p in PHASES if counts[p])
                errors = sample.non_2xx + sample.socket_errors
                print(f"{name} round {turn + 1}: {sample.requests} requests, "
                      f"{per_request_us:.1f} us CPU/request, errors {errors}; "
                      f"samples {total}: {phases}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2)
