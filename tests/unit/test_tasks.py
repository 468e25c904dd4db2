"""``cancel_and_wait`` ends tasks, even one that swallows a cancellation."""

from __future__ import annotations

import asyncio

from derim.tasks import cancel_and_wait


async def test_a_task_that_swallows_one_cancellation_is_cancelled_again() -> None:
    """A loop that ignores the first CancelledError (as 3.11's wait_for can) still ends."""
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.cancelled()
    assert swallowed == 1


async def test_a_finished_or_missing_task_is_fine() -> None:
    """Nothing to cancel: no error, no wait."""

    async def done() -> None:
        return None

    task = asyncio.create_task(done())
    await task
    await cancel_and_wait(task)
    await cancel_and_wait(None)


async def test_clean_up_is_not_cut_short_when_the_caller_is_cancelled_again() -> None:
    """A task cancelled twice while its ``finally`` waits for a slow child still ends the
    child before it ends itself (and ends cancelled)."""
    child_ended = asyncio.Event()

    async def slow_child() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.2)
            child_ended.set()

    async def parent() -> None:
        child = asyncio.create_task(slow_child())
        try:
            await asyncio.sleep(3600)
        finally:
            await cancel_and_wait(child)

    task = asyncio.create_task(parent())
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert child_ended.is_set()
    assert task.cancelled()
