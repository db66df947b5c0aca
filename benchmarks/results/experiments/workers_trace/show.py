"""Print a decision log (sitecustomize.py) one decision per line, runs split by gaps > 20 s."""

from __future__ import annotations

import json
import sys


def main(path: str) -> None:
    start = previous = None
    with open(path) as lines:
        for line in lines:
            record = json.loads(line)
            if previous is None or record["t"] - previous > 20:
                print("---- run")
                start = record["t"]
            previous = record["t"]
            assert start is not None
            at = record["t"] - start
            if "missed" in record:
                print(f"{at:7.3f} p{record['pid'] % 1000} missed {record['missed']:.0f} "
                      f"on {record['pos']} (cached share {record['cached_share']:.3f})")
                continue
            explanation = record["e"]
            costs = {k[-1]: (v["predicted_cost_ms"], v.get("eviction_ms"))
                     for k, v in explanation["candidates"].items()}
            print(f"{at:7.3f} p{record['pid'] % 1000} {explanation['outcome']:5} -> "
                  f"{record['pick'][-1]} queued={[round(x) for x in record['queued']]} "
                  f"waiting={record['waiting']} placed={[round(x) for x in record['placed']]} "
                  f"cap={[round(x) for x in record['cap']]} "
                  f"err_ms={[round(x * 1000) for x in record['err']]} costs={costs} "
                  f"margin={explanation['runner_up_margin_ms']}")


if __name__ == "__main__":
    main(sys.argv[1])
