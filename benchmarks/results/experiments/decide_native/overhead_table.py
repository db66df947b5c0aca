"""The overhead scenario's figures issue 15 names, one row per JSON given:
python overhead_table.py A.json B.json ..."""

from __future__ import annotations

import json
import sys
from pathlib import Path

print("| run | speed | CPU us blocking / streamed | streamed / blocking | added p50 / p99 ms "
      "| stream TTFT added ms | c=32 req/s | long prompts: KV-aware - RR p50 us, CPU RR / KV "
      "us, ratio | errors |")
print("|---|---|---|---|---|---|---|---|---|")
for path in sys.argv[1:]:
    d = json.loads(Path(path).read_text())
    k = d["comparison"]["kvgate"]
    lp = d["long_prompt"]
    pv = lp["prefix_vs_round_robin"]
    lc = lp["comparison"]
    if not pv.get("measured"):
        print(f"| {path.rsplit('/', 1)[-1][:-5]} | long prompts not measured: "
              f"{lp.get('failed')} |")
        continue
    errors = sum((c["errors"].get("non_2xx") or 0) + (c["errors"].get("socket_errors") or 0)
                 for c in lc.values()) + len(d.get("failed") or {}) + len(lp.get("failed") or {})
    print(f"| {path.rsplit('/', 1)[-1][:-5]} | {d['host'].get('python_speed_us')} "
          f"| {k['cpu_us_per_request']} / {k['stream_cpu_us_per_request']} "
          f"| {k['stream_cpu_us_per_request'] / k['cpu_us_per_request']:.2f} "
          f"| {k['added_p50_ms']} / {k['added_p99_ms']} | {k['stream_ttft_added_p50_ms']} "
          f"| {k['c32_requests_per_s']:,.0f} "
          f"| +{pv['added_p50_us']}, {lc['kvgate-round_robin']['cpu_us_per_request']} / "
          f"{lc['kvgate-prefix_kv_aware']['cpu_us_per_request']}, {pv['cpu_ratio']}x "
          f"| {errors} |")
