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
        self._members: dict[PollingAdapter, int] = {}
        """Devices polled, each with the ticket of its one live entry in ``_due``."""
        self._due: list[tuple[float, int, PollingAdapter]] = []
        """(due loop time, ticket, device); entries whose ticket is not the device's are stale."""
        self._tickets = itertools.count()
        """Also the tie-breaker: devices due at once are polled in the order they were queued."""
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def empty(self) -> bool:
        """Whether no device is left on the connection."""
        return not self._members

    def add(self, adapter: PollingAdapter) -> None:
        """Start polling ``adapter`` now, then on its own schedule."""
        self._queue(adapter, asyncio.get_running_loop().time())
        self._changed.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"derim-line {self.key}")

    async def remove(self, adapter: PollingAdapter) -> None:
        """Stop polling ``adapter``; a poll of it in progress publishes nothing (and is cut off
        when it was the last device, with the task)."""
        self._members.pop(adapter, None)
        task = self._task
        if self._members or task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if self._task is task:
            self._task = None
        if self._members and self._task is None:  # a device joined while the task wound down
            self._task = asyncio.create_task(self._run(), name=f"derim-line {self.key}")

    def _queue(self, adapter: PollingAdapter, due: float) -> None:
        """Make ``(due, adapter)`` the device's one live entry."""
        ticket = next(self._tickets)
        self._members[adapter] = ticket
        heapq.heappush(self._due, (due, ticket, adapter))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._members:
            if not self._due:
                self._changed.clear()
                await self._changed.wait()
                continue
            due, ticket, adapter = self._due[0]
            if self._members.get(adapter) != ticket:
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
            if self._members.get(adapter) == ticket:
                self._queue(adapter, next_due)

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
