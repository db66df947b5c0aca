"""One in-process gateway loop for instruction counts under callgrind (see README.md).

python loop.py ARM N [PORT]: builds what every run builds (the app, warm-up, 1,100 request
bodies), then serves the first N bodies. Run it for two N under callgrind: the difference of
the totals over the difference of N is the instructions one request costs, start-up and body
making cancel out.

ARM: ``blocking`` / ``stream`` (one ``openai_compatible`` deployment on the zero upstream at
PORT, the overhead scenario's "hi" bodies), ``round_robin`` / ``prefix_kv_aware`` (64 mock
deployments, ~8k-token prompts: a 7k-token shared system prompt and a distinct user turn, as
``kvgate.bench.routing_cost``).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import uvloop

#: The long-prompt arms' strategies read ``time.monotonic`` (the scorer refreshes every 50 ms
#: of it, the index ticks in whole seconds): under callgrind, ~50x slower, that work would
#: fall ~50x as often per request and vary from run to run. They get a clock that advances a
#: fixed step per request instead, installed before kvgate is imported.
VIRTUAL_STEP_S = 100e-6
_virtual_now_s = [1_000.0]
if len(sys.argv) > 1 and sys.argv[1] in ("round_robin", "prefix_kv_aware"):
    time.monotonic = lambda: _virtual_now_s[0]

BODIES = 1100


async def long_prompt_gateway(arm: str) -> tuple[Any, Any, Any]:
    """The app, its route and its prompt maker for a long-prompt arm, the index warm."""
    # Imported here, after the clock above: kvgate binds time.monotonic as a default.
    from kvgate.api.app import create_app
    from kvgate.bench.routing_cost import (
        MODEL,
        SYSTEM_TOKENS,
        USER_TOKENS,
        Prompts,
        gateway_settings,
        warm,
    )

    app = create_app(gateway_settings(arm, 64))
    route = app.gateway.routes[MODEL]
    prompts = Prompts(SYSTEM_TOKENS, USER_TOKENS)
    await warm(route.strategy, route.deployments, prompts)
    return app, route, prompts


async def main(arm: str, requests: int, port: str) -> None:
    # Imported here, after the clock above: kvgate binds time.monotonic as a default.
    from kvgate.api.app import create_app
    from kvgate.api.collector import freeze_startup_heap
    from kvgate.bench.gateway_overhead import CHAT_BODY, STREAM_BODY
    from kvgate.bench.routing_cost import _serve_one as serve
    from kvgate.bench.scenarios.overhead_targets import kvgate_config
    from kvgate.config.schema import Settings

    if arm in ("blocking", "stream"):
        # The overhead scenario's own configuration of its zero-upstream hop.
        app = create_app(Settings.model_validate(kvgate_config(int(port))))
        bodies = [STREAM_BODY if arm == "stream" else CHAT_BODY] * BODIES
    else:
        app, _, prompts = await long_prompt_gateway(arm)
        bodies = [prompts.body(10_000 + n) for n in range(BODIES)]
    for body in bodies[:100]:  # the code paths and the index warm, in every run alike
        _virtual_now_s[0] += VIRTUAL_STEP_S
        await serve(app, body)
    freeze_startup_heap()
    for body in bodies[100:100 + requests]:
        _virtual_now_s[0] += VIRTUAL_STEP_S
        await serve(app, body)
    await app.gateway.aclose()


if __name__ == "__main__":
    # uvloop, as `kvgate run` serves: asyncio's own loop keeps its timers in Python.
    uvloop.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else ""))
