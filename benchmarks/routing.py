"""KV-aware routing benchmark: ``kvgate bench scenario routing`` with the report's outputs.

    python benchmarks/routing.py                 # about 6 minutes; writes the files below
    python benchmarks/routing.py --quick         # seconds; numbers not meaningful, no files
    python benchmarks/routing.py --markdown      # the report's tables from the written JSON

Writes benchmarks/results/routing.json and the PNG plots in docs/img/ that the "KV-aware
routing" section of docs/BENCHMARK_REPORT.md shows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks/results/routing.json"
PLOTS = ROOT / "docs/img"


def main(argv: list[str]) -> int:
    if "--markdown" in argv:
        from kvgate.bench.scenarios.routing_report import markdown_tables

        document = json.loads(RESULT.read_text())
        for source in ("cases", "virtual"):
            print(markdown_tables(document, source))
        return 0
    from kvgate.cli import main as kvgate

    if "--quick" in argv:
        return kvgate(["bench", "scenario", "routing", *argv])
    return kvgate(["bench", "scenario", "routing", "--out", str(RESULT), "--plots", str(PLOTS),
                   *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
