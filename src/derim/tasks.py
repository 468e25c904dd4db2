"""Small helpers for the asyncio tasks the services and simulators run in the background."""

from __future__ import annotations

import asyncio
from typing import Any

RECANCEL_AFTER_S = 0.5
"""How long a cancelled task gets to end before it is cancelled again."""


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has ended, whatever it ended with.

    Python 3.11's ``asyncio.wait_for`` (used inside libraries such as ``ocpp``) can swallow a
    cancellation that arrives just as what it awaits completes, so the task is cancelled again
    every ``RECANCEL_AFTER_S`` until it ends. The wait itself is not cut short when the caller
    is cancelled meanwhile (clean-up in a ``finally`` block finishes); that cancellation is
    raised once the task has ended.
    """
    if task is None:
        return
    loop = asyncio.get_running_loop()
    interrupted = False
    while not task.done():
        task.cancel()
        deadline = loop.time() + RECANCEL_AFTER_S
        while not task.done() and (remaining := deadline - loop.time()) > 0:
            try:
                await asyncio.wait({task}, timeout=remaining)
            except asyncio.CancelledError:
                interrupted = True
    await asyncio.gather(task, return_exceptions=True)
    if interrupted:
        raise asyncio.CancelledError
