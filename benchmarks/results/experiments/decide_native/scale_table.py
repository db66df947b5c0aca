"""The scale scenario's decision cost, beyond fingerprinting (p50 us, cold / warm / shared),
side by side for the JSONs given: python scale_table.py A.json B.json ..."""

from __future__ import annotations

import json
import sys
from pathlib import Path

runs = [(path.rsplit("/", 1)[-1], json.loads(Path(path).read_text())) for path in sys.argv[1:]]
print("cell".ljust(22), *(f"{name[:-5]} ({run['host'].get('python_speed_us')})".rjust(24)
                          for name, run in runs))
for i, cell in enumerate(runs[0][1]["decision_cost"]):
    label = f"{cell['replicas']} x {cell['prompt_tokens']}"
    figures = []
    for _, run in runs:
        c = run["decision_cost"][i]
        figures.append("/".join(f"{c[k]['beyond_fingerprint_cpu_us']['p50']:.0f}"
                                for k in ("cold", "warm", "shared")))
    print(label.ljust(22), *(f.rjust(24) for f in figures))
