"""Paired 2-worker / 1-worker req/s ratios from pairs.sh output files (pairs in file order:
each pair is two consecutive runs, one of each).  python ratios.py pairs_mock_*.txt"""

from __future__ import annotations

import re
import statistics
import sys


def pairs(path: str) -> list[tuple[float, float]]:
    runs: list[tuple[int, float]] = []
    with open(path) as f:
        for line in f:
            found = re.match(r"workers=(\d) req_s=(\d+)", line)
            if found:
                runs.append((int(found[1]), float(found[2])))
    by_pair = [dict(runs[i:i + 2]) for i in range(0, len(runs) - 1, 2)]
    return [(pair[1], pair[2]) for pair in by_pair]


def main(paths: list[str]) -> None:
    ratios = [two / one for path in paths for one, two in pairs(path)]
    print("ratios:", " ".join(f"{r:.3f}" for r in ratios))
    print(f"median {statistics.median(ratios):.3f}, min {min(ratios):.3f}, "
          f"max {max(ratios):.3f}, at least 1.7 in {sum(r >= 1.7 for r in ratios)} "
          f"of {len(ratios)}")


if __name__ == "__main__":
    main(sys.argv[1:])
