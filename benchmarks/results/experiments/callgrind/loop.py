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

import uvloop

from kvgate.api.app import create_app, freeze_startup_heap
from kvgate.bench.gateway_overhead import CHAT_BODY, STREAM_BODY
from kvgate.bench.routing_cost import (
    MODEL,
    SYSTEM_TOKENS,
    USER_TOKENS,
    Prompts,
    gateway_settings,
    warm,
)
from kvgate.bench.routing_cost import _serve_one as serve
from kvgate.config.schema import Settings

BODIES = 1100


async def main(arm: str, requests: int, port: str) -> None:
    if arm in ("blocking", "stream"):
        app = create_app(Settings.model_validate({
            "providers": {"zero": {"type": "openai_compatible",
                                   "api_base": f"http://127.0.0.1:{port}/v1"}},
            "models": [{"name": "zero", "deployments": [{"provider": "zero", "model": "zero"}]}],
            "cache": {"exact": {"enabled": False}},
            "routing": {"health_check_interval_s": 0},
        }))
        bodies = [STREAM_BODY if arm == "stream" else CHAT_BODY] * BODIES
    else:
        app = create_app(gateway_settings(arm, 64))
        route = app.gateway.routes[MODEL]
        prompts = Prompts(SYSTEM_TOKENS, USER_TOKENS)
        await warm(route.strategy, route.deployments, prompts)
        bodies = [prompts.body(10_000 + n) for n in range(BODIES)]
    for body in bodies[:100]:  # the code paths and the index warm, in every run alike
        await serve(app, body)
    freeze_startup_heap()
    for body in bodies[100:100 + requests]:
        await serve(app, body)
    await app.gateway.aclose()


if __name__ == "__main__":
    # uvloop, as `kvgate run` serves: asyncio's own loop keeps its timers in Python.
    uvloop.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else ""))
