"""An attempt's deadline: ``asyncio.timeout``'s behaviour at less than half its cost.

Every upstream attempt runs under the request's deadline. ``asyncio.timeout`` (Python 3.11)
is an async context manager with a state machine around one loop timer: about 11 us per
attempt on this project's slower host, against about 7 for this one (uvloop; the timer itself
is about 3 of them). The semantics are the same: at the deadline the task is cancelled, and
the block raises ``TimeoutError`` if that cancellation is the one that ended it; a
cancellation from elsewhere (the client left) passes through untouched. It is a plain
``with`` block: entering and leaving need no coroutine.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class Deadline:
    """``with Deadline(seconds): await ...`` in a task; ``TimeoutError`` when time runs out."""

    __slots__ = ("_cancelling", "_handle", "_task", "expired")

    def __init__(self, delay_s: float) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline needs a running task")
        loop = task.get_loop()
        self._task = task
        self._cancelling = task.cancelling()
        #: The deadline passed and the task was cancelled for it.
        self.expired = False
        # As asyncio.timeout: a deadline already past fires on the loop's next step.
        self._handle: asyncio.Handle = (loop.call_soon(self._expire) if delay_s <= 0
                                        else loop.call_at(loop.time() + delay_s, self._expire))

    def _expire(self) -> None:
        self.expired = True
        self._task.cancel()

    def __enter__(self) -> Deadline:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._handle.cancel()
        # The cancellation is ours only if nobody else asked for one since we started.
        if (self.expired and self._task.uncancel() <= self._cancelling
                and exc_type is asyncio.CancelledError):
            raise TimeoutError from exc
