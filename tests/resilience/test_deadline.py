"""The attempts' deadline behaves as ``asyncio.timeout``: each scenario runs under both, on
asyncio's loop and on uvloop's, and must end the same way (the exception, whether the task is
left with a cancellation pending, what the block saw)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from kvgate.resilience.deadline import Deadline


async def _under(kind: str, delay_s: float, body: Callable[[], Awaitable[Any]]) -> Any:
    if kind == "asyncio.timeout":
        async with asyncio.timeout(delay_s):
            return await body()
    with Deadline(delay_s):
        return await body()


async def _outcome(kind: str, scenario: str) -> tuple[str, int, Any]:
    """How ``scenario`` ends under ``kind``: (exception name or result, the task's pending
    cancellations afterwards, what the block returned or saw)."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    result: Any = None
    try:
        if scenario == "in time":
            result = await _under(kind, 1.0, lambda: asyncio.sleep(0.001, "done"))
        elif scenario == "late":
            result = await _under(kind, 0.01, lambda: asyncio.sleep(5, "late"))
        elif scenario == "already past":
            result = await _under(kind, -1.0, lambda: asyncio.sleep(5, "late"))
        elif scenario == "zero, nothing awaited":
            result = await _under(kind, 0.0, lambda: asyncio.sleep(0, "instant"))
        elif scenario == "cancelled from outside":
            loop.call_later(0.01, task.cancel)
            result = await _under(kind, 5.0, lambda: asyncio.sleep(5, "late"))
        elif scenario == "outside cancel after the deadline fired":
            # The deadline fires, then someone else cancels before the task resumes: the
            # outside cancellation wins (CancelledError, not TimeoutError).
            loop.call_later(0.01, lambda: loop.call_soon(task.cancel))
            result = await _under(kind, 0.01, lambda: asyncio.sleep(5, "late"))
        elif scenario == "error inside":
            async def fail() -> None:
                await asyncio.sleep(0)
                raise ValueError("inside")
            result = await _under(kind, 1.0, fail)
        elif scenario == "nested, inner expires":
            async def inner() -> Any:
                try:
                    return await _under(kind, 0.01, lambda: asyncio.sleep(5))
                except TimeoutError:
                    return "inner timed out"
            result = await _under(kind, 5.0, inner)
        elif scenario == "the block swallows the cancellation":
            async def swallow() -> str:
                try:
                    await asyncio.sleep(5)
                except asyncio.CancelledError:
                    return "swallowed"
                return "slept"
            result = await _under(kind, 0.01, swallow)
        else:
            raise AssertionError(scenario)
    except BaseException as error:  # the outcome is what is compared
        pending = task.uncancel() if isinstance(error, asyncio.CancelledError) else 0
        return type(error).__name__, pending + task.cancelling(), None
    # Nothing pending may be left for a later await to trip over.
    await asyncio.sleep(0.02)
    return "ok", task.cancelling(), result


SCENARIOS = ["in time", "late", "already past", "zero, nothing awaited",
             "cancelled from outside", "outside cancel after the deadline fired",
             "error inside", "nested, inner expires", "the block swallows the cancellation"]


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_ends_as_asyncio_timeout_does(scenario: str, loop_kind: str) -> None:
    run = asyncio.run if loop_kind == "asyncio" else uvloop.run
    expected = run(_outcome("asyncio.timeout", scenario))
    got = run(_outcome("deadline", scenario))
    assert got == expected
    # And the scenarios mean what they say.
    if scenario in ("late", "already past"):
        assert got[0] == "TimeoutError"
    if scenario in ("cancelled from outside", "outside cancel after the deadline fired"):
        assert got[0] == "CancelledError"
    if scenario == "in time":
        assert got == ("ok", 0, "done")
    if scenario == "nested, inner expires":
        assert got == ("ok", 0, "inner timed out")


def test_a_deadline_needs_a_task() -> None:
    with pytest.raises(RuntimeError):
        Deadline(1.0)


def test_the_timer_is_gone_once_the_block_ends() -> None:
    async def main() -> bool:
        deadline = Deadline(0.01)
        with deadline:
            pass
        await asyncio.sleep(0.03)  # were the timer still armed, this task would be cancelled
        return deadline.expired

    assert asyncio.run(main()) is False
