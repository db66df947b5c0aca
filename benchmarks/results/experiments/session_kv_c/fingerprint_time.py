"""Time per fingerprint with the strategy's memo, every request a new user turn (see README).

python fingerprint_time.py LABEL N: routing_cost's prompts (a 28,000-character system prompt,
a distinct 4,000-character user turn), one memo as prefix_kv_aware keeps it, N fingerprints
timed one by one; medians over three windows (while the memo fills, after). Run it with
PYTHONPATH=<tree>/src for another tree.
"""

from __future__ import annotations

import statistics
import sys
import time

from kvgate.bench.routing_cost import SYSTEM_TOKENS, USER_TOKENS, Prompts
from kvgate.routing.fingerprint import MessageMemo, fingerprint

label, count = sys.argv[1], int(sys.argv[2])
prompts = Prompts(SYSTEM_TOKENS, USER_TOKENS)
memo = MessageMemo()
times_ns = []
for n in range(count):
    call = prompts.call(n)
    start_ns = time.perf_counter_ns()
    fingerprint(call, block_chars=256, memo=memo)
    times_ns.append(time.perf_counter_ns() - start_ns)
for low, high in ((100, 4000), (4000, 8000), (count - 4000, count)):
    window = times_ns[low:high]
    print(f"{label} calls {low}-{high}: median {statistics.median(window) / 1e3:.2f} us")
