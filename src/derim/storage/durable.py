"""The write path that never drops data silently: backend first, spool when it is unreachable.

While the spool holds anything, new batches join its tail so order is kept; a replay task moves the
spooled batches, oldest first, into the backend as soon as it answers again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from derim.errors import StorageUnavailableError
from derim.models.telemetry import DERTelemetry
from derim.storage.spool import Spool

log = logging.getLogger(__name__)


class WritableStore(Protocol):
    """The part of a ``Store`` the write path needs."""

    name: str

    async def write(self, records: Sequence[DERTelemetry]) -> None:
        """Store records; raise ``StorageUnavailableError`` while unreachable."""


@dataclass(slots=True)
class WriteCounters:
    """Records that reached the backend directly, through the spool, or went to the spool."""

    stored: int = 0
    spooled: int = 0
    replayed: int = 0


class DurableWriter:
    """Writes batches to a store, diverting to a durable spool while the store is unreachable."""

    def __init__(
        self, store: WritableStore, spool: Spool, *, retry_interval_s: float = 1.0
    ) -> None:
        self.store = store
        self.spool = spool
        self.counters = WriteCounters()
        self._retry_interval_s = retry_interval_s
        self._lock = asyncio.Lock()
        self._replayer: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start replaying whatever the spool holds (for example from before a restart)."""
        self._replayer = asyncio.create_task(self._replay_forever(), name="derim-spool-replay")

    async def stop(self) -> None:
        """Stop the replay task; the spool keeps what it holds."""
        if self._replayer is not None:
            self._replayer.cancel()
            await asyncio.gather(self._replayer, return_exceptions=True)
            self._replayer = None

    async def write(self, records: Sequence[DERTelemetry]) -> None:
        """Store ``records`` or spool them; raises only if both fail."""
        async with self._lock:
            if self.spool.depth == 0:
                try:
                    await self.store.write(records)
                except StorageUnavailableError as exc:
                    log.warning("storage unreachable, spooling: %s", exc)
                else:
                    self.counters.stored += len(records)
                    return
            await self.spool.append(records)
            self.counters.spooled += len(records)

    async def replay_once(self) -> bool:
        """Move the oldest spooled batch into the store; False if empty or the store is down."""
        async with self._lock:
            head = await self.spool.peek()
            if head is None:
                return False
            seq, records = head
            try:
                await self.store.write(records)
            except StorageUnavailableError:
                return False
            await self.spool.remove(seq, len(records))
            self.counters.replayed += len(records)
            if self.spool.depth == 0:
                log.info("spool drained into %s", self.store.name)
            return True

    async def _replay_forever(self) -> None:
        while True:
            if not await self.replay_once():
                await asyncio.sleep(self._retry_interval_s)
