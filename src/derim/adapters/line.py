"""One task polls every device that shares a connection (a Modbus gateway, an RTU serial line).

The connection carries one request at a time anyway, so a task per device would only queue for
it; one task taking the devices in order of their due time costs a fraction of that and keeps
each device on its own schedule. Devices on different connections never wait for each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Sequence

from derim.adapters.base import PollingAdapter, Publish
from derim.models.telemetry import DERTelemetry

log = logging.getLogger(__name__)


class LinePoller:
    """Polls the devices of one connection, each when it is due; devices join and leave live."""

    def __init__(self, key: str, publish: Publish) -> None:
        self.key = key
        self._publish = publish
        self._members: set[PollingAdapter] = set()
        self._due: list[tuple[float, int, PollingAdapter]] = []
        self._order = itertools.count()
        """Tie-breaker: devices due at the same time are polled in the order they were queued."""
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def empty(self) -> bool:
        """Whether no device is left on the connection."""
        return not self._members

    def add(self, adapter: PollingAdapter) -> None:
        """Start polling ``adapter`` now, then on its own schedule."""
        self._members.add(adapter)
        loop = asyncio.get_running_loop()
        heapq.heappush(self._due, (loop.time(), next(self._order), adapter))
        self._changed.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"derim-line {self.key}")

    async def remove(self, adapter: PollingAdapter) -> None:
        """Stop polling ``adapter``; a poll of it in progress finishes but publishes nothing."""
        self._members.discard(adapter)
        if not self._members and self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._members:
            if not self._due:
                self._changed.clear()
                await self._changed.wait()
                continue
            due, _, adapter = self._due[0]
            if adapter not in self._members:
                heapq.heappop(self._due)
                continue
            wait = due - loop.time()
            if wait > 0:
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._changed.wait()
                continue
            heapq.heappop(self._due)
            next_due = await self._poll(adapter)
            if adapter in self._members:
                heapq.heappush(self._due, (next_due, next(self._order), adapter))

    async def _poll(self, adapter: PollingAdapter) -> float:
        """One poll of ``adapter``; a bug in it is logged and the device retried after the
        longest backoff, so it cannot stop the other devices on the connection."""

        async def publish(records: Sequence[DERTelemetry]) -> None:
            if adapter in self._members:
                await self._publish(records)

        try:
            return await adapter.poll(publish)
        except Exception:
            log.exception("device %s: poll failed unexpectedly", adapter.device_id)
            return asyncio.get_running_loop().time() + adapter.settings.backoff.max_s
