"""Serve the app with uvicorn (default) or granian, in one process or several workers."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from kvgate.config.loader import CONFIG_FILE_ENV, load_settings_from_environment
from kvgate.config.schema import Settings
from kvgate.extras import require

if TYPE_CHECKING:
    from kvgate.api.app import KVGateApp


def app_from_environment() -> KVGateApp:
    """ASGI factory for worker processes: each builds its own gateway from the config file.

    The app is imported here, not at module level, so a supervising parent process (granian's)
    stays small.
    """
    from kvgate.api.app import create_app

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
    print(f"kvgate: serving {', '.join(m.name for m in settings.models)} "
          f"on http://{host}:{port} ({workers} worker(s), {server.http_server})", flush=True)
    # Workers build their own gateway from the file their parent validated (or the demo);
    # routing state is shared between them only through Redis.
    for warning in per_process_state_warnings(settings, workers):
        logging.getLogger("kvgate").warning(warning)
    if config_path is not None:
        os.environ[CONFIG_FILE_ENV] = str(Path(config_path).resolve())
    else:
        os.environ.pop(CONFIG_FILE_ENV, None)
    if server.http_server == "granian":
        _serve_granian(settings, host, port, workers)
    else:
        _serve_uvicorn(settings, host, port, workers)
    return 0


def _serve_granian(settings: Settings, host: str, port: int, workers: int) -> None:
    require("granian", "granian", feature="server.http_server granian")
    from granian import Granian
    from granian.constants import Interfaces, Loops
    from granian.log import LogLevels

    Granian(
        "kvgate.server:app_from_environment",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        loop=Loops.uvloop,
        websockets=False,
        backlog=4096,
        log_level=LogLevels(settings.server.log_level),
        log_access=settings.server.access_log,
    ).serve()


def _serve_uvicorn(settings: Settings, host: str, port: int, workers: int) -> None:
    import uvicorn

    from kvgate.api.app import create_app

    common = {
        "host": host,
        "port": port,
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "access_log": settings.server.access_log,
        "log_level": settings.server.log_level,
        "timeout_graceful_shutdown": 10,
    }
    if workers > 1:
        uvicorn.run("kvgate.server:app_from_environment", factory=True, workers=workers,
                    **common)  # type: ignore[arg-type]
    else:
        uvicorn.run(create_app(settings), **common)  # type: ignore[arg-type]


def per_process_state_warnings(settings: Settings, workers: int) -> list[str]:
    """What several workers would each keep for themselves, that users expect to be one."""
    if workers <= 1:
        return []
    warnings = []
    limited = [t.name for t in settings.tenants if t.rate_limit or t.budget]
    if limited and settings.limits_backend == "memory":
        warnings.append(
            f"{workers} workers with limits_backend: memory: each worker enforces the rate limits "
            f"and budgets of {', '.join(limited)} on its own, so together they allow up to "
            f"{workers}x; set limits_backend: redis to share them")
    if settings.cache.exact.enabled and settings.cache.backend == "memory":
        warnings.append(f"{workers} workers with cache.backend: memory: each keeps its own "
                        "exact cache; set cache.backend: redis to share it")
    return warnings
