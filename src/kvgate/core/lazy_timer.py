"""A timeout whose deadline moves on every request: moving it costs a float, not a loop timer.

A keep-alive connection re-arms its timeouts several times per request (the server: the head
timeout when a request begins, off when its head is in, the keep-alive timeout after the
answer; the upstream pool: the read timeout at each write and each read). Cancelling one loop
timer and creating another each time cost about 3 us a pair on uvloop on this project's slower
host (5.5 on asyncio's loop), several times per request. Here arming only records the new
deadline; a loop timer exists when one is needed, and one that fires before the current
deadline (it was set for an earlier one) re-arms itself for it. So the callback runs at the
deadline, as with a fresh timer each time, and a connection busy with back-to-back requests
creates a loop timer about once per timeout period instead of once per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

#: A loop timer may run this early (uvloop's timers count whole milliseconds): a deadline this
#: close is due, rather than re-armed for a moment (which would spin the loop until the clock
#: ticks over).
_EARLY_S = 0.001


class LazyTimer:
    """Runs ``callback(*args)`` at the last :meth:`arm`'s deadline unless disarmed first."""

    __slots__ = ("_args", "_callback", "_deadline_s", "_handle", "_handle_at_s", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[..., None]) -> None:
        self._loop = loop
        self._callback = callback
        self._args: tuple[Any, ...] = ()
        #: When the callback is due (loop time); None: disarmed.
        self._deadline_s: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._handle_at_s = 0.0

    @property
    def armed(self) -> bool:
        return self._deadline_s is not None

    def arm(self, delay_s: float, *args: Any) -> None:
        """Run the callback with ``args`` ``delay_s`` from now (replacing any earlier arm)."""
        when_s = self._loop.time() + delay_s
        self._deadline_s = when_s
        self._args = args
        handle = self._handle
        if handle is None or self._handle_at_s > when_s:
            if handle is not None:
                handle.cancel()
            self._handle = self._loop.call_at(when_s, self._fire)
            self._handle_at_s = when_s

    def disarm(self) -> None:
        """Do not run the callback (the loop timer, if any, expires without effect)."""
        self._deadline_s = None

    def close(self) -> None:
        """Disarm and drop the loop timer (the owner is going away)."""
        self._deadline_s = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        deadline_s = self._deadline_s
        if deadline_s is None:
            return
        if deadline_s - self._loop.time() > _EARLY_S:  # re-armed since this timer was set
            self._handle = self._loop.call_at(deadline_s, self._fire)
            self._handle_at_s = deadline_s
            return
        self._deadline_s = None
        args, self._args = self._args, ()
        self._callback(*args)
