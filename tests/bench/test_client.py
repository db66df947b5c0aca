"""The bench client's request headers: the run's, and a request's own on top."""

from __future__ import annotations

import time

import aiohttp
from aiohttp import web

from kvgate.bench.client import Client
from kvgate.bench.request import BenchRequest, RequestRecord


async def test_a_requests_own_headers_go_over_the_runs() -> None:
    seen: list[dict[str, str]] = []

    async def chat(request: web.Request) -> web.Response:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        return web.json_response({"choices": [{"message": {"content": "ok"}}],
                                  "usage": {"prompt_tokens": 1, "completion_tokens": 1}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session:
            client = Client(session, f"http://127.0.0.1:{port}", {"x-run": "r", "x-both": "run"},
                            time.perf_counter())
            plain = BenchRequest(body=b"{}", stream=False)
            keyed = BenchRequest(body=b"{}", stream=False,
                                 headers={"x-session-id": "image3", "x-both": "request"})
            for index, request in enumerate((plain, keyed)):
                record = RequestRecord(index, "", -1, 0.0)
                await client.send(request, record)
                assert record.ok, record.error
    finally:
        await runner.cleanup()
    assert seen[0]["x-run"] == "r" and "x-session-id" not in seen[0]
    assert seen[1]["x-run"] == "r" and seen[1]["x-session-id"] == "image3"
    assert seen[1]["x-both"] == "request"
