"""Run N worker processes of the lean server and keep them running until told to stop.

The parent only supervises: each worker (a fresh ``spawn`` process, so nothing of the parent's
state is inherited by accident) builds its own gateway from the config file named in its
environment and binds the port with SO_REUSEPORT. SIGINT/SIGTERM to the parent stop every
worker gracefully; a worker that dies on its own is restarted, so one crash does not leave
the port with fewer workers until the next deploy, with a growing delay after failed starts
and an exit once a worker keeps failing to start.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

logger = logging.getLogger("kvgate")

#: How often the parent looks for workers that died.
_CHECK_INTERVAL_S = 0.5
#: How long a stopping worker may take before it is killed.
_STOP_TIMEOUT_S = 15.0
#: A worker that dies this soon after starting counts as a failed start.
_QUICK_DEATH_S = 5.0
#: Failed starts in a row after which the supervisor gives up (the cause is not transient).
_MAX_QUICK_DEATHS = 5
#: First restart delay after a failed start; doubled each time.
_BACKOFF_S = 0.5


def supervise(workers: int, target: Callable[..., None], args: tuple[Any, ...]) -> int:
    """Run ``workers`` processes of ``target(*args)`` until SIGINT/SIGTERM; return the exit
    status: 0, or 1 when a worker keeps dying right after it starts (a port taken, a config
    changed since it was validated), which restarting cannot fix."""
    context = multiprocessing.get_context("spawn")
    stopping = threading.Event()

    def start() -> _Slot:
        process = context.Process(target=target, args=args, daemon=False)
        process.start()
        return _Slot(process, time.monotonic())

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    slots = [start() for _ in range(workers)]
    status = 0
    try:
        while not stopping.wait(_CHECK_INTERVAL_S):
            now_s = time.monotonic()
            for index, slot in enumerate(slots):
                if slot.process.is_alive() or now_s < slot.restart_at_s:
                    continue
                if slot.restart_at_s == 0.0:  # just found dead
                    quick = now_s - slot.started_s < _QUICK_DEATH_S
                    slot.quick_deaths = slot.quick_deaths + 1 if quick else 0
                    logger.error("worker %s exited with %s%s", slot.process.pid,
                                 slot.process.exitcode, " soon after starting" if quick else "")
                    if slot.quick_deaths >= _MAX_QUICK_DEATHS:
                        logger.error("a worker died %d times in a row within %.0f s of "
                                     "starting: stopping", slot.quick_deaths, _QUICK_DEATH_S)
                        status = 1
                        stopping.set()
                        break
                    # Back off (0.5, 1, 2, 4 s) so a failing start does not spin.
                    slot.restart_at_s = now_s + _BACKOFF_S * 2 ** max(0, slot.quick_deaths - 1)
                    continue
                replacement = start()
                replacement.quick_deaths = slot.quick_deaths
                slots[index] = replacement
    finally:
        for slot in slots:
            if slot.process.is_alive() and slot.process.pid is not None:
                slot.process.terminate()  # SIGTERM: the worker finishes what is in flight
        for slot in slots:
            slot.process.join(_STOP_TIMEOUT_S)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return status


@dataclass(slots=True)
class _Slot:
    """One worker position: its current process and how its recent starts went."""

    process: BaseProcess
    started_s: float
    #: Deaths in a row within ``_QUICK_DEATH_S`` of starting.
    quick_deaths: int = 0
    #: When a dead worker is started again (0: not scheduled yet).
    restart_at_s: float = 0.0
