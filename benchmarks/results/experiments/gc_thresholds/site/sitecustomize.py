"""Loaded by every Python started with this folder on PYTHONPATH (gc_load.py's gateways): in a
`kvgate run` process, time each collection by generation (thread CPU) and write the totals,
the passes and the longest young or middle pass to GC_STATS_DIR/gc_<pid>.json twice a second."""

import gc
import json
import os
import sys
import threading
import time

if "kvgate" in " ".join(sys.argv) and "run" in sys.argv:
    _totals: dict[str, list[float]] = {"0": [0, 0.0], "1": [0, 0.0], "2": [0, 0.0]}
    _longest_s = [0.0]
    _started_s = [0.0]

    def _on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            _started_s[0] = time.thread_time()
            return
        took_s = time.thread_time() - _started_s[0]
        entry = _totals[str(info["generation"])]
        entry[0] += 1
        entry[1] += took_s
        if info["generation"] < 2:  # full passes: start-up's own collect() is one
            _longest_s[0] = max(_longest_s[0], took_s)

    gc.callbacks.append(_on_gc)

    def _dump() -> None:
        path = os.path.join(os.environ.get("GC_STATS_DIR", "/tmp"), f"gc_{os.getpid()}.json")
        while True:
            time.sleep(0.5)
            with open(path, "w") as out:
                json.dump({"totals": _totals, "longest_s": _longest_s[0],
                           "thresholds": gc.get_threshold()}, out)

    threading.Thread(target=_dump, daemon=True).start()
