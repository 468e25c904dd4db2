"""Helpers for tests of long-running async components: a recording sink and bounded waits."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from derim.models.telemetry import DERTelemetry


class Sink:
    """Collects what an adapter publishes."""

    def __init__(self) -> None:
        self.records: list[DERTelemetry] = []

    async def __call__(self, records: Sequence[DERTelemetry]) -> None:
        self.records.extend(records)

    def count(self, device_id: str) -> int:
        """Readings published for one device."""
        return sum(1 for r in self.records if r.device_id == device_id)


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait until ``condition()`` holds; fail the test after ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - conditions read plain attributes of fakes
            await asyncio.sleep(0.005)


async def until_async(check: Callable[[], Awaitable[bool]], timeout_s: float = 15.0) -> None:
    """Wait until ``await check()`` holds, such as a state seen over HTTP; fail after
    ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while not await check():  # noqa: ASYNC110 - polling the checked service is the point
            await asyncio.sleep(0.05)
