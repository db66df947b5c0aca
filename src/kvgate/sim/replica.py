"""One replica process: engine loop + KV-event publisher + HTTP server, until SIGINT/SIGTERM.

Run by the fleet as `python -m kvgate.sim.replica '<ReplicaSettings JSON>'`; usable directly for
a single replica in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from types import FrameType

import uvicorn

from kvgate.sim.engine import Engine
from kvgate.sim.engine_loop import EngineLoop
from kvgate.sim.kv_publisher import ZmqKVEventPublisher
from kvgate.sim.prompt import PromptRenderer
from kvgate.sim.server import SimApp
from kvgate.sim.settings import ReplicaSettings
from kvgate.sim.tokenizer import SimTokenizer


class _QuietServer(uvicorn.Server):
    """uvicorn.Server that shuts down on SIGINT/SIGTERM without re-raising the signal after.

    (uvicorn re-raises it so the default handler runs, which would make a clean stop look like
    a crash to whoever supervises the process.)
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        def on_signal(sig: int, frame: FrameType | None) -> None:
            self.handle_exit(sig, frame)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def build_app(settings: ReplicaSettings) -> tuple[SimApp, ZmqKVEventPublisher | None]:
    """Wire one replica's components from its settings (no I/O besides binding ZMQ sockets)."""
    profile = settings.build_profile()
    events_config = settings.kv_events_config()
    publisher = ZmqKVEventPublisher(events_config) if events_config is not None else None
    engine = Engine(profile, settings.engine_config(), sink=publisher)
    loop = EngineLoop(engine, settings.time_scale)
    renderer = PromptRenderer(profile, SimTokenizer(), settings.image_tokens)
    endpoints: dict[str, str] = {}
    if events_config is not None:
        endpoints = {"endpoint": events_config.endpoint, "topic": events_config.topic}
        if events_config.replay_endpoint is not None:
            endpoints["replay_endpoint"] = events_config.replay_endpoint
    return SimApp(settings, loop, renderer, endpoints), publisher


async def serve(settings: ReplicaSettings) -> None:
    app, publisher = build_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level=settings.log_level,
        timeout_graceful_shutdown=2,
    )
    server = _QuietServer(config)
    app.loop.start()
    try:
        await server.serve()
    finally:
        await app.loop.stop()
        if publisher is not None:
            publisher.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m kvgate.sim.replica '<ReplicaSettings JSON>'", file=sys.stderr)
        return 2
    settings = ReplicaSettings.from_json(args[0])
    logging.basicConfig(level=settings.log_level.upper())
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
