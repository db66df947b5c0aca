"""Time per affinity-index match and record at 64 deployments (see README).

python affinity_time.py LABEL SPREAD: every deployment holds a 112-link shared head; each of
20,000 prompts is that head and 16 new links, matched against all 64, then recorded for
deployment n % SPREAD (1: all to one, as the overhead scenario's c=1 KV-aware arm sends them).
Medians after the first 2,000. PYTHONPATH=<tree>/src for another tree.
"""

from __future__ import annotations

import random
import statistics
import sys
import time

from kvgate.routing.affinity import MemoryAffinityIndex

label, spread = sys.argv[1], int(sys.argv[2])
rng = random.Random(1)
ids = [f"d{i}" for i in range(64)]
index = MemoryAffinityIndex(max_blocks_per_deployment=100_000, ttl_s=300)
head = [rng.getrandbits(64) for _ in range(112)]
for deployment in ids:
    index.record(deployment, head + [rng.getrandbits(64) for _ in range(16)])
match_ns, record_ns = [], []
for n in range(20_000):
    hashes = head + [rng.getrandbits(64) for _ in range(16)]
    start_ns = time.perf_counter_ns()
    index.match_now(hashes, ids)
    matched_ns = time.perf_counter_ns()
    index.record(ids[n % spread], hashes)
    match_ns.append(matched_ns - start_ns)
    record_ns.append(time.perf_counter_ns() - matched_ns)
print(f"{label} spread {spread}: match {statistics.median(match_ns[2000:]) / 1e3:.2f} us "
      f"record {statistics.median(record_ns[2000:]) / 1e3:.2f} us")
