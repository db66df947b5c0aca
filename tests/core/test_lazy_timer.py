"""The connections' lazy timeout: the callback runs at the last arm's deadline (never before
it, by more than the loop timers' own millisecond), never once disarmed, and moving the
deadline later creates no loop timer; on asyncio's loop and on uvloop's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from kvgate.core.lazy_timer import LazyTimer

LOOPS: dict[str, Callable[[Coroutine[Any, Any, Any]], Any]] = {
    "asyncio": asyncio.run, "uvloop": uvloop.run}


class _Counting:
    """Counts the loop timers created (call_at), around a real loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.created = 0

    def time(self) -> float:
        return self.loop.time()

    def call_at(self, when: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        self.created += 1
        return self.loop.call_at(when, callback)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_fires_once_at_the_last_deadline_with_its_arguments(loop_kind: str) -> None:
    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        fired: list[tuple[str, float]] = []
        timer = LazyTimer(loop, lambda what: fired.append((what, loop.time())))
        started = loop.time()
        timer.arm(0.02, "first")
        await asyncio.sleep(0.01)
        timer.arm(0.05, "second")  # later: the first loop timer re-arms itself for it
        deadline = loop.time() + 0.05
        await asyncio.sleep(0.12)
        assert [what for what, _ in fired] == ["second"]
        assert fired[0][1] >= deadline - 0.0011
        assert fired[0][1] - started < 0.11
        assert not timer.armed
        return fired

    LOOPS[loop_kind](main())


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_an_earlier_deadline_fires_early_enough(loop_kind: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        timer = LazyTimer(loop, lambda: fired.append(loop.time()))
        timer.arm(5.0)
        timer.arm(0.02)  # earlier than the pending loop timer: a new one
        deadline = loop.time() + 0.02
        await asyncio.sleep(0.06)
        assert len(fired) == 1 and deadline - 0.0011 <= fired[0] < deadline + 0.04
        timer.close()

    LOOPS[loop_kind](main())


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_disarmed_and_closed_timers_do_not_fire(loop_kind: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fired: list[str] = []
        disarmed = LazyTimer(loop, lambda: fired.append("disarmed"))
        disarmed.arm(0.01)
        disarmed.disarm()
        closed = LazyTimer(loop, lambda: fired.append("closed"))
        closed.arm(0.01)
        closed.close()
        await asyncio.sleep(0.04)
        assert fired == []
        disarmed.arm(0.01)  # usable again after either
        closed.arm(0.01)
        await asyncio.sleep(0.04)
        assert sorted(fired) == ["closed", "disarmed"]

    LOOPS[loop_kind](main())


def test_moving_the_deadline_later_creates_no_loop_timer() -> None:
    async def main() -> int:
        counting = _Counting(asyncio.get_running_loop())
        timer = LazyTimer(counting, lambda: None)  # type: ignore[arg-type]
        for _ in range(1000):  # a keep-alive connection's requests, back to back
            timer.arm(10.0)
            timer.disarm()
            timer.arm(5.0 + 1e-3)
        timer.close()
        return counting.created

    # The first arm makes one; each later deadline is later than the pending timer.
    assert asyncio.run(main()) <= 2
