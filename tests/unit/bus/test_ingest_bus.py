"""The ingest bus: batching, backpressure, fan-out, failures surfaced."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from derim.bus import IngestBus
from derim.errors import StorageError
from derim.models import DERTelemetry

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def readings(n: int, start: int = 0) -> list[DERTelemetry]:
    return [
        DERTelemetry(device_id="d", timestamp=T0 + timedelta(seconds=start + i)) for i in range(n)
    ]


class RecordingSink:
    """A sink that keeps batches and can be paused or made to fail."""

    def __init__(self) -> None:
        self.batches: list[list[DERTelemetry]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_next = False

    async def __call__(self, batch: Sequence[DERTelemetry]) -> None:
        await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise StorageError("disk on fire")
        self.batches.append(list(batch))


async def test_records_reach_the_sink_in_order_in_bounded_batches() -> None:
    """Everything published is written once, in order, in batches of at most max_batch."""
    sink = RecordingSink()
    bus = IngestBus(sink, max_batch=100, max_pending=10_000)
    bus.start()
    sent = readings(1000)
    for k in range(0, 1000, 37):
        await bus.publish(sent[k : k + 37])
    await bus.stop()
    written = [r for batch in sink.batches for r in batch]
    assert written == sent
    assert max(len(b) for b in sink.batches) <= 100
    assert bus.counters.received == bus.counters.written == 1000
    assert bus.counters.dropped == 0


async def test_publish_waits_when_the_bus_is_full() -> None:
    """Backpressure: publishers wait instead of growing the queue without bound."""
    sink = RecordingSink()
    sink.gate.clear()
    bus = IngestBus(sink, max_batch=10, max_pending=50)
    bus.start()
    await bus.publish(readings(10))
    await asyncio.sleep(0.01)
    await bus.publish(readings(50, start=10))
    blocked = asyncio.create_task(bus.publish(readings(5, start=60)))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    assert bus.pending <= 50
    sink.gate.set()
    await asyncio.wait_for(blocked, timeout=2)
    await bus.stop()
    assert bus.counters.written == 65


async def test_wait_returns_after_the_write() -> None:
    """publish(wait=True) returns only once its records are written."""
    sink = RecordingSink()
    sink.gate.clear()
    bus = IngestBus(sink)
    bus.start()
    waiting = asyncio.create_task(bus.publish(readings(3), wait=True))
    await asyncio.sleep(0.02)
    assert not waiting.done()
    sink.gate.set()
    await asyncio.wait_for(waiting, timeout=2)
    assert len(sink.batches[0]) == 3
    await bus.stop()


async def test_failed_writes_reach_the_publisher_and_are_counted() -> None:
    """A sink failure is raised to waiting publishers and counted as dropped, never silent."""
    sink = RecordingSink()
    sink.fail_next = True
    bus = IngestBus(sink)
    bus.start()
    with pytest.raises(StorageError, match="disk on fire"):
        await bus.publish(readings(4), wait=True)
    assert bus.counters.dropped == 4
    await bus.publish(readings(2, start=10), wait=True)
    assert bus.counters.written == 2
    await bus.stop()


async def test_slow_subscriber_loses_oldest_batches_without_slowing_the_bus() -> None:
    """A subscriber that never reads drops its oldest batches (counted); storage gets all."""
    sink = RecordingSink()
    bus = IngestBus(sink, max_batch=1)
    slow = bus.subscribe(max_batches=3)
    fast = bus.subscribe(max_batches=100)
    bus.start()
    for i in range(10):
        await bus.publish(readings(1, start=i), wait=True)
    assert slow.lost_batches == 7
    kept = [(await slow.get())[0].timestamp for _ in range(3)]
    assert kept == [T0 + timedelta(seconds=s) for s in (7, 8, 9)]
    assert [(await fast.get())[0].timestamp for _ in range(10)][-1] == T0 + timedelta(seconds=9)
    slow.close()
    fast.close()
    await bus.stop()
    assert bus.counters.written == 10


async def test_publishing_after_stop_is_refused() -> None:
    """A stopped bus refuses records rather than accepting and losing them."""
    bus = IngestBus(RecordingSink())
    bus.start()
    await bus.stop()
    with pytest.raises(RuntimeError):
        await bus.publish(readings(1))
