"""Batching, bounded fan-out of canonical records from adapters to storage and subscribers.

Publishers append to one pending list; a single writer task takes everything pending (up to
``max_batch``) as one batch and writes it through the sink. Batches therefore grow with load and
shrink to one record when idle (group commit, no timer). Memory is bounded: ``publish`` waits while
``max_pending`` records are queued (backpressure). Subscribers get each publisher's records as they
are queued, not when storage has taken them, so a slow write delays nobody's live view; they have
bounded queues and lose their oldest batch, counted, rather than slow the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from derim.models.telemetry import DERTelemetry

log = logging.getLogger(__name__)

Sink = Callable[[Sequence[DERTelemetry]], Awaitable[None]]


@dataclass(slots=True)
class BusCounters:
    """Record counts since start. ``dropped`` counts records no sink accepted; it must stay 0."""

    received: int = 0
    written: int = 0
    dropped: int = 0
    batches: int = 0


class Subscription:
    """A bounded stream of batches for one consumer; the oldest batch goes when it is full."""

    def __init__(self, bus: IngestBus, max_batches: int) -> None:
        self._bus = bus
        self._batches: deque[Sequence[DERTelemetry]] = deque(maxlen=max_batches)
        self._ready = asyncio.Event()
        self.lost_batches = 0

    def offer(self, batch: Sequence[DERTelemetry]) -> None:
        """Queue a batch without waiting, evicting the oldest when full."""
        if len(self._batches) == self._batches.maxlen:
            self.lost_batches += 1
        self._batches.append(batch)
        self._ready.set()

    async def get(self) -> Sequence[DERTelemetry]:
        """The next batch, waiting for one if none is queued."""
        while not self._batches:
            self._ready.clear()
            await self._ready.wait()
        return self._batches.popleft()

    def drain(self) -> list[Sequence[DERTelemetry]]:
        """Every queued batch, without waiting."""
        batches = list(self._batches)
        self._batches.clear()
        return batches

    def close(self) -> None:
        """Stop receiving batches."""
        self._bus.unsubscribe(self)


class IngestBus:
    """Moves published records to a sink in batches and fans them out to subscribers."""

    def __init__(self, sink: Sink, *, max_batch: int = 10_000, max_pending: int = 100_000) -> None:
        self._sink = sink
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._pending: list[DERTelemetry] = []
        self._enqueued = 0
        self._waiters: deque[tuple[int, int, asyncio.Future[None]]] = deque()
        self._has_work = asyncio.Event()
        self._has_room = asyncio.Event()
        self._has_room.set()
        self._subscribers: list[Subscription] = []
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self.counters = BusCounters()

    @property
    def pending(self) -> int:
        """Records published but not yet handed to the sink."""
        return len(self._pending)

    def start(self) -> None:
        """Start the writer task."""
        self._closing = False
        self._writer = asyncio.create_task(self._write_forever(), name="derim-bus-writer")

    async def stop(self) -> None:
        """Write everything pending, then stop the writer."""
        self._closing = True
        self._has_work.set()
        if self._writer is not None:
            await self._writer
            self._writer = None

    async def publish(self, records: Sequence[DERTelemetry], *, wait: bool = False) -> None:
        """Queue records for storage; with ``wait``, return only once they are written.

        Waits while the bus is full. With ``wait``, raises the sink's error if they could not be
        written (nothing is lost silently: the error reaches the caller and ``dropped`` counts it).
        """
        if self._closing:
            raise RuntimeError("bus is stopping")
        while len(self._pending) >= self._max_pending:
            self._has_room.clear()
            await self._has_room.wait()
        self._pending.extend(records)
        for subscriber in self._subscribers:
            subscriber.offer(records)
        self._enqueued += len(records)
        self.counters.received += len(records)
        self._has_work.set()
        if wait and records:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append((self._enqueued - len(records), self._enqueued, done))
            await done

    def subscribe(self, max_batches: int = 256) -> Subscription:
        """A new subscription receiving every publisher's records from now on."""
        subscription = Subscription(self, max_batches)
        self._subscribers.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop delivering to ``subscription``."""
        with contextlib.suppress(ValueError):
            self._subscribers.remove(subscription)

    async def _write_forever(self) -> None:
        taken = 0
        while True:
            await self._has_work.wait()
            if not self._pending:
                if self._closing:
                    return
                self._has_work.clear()
                continue
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            taken += len(batch)
            self._has_room.set()
            error: BaseException | None = None
            try:
                await self._sink(batch)
            except Exception as exc:
                error = exc
                self.counters.dropped += len(batch)
                log.error("could not write %d records: %s", len(batch), exc)
            else:
                self.counters.written += len(batch)
            self.counters.batches += 1
            self._settle(taken, error)

    def _settle(self, taken: int, error: BaseException | None) -> None:
        """Answer the publishers whose records are now all handed to the sink.

        A publisher with any record in a failed batch gets the error, even if others succeed.
        """
        if error is not None:
            for start, _, done in self._waiters:
                if start >= taken:
                    break
                if not done.done():
                    done.set_exception(error)
        while self._waiters and self._waiters[0][1] <= taken:
            _, _, done = self._waiters.popleft()
            if not done.done():
                done.set_result(None)
