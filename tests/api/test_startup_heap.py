"""The gateway's start-up sets the cyclic collector's thresholds (``server.gc_thresholds``)
and takes what it built out of the collector's full passes (``freeze_startup_heap``): once
per process, after the gateway started, and garbage made later is still collected. Run in a
fresh interpreter: the test process's heap may have been frozen by an app another test
started."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import asyncio, gc, json
    from kvgate.api.app import create_app
    from kvgate.config.schema import Settings

    settings = Settings.model_validate({
        "providers": {"mock": {"type": "mock"}},
        "models": [{"name": "m", "deployments": [{"provider": "mock", "model": "m"}]}],
        "routing": {"health_check_interval_s": 0},
        "server": {"gc_thresholds": [1234, 5, 6]},
    })

    async def lifespan(app, kinds):
        inbox, outbox = asyncio.Queue(), []
        for kind in kinds:
            inbox.put_nowait({"type": f"lifespan.{kind}"})
        async def receive():
            return await inbox.get()
        async def send(message):
            outbox.append(message["type"])
        task = asyncio.create_task(app({"type": "lifespan"}, receive, send))
        while len(outbox) < len(kinds):
            await asyncio.sleep(0.01)
        return task, outbox

    async def main():
        out = {"before": gc.get_freeze_count()}
        app = create_app(settings)
        task, messages = await lifespan(app, ["startup"])
        out["messages"] = list(messages)
        out["after_startup"] = gc.get_freeze_count()
        out["thresholds"] = list(gc.get_threshold())
        second = create_app(settings)
        task2, _ = await lifespan(second, ["startup"])
        out["after_second_app"] = gc.get_freeze_count()
        cycle = []
        cycle.append(cycle)
        del cycle
        out["collected_later"] = gc.collect()
        for t in (task, task2):
            t.cancel()
        await app.gateway.aclose()
        await second.gateway.aclose()
        print(json.dumps(out))

    asyncio.run(main())
''')


def test_startup_freezes_the_heap_once_and_later_garbage_is_collected() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            timeout=120, check=True)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["before"] == 0
    assert out["messages"] == ["lifespan.startup.complete"]
    # Everything alive after start-up: modules, settings, the gateway (tens of thousands).
    assert out["after_startup"] > 10_000
    assert out["thresholds"] == [1234, 5, 6]  # server.gc_thresholds, set at start-up
    # Once per process: a second freeze would add the second app's thousands of objects
    # (frozen ones freed since only lower the count).
    assert out["after_second_app"] <= out["after_startup"]
    assert out["collected_later"] >= 1  # a cycle made after start-up is still found
