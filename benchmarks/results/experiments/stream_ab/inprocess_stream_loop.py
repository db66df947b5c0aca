"""CPU per request of the in-process gateway over the zero upstream, blocking and streamed.

python inprocess_stream_loop.py both|blocking|stream N
ASGI calls straight into ``create_app`` (no HTTP server), one ``openai_compatible``
deployment on a zero upstream started here, c=1; prints the thread CPU microseconds per
request of each round (``both``: 3 rounds of each, alternating). Run it under
``py-spy record -f raw`` to see where a streamed request's time goes.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

from kvgate.api.app import create_app
from kvgate.bench.gateway_overhead import CHAT_BODY, STREAM_BODY, wait_port
from kvgate.bench.processes import free_port
from kvgate.bench.routing_cost import _serve_one as serve
from kvgate.config.schema import Settings


async def measure(mode: str, requests: int, port: int) -> dict[str, list[float]]:
    app = create_app(Settings.model_validate({
        "providers": {"zero": {"type": "openai_compatible",
                               "api_base": f"http://127.0.0.1:{port}/v1"}},
        "models": [{"name": "zero", "deployments": [{"provider": "zero", "model": "zero"}]}],
        "cache": {"exact": {"enabled": False}},
        "routing": {"health_check_interval_s": 0},
    }))
    bodies = {"blocking": CHAT_BODY, "stream": STREAM_BODY}
    rounds = ["blocking", "stream"] * 3 if mode == "both" else [mode]
    cpu_us: dict[str, list[float]] = {}
    for name in rounds:
        for _ in range(200):  # warm-up
            await serve(app, bodies[name])
        started_ns = time.thread_time_ns()
        for _ in range(requests):
            await serve(app, bodies[name])
        cpu_us.setdefault(name, []).append(
            round((time.thread_time_ns() - started_ns) / requests / 1000, 1))
    await app.gateway.aclose()
    return cpu_us


def main(argv: list[str]) -> None:
    port = free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "kvgate.bench.zero_upstream",
                                 "--port", str(port)], stdout=subprocess.DEVNULL)
    try:
        wait_port(port)
        print(asyncio.run(measure(argv[0], int(argv[1]), port)))
    finally:
        upstream.kill()


if __name__ == "__main__":
    main(sys.argv[1:])
