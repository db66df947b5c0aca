"""Serve the app with uvicorn (uvloop + httptools), in one process or several workers."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import uvicorn

from kvgate.api.app import KVGateApp, create_app
from kvgate.config.loader import CONFIG_FILE_ENV, load_settings_from_environment
from kvgate.config.schema import Settings


def app_from_environment() -> KVGateApp:
    """uvicorn factory for worker processes: each builds its own gateway from the file."""
    return create_app(load_settings_from_environment())


def serve(
    settings: Settings,
    *,
    config_path: str | None,
    host: str | None,
    port: int | None,
    workers: int | None,
) -> int:
    server = settings.server
    host = host or server.host
    port = server.port if port is None else port
    workers = workers or server.workers
    logging.basicConfig(
        level=server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    common = {
        "host": host,
        "port": port,
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "access_log": server.access_log,
        "log_level": server.log_level,
        "timeout_graceful_shutdown": 10,
    }
    print(f"kvgate: serving {', '.join(m.name for m in settings.models)} "
          f"on http://{host}:{port} ({workers} worker(s))", flush=True)
    if workers > 1:
        # Each worker builds its own gateway; routing state is shared only through Redis.
        if config_path is not None:
            os.environ[CONFIG_FILE_ENV] = str(Path(config_path).resolve())
        uvicorn.run("kvgate.server:app_from_environment", factory=True, workers=workers,
                    **common)  # type: ignore[arg-type]
    else:
        uvicorn.run(create_app(settings), **common)  # type: ignore[arg-type]
    return 0
