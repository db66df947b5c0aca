"""The overhead scenario's figures that issue 15 targets, one block per result file.

Usage: python compare.py RESULT.json [RESULT.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def summary(path: Path) -> list[str]:
    d: dict[str, Any] = json.loads(path.read_text())
    kv, nginx = d["comparison"]["kvgate"], d["comparison"]["nginx"]
    router = d["comparison"].get("vllm-router", {})
    blocking, stream = d["c32_blocking"]["kvgate"], d["c32_stream"]["kvgate"]
    long = d["long_prompt"]
    rr = long["c32_blocking"]["kvgate-round_robin"]
    prefix = long["c32_blocking"]["kvgate-prefix_kv_aware"]
    versus = long["prefix_vs_round_robin"]
    routed = long["routing"]["kvgate-prefix_kv_aware"]["c32"]
    errors = sum(r["non_2xx"] + r["socket_errors"]
                 for part in (d, long) for r in part["c32_blocking"].values())
    ratio = kv["stream_cpu_us_per_request"] / kv["cpu_us_per_request"]
    return [
        f"{path.name}: added p50 / p99 {kv['added_p50_ms']:.3f} / {kv['added_p99_ms']:.3f} ms,"
        f" stream TTFT +{kv['stream_ttft_added_p50_ms']:.3f} ms, c=32"
        f" {blocking['requests_per_s']:.0f} / {stream['requests_per_s']:.0f} req/s"
        f" (p99 {blocking['p99_ms']} / {stream['p99_ms']} ms), CPU"
        f" {kv['cpu_us_per_request']} / {kv['stream_cpu_us_per_request']} us ({ratio:.2f}x),"
        f" idle RSS {kv['rss_idle_mb']} MB",
        f"  nginx +{nginx['added_p50_ms']:.3f} ms, TTFT +{nginx['stream_ttft_added_p50_ms']:.3f};"
        f" vllm-router +{router.get('added_p50_ms', 0):.3f}, TTFT"
        f" +{router.get('stream_ttft_added_p50_ms', 0):.3f}",
        f"  long prompts c=32: round_robin {rr['cpu_us_per_request']} us,"
        f" {rr['requests_per_s']:.0f} req/s, p99 {rr['p99_ms']} ms; prefix_kv_aware"
        f" {prefix['cpu_us_per_request']} us, {prefix['requests_per_s']:.0f} req/s, p99"
        f" {prefix['p99_ms']} ms; ratio {versus['cpu_ratio']}, c=1 added p50"
        f" +{versus['added_p50_us']} us; outcomes {routed['outcomes']} over"
        f" {routed['deployments_used']} deployments; errors {errors}",
    ]


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print("\n".join(summary(Path(name))))
