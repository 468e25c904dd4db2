"""Helpers for tests of long-running async components: a recording sink and a bounded wait."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

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
