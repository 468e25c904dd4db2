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
