"""Serve the app with KVGate's lean HTTP server (default), uvicorn or granian, in one process or
several workers."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from kvgate.config.loader import CONFIG_FILE_ENV, load_settings_from_environment
from kvgate.config.schema import Settings
from kvgate.extras import require
from kvgate.routing import strategy_entry

if TYPE_CHECKING:
    from kvgate.api.app import KVGateApp

#: Names the shared-memory affinity segment the parent made for its workers.
AFFINITY_SEGMENT_ENV = "KVGATE_AFFINITY_SEGMENT"


def app_from_environment() -> KVGateApp:
    """ASGI factory for worker processes: each builds its own gateway from the config file.

    The app is imported here, not at module level, so a supervising parent process (granian's)
    stays small.
    """
    from kvgate.api.app import create_app

    settings = load_settings_from_environment()
    segment = os.environ.get(AFFINITY_SEGMENT_ENV)
    if segment:
        settings = with_affinity_segment(settings, segment)
    return create_app(settings)


def with_affinity_segment(settings: Settings, segment: str) -> Settings:
    """``settings`` whose ``auto`` and ``shared_memory`` affinity indexes map ``segment``."""
    routing = settings.routing.model_copy(update={"affinity_segment": segment})
    return settings.model_copy(update={"routing": routing})


def _shares_affinity(settings: Settings) -> list[tuple[str, int]]:
    """(model, max_tracked_blocks) of the models whose index a worker segment would hold."""
    shared = []
    for model in settings.models:
        routing = settings.routing_for(model)
        if (routing.affinity_backend in ("auto", "shared_memory")
                and routing.affinity_segment is None
                and strategy_entry(routing.strategy).uses_affinity):
            shared.append((model.name, routing.prefix.max_tracked_blocks))
    return shared


@contextlib.contextmanager
def worker_affinity_segment(settings: Settings, workers: int) -> Iterator[str | None]:
    """With several workers, one shared-memory affinity table for all of them, named to them
    through the environment and unlinked when they are done; None when not needed or no room.
    """
    shared = _shares_affinity(settings) if workers > 1 else []
    if not shared:
        yield None
        return
    from kvgate.routing.shm_table import SHM_DIR, AffinitySegment, table_bytes

    logger = logging.getLogger("kvgate")
    num_entries = sum(blocks for _, blocks in shared)
    # One tick byte per deployment of the largest model in every entry.
    columns = max(len(model.deployments) for model in settings.models)
    # The placement board: a slot per worker, and one spare for a worker started in place of
    # one that died before its slot is seen free; an entry per deployment sharing the table.
    sharing = {name for name, _ in shared}
    board = (workers + 1, sum(len(m.deployments) for m in settings.models if m.name in sharing))
    size_bytes = table_bytes(num_entries, columns, *board)
    # NOTE: tmpfs allocates pages on first write; a segment larger than what is free (Docker's
    # default /dev/shm is 64 MB) would kill a worker with SIGBUS mid-request, so check first.
    free_bytes = shutil.disk_usage(SHM_DIR).free if os.path.isdir(SHM_DIR) else 0
    if free_bytes < size_bytes:
        logger.warning(
            "%d workers: no room in %s for the shared affinity index (%d MiB needed, %d free); "
            "each worker keeps its own, so prefix affinity is split between them", workers,
            SHM_DIR, size_bytes >> 20, free_bytes >> 20)
        yield None
        return
    segment = AffinitySegment(num_entries, columns, *board)
    os.environ[AFFINITY_SEGMENT_ENV] = segment.name
    print(f"kvgate: {workers} workers share one affinity index in shared memory "
          f"({segment.name}, {size_bytes / 2**20:.0f} MiB; models "
          f"{', '.join(name for name, _ in shared)})", flush=True)
    try:
        yield segment.name
    finally:
        os.environ.pop(AFFINITY_SEGMENT_ENV, None)
        segment.unlink()


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
    # they share the affinity index through shared memory, other state only through Redis.
    for warning in per_process_state_warnings(settings, workers):
        logging.getLogger("kvgate").warning(warning)
    if config_path is not None:
        os.environ[CONFIG_FILE_ENV] = str(Path(config_path).resolve())
    else:
        os.environ.pop(CONFIG_FILE_ENV, None)
    with worker_affinity_segment(settings, workers):
        if server.http_server == "granian":
            _serve_granian(settings, host, port, workers)
        elif server.http_server == "uvicorn":
            _serve_uvicorn(settings, host, port, workers)
        else:
            _serve_kvgate(settings, host, port, workers)
    return 0


def _serve_kvgate(settings: Settings, host: str, port: int, workers: int) -> None:
    """The lean server (:mod:`kvgate.httpserver`): in this process, or in ``workers``
    processes that each bind the port (SO_REUSEPORT: the kernel spreads connections)."""
    access_log = settings.server.access_log
    if workers <= 1:
        from kvgate.api.app import create_app

        _run_lean(create_app(settings), host, port, access_log, reuse_port=False)
        return
    from kvgate.workers import supervise

    status = supervise(workers, _lean_worker, (host, port, access_log))
    if status:
        raise SystemExit(status)


def _lean_worker(host: str, port: int, access_log: bool) -> None:
    """One worker process: its own gateway from the config its parent validated."""
    logging.basicConfig(level=load_settings_from_environment().server.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _run_lean(app_from_environment(), host, port, access_log, reuse_port=True)


def _run_lean(app: KVGateApp, host: str, port: int, access_log: bool, *,
              reuse_port: bool) -> None:
    import uvloop

    from kvgate.httpserver import serve as serve_http

    uvloop.run(serve_http(app, host=host, port=port, access_log=access_log,
                          reuse_port=reuse_port))


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
    own_index = [m.name for m in settings.models
                 if settings.routing_for(m).affinity_backend == "memory"
                 and strategy_entry(settings.routing_for(m).strategy).uses_affinity]
    if own_index:
        warnings.append(f"{workers} workers with routing.affinity_backend: memory: each learns "
                        f"its own prefix affinities for {', '.join(own_index)}; auto or "
                        "shared_memory shares them")
    if settings.cache.exact.enabled and settings.cache.backend == "memory":
        warnings.append(f"{workers} workers with cache.backend: memory: each keeps its own "
                        "exact cache; set cache.backend: redis to share it")
    return warnings
