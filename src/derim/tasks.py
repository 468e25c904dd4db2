"""Small helpers for the asyncio tasks the services and simulators run in the background."""

from __future__ import annotations

import asyncio
from typing import Any

RECANCEL_AFTER_S = 0.5
"""How long a cancelled task gets to end before it is cancelled again."""


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has ended, whatever it ended with.

    Python 3.11's ``asyncio.wait_for`` (used inside libraries such as ``ocpp``) can swallow a
    cancellation that arrives just as what it awaits completes, so a task is cancelled again
    if it is still running ``RECANCEL_AFTER_S`` later, instead of being waited on forever.
    """
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_AFTER_S)
    await asyncio.gather(task, return_exceptions=True)
