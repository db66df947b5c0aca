"""Run N worker processes of the lean server and keep them running until told to stop.

The parent only supervises: each worker (a fresh ``spawn`` process, so nothing of the parent's
state is inherited by accident) builds its own gateway from the config file named in its
environment and binds the port with SO_REUSEPORT. SIGINT/SIGTERM to the parent stop every
worker gracefully; a worker that dies on its own is restarted, so one crash does not leave
the port with fewer workers until the next deploy.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

logger = logging.getLogger("kvgate")

#: How often the parent looks for workers that died.
_CHECK_INTERVAL_S = 0.5
#: How long a stopping worker may take before it is killed.
_STOP_TIMEOUT_S = 15.0


def supervise(workers: int, target: Callable[..., None], args: tuple[Any, ...]) -> None:
    context = multiprocessing.get_context("spawn")
    stopping = threading.Event()

    def start() -> BaseProcess:
        process = context.Process(target=target, args=args, daemon=False)
        process.start()
        return process

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    processes = [start() for _ in range(workers)]
    try:
        while not stopping.wait(_CHECK_INTERVAL_S):
            for index, process in enumerate(processes):
                if not process.is_alive():
                    logger.error("worker %s exited with %s; starting another", process.pid,
                                 process.exitcode)
                    processes[index] = start()
    finally:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                process.terminate()  # SIGTERM: the worker finishes what is in flight
        for process in processes:
            process.join(_STOP_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
