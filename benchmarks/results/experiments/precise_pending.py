"""What ``ReplicaKVIndex.add_pending`` costs per dispatch while KV events confirm the blocks
of the requests ahead (each request's blocks confirmed once ``in_flight`` later ones were
dispatched; no event loop, no engine): blocks per request x requests in flight.

  python benchmarks/results/experiments/precise_pending.py

Prints microseconds per call and the pending blocks left, for three shapes.
"""

from __future__ import annotations

import random
import time

from kvgate.routing.precise.index import ReplicaKVIndex


class _Clock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def per_call_us(blocks: int, in_flight: int, calls: int = 4000) -> tuple[float, int]:
    clock = _Clock()
    index = ReplicaKVIndex(max_blocks=1_000_000, pending_ttl_s=10.0, clock=clock)
    rng = random.Random(1)
    chains: list[list[int]] = []
    spent_s = 0.0
    for _ in range(calls):
        clock.now_s += 0.002
        keys = [rng.getrandbits(62) for _ in range(blocks)]
        started_s = time.perf_counter()
        index.add_pending(keys)
        spent_s += time.perf_counter() - started_s
        chains.append(keys)
        if len(chains) > in_flight:
            for key in chains.pop(0):  # what a BlockStored event does to a pending block
                index._pending.pop(key, None)
    return spent_s / calls * 1e6, index.num_pending_blocks


def main() -> None:
    for blocks, in_flight in ((32, 16), (500, 16), (500, 64)):
        us, left = per_call_us(blocks, in_flight)
        print(f"{blocks} blocks, {in_flight} in flight: {us:.1f} us per add_pending, "
              f"{left} pending")


if __name__ == "__main__":
    main()
