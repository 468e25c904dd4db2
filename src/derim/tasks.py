"""Small helpers for the asyncio tasks the services and simulators run in the background."""

from __future__ import annotations

import asyncio


async def cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has ended, whatever it ended with."""
    if task is None:
        return
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
