"""wrk's Lua script for pairs.sh and spy.sh: ``python wrk_lua.py short|long PATH``. "short": the
overhead scenario's "hi" body; "long": its long-prompt case (a 28 KB system prompt and a user
turn numbered per request, ~8k tokens). Built by the benchmark's own ``wrk_script``."""

from __future__ import annotations

import sys

from kvgate.bench.gateway_overhead import CHAT_BODY
from kvgate.bench.rawhttp import wrk_script
from kvgate.bench.scenarios.overhead_long import long_body

if __name__ == "__main__":
    kind, path = sys.argv[1], sys.argv[2]
    with open(path, "w") as f:
        f.write(wrk_script(CHAT_BODY if kind == "short" else long_body()))
