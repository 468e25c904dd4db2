"""The stream hub with a real ingest bus and clients that read or do not: filters apply, a
client that falls behind loses its oldest messages and gets one gap notice, and neither the bus
nor the other clients wait for it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from async_helpers import until
from derim.api.streaming import StreamFilter, StreamHub
from derim.bus import IngestBus
from derim.bus.events import Event, EventHub, EventType
from derim.errors import ConflictError
from derim.models.common import DeviceType
from derim.models.device import DERDevice
from derim.models.telemetry import DERTelemetry, MeterTelemetry
from derim.storage.registry import DeviceRegistry


def reading(device_id: str, second: int) -> MeterTelemetry:
    """A meter reading ``second`` seconds after a fixed start."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return MeterTelemetry(
        device_id=device_id, timestamp=start + timedelta(seconds=second), power_kw=1.0
    )


async def test_a_client_that_does_not_read_loses_the_oldest_and_is_told(tmp_path: Path) -> None:
    """With a buffer of 3, a client that reads nothing while 20 batches pass keeps the newest
    3 and first gets a gap of 17 (plus the hello it never read); a reading client gets all 20;
    every record reaches the sink."""
    stored: list[DERTelemetry] = []

    async def sink(records: Sequence[DERTelemetry]) -> None:
        stored.extend(records)

    registry = DeviceRegistry(tmp_path / "registry.db")
    await registry.open()
    bus = IngestBus(sink)
    bus.start()
    hub = StreamHub(bus, EventHub(), registry, buffer=3, max_clients=2)
    hub.start()
    try:
        slow = hub.connect(StreamFilter())
        fast = hub.connect(StreamFilter(devices=frozenset({"m1"})))
        with pytest.raises(ConflictError):
            hub.connect(StreamFilter())
        assert json.loads(await fast.next())["type"] == "hello"
        seen = 0
        for second in range(20):
            await bus.publish([reading("m1", second), reading("m2", second)], wait=True)
            message = json.loads(await fast.next())
            assert {r["device_id"] for r in message["records"]} == {"m1"}
            seen += len(message["records"])
        assert seen == 20
        assert len(stored) == 40
        gap = json.loads(await slow.next())
        assert gap == {"type": "gap", "lost": 18}
        kept = [json.loads(await slow.next()) for _ in range(3)]
        assert [m["records"][0]["timestamp"][-9:] for m in kept] == [
            "00:00:17Z",
            "00:00:18Z",
            "00:00:19Z",
        ]
        hub.disconnect(slow)
        assert hub.counters.dropped == 0
    finally:
        await hub.aclose()
        await bus.stop()
        await registry.close()


async def test_events_follow_the_device_and_event_filters(tmp_path: Path) -> None:
    """An event reaches clients whose filter takes its device (by id, type or group), not those
    that asked for telemetry only."""
    registry = DeviceRegistry(tmp_path / "registry.db")
    await registry.open()
    await registry.add(DERDevice(id="bat", device_type=DeviceType.BATTERY, groups=["site"]))
    events = EventHub()

    async def sink(records: Sequence[DERTelemetry]) -> None:
        return None

    bus = IngestBus(sink)
    bus.start()
    hub = StreamHub(bus, events, registry, buffer=10, max_clients=10)
    hub.start()
    try:
        by_group = hub.connect(StreamFilter(groups=frozenset({"site"})))
        by_type = hub.connect(StreamFilter(device_types=frozenset({"solar_pv"})))
        no_events = hub.connect(StreamFilter(events=False))
        for client in (by_group, by_type, no_events):
            await client.next()
        events.publish(
            Event(type=EventType.DEVICE_OFFLINE, device_id="bat", data={"was": "online"})
        )
        message = json.loads(await by_group.next())
        assert message["event"] == "device_offline"
        assert message["data"] == {"was": "online"}
        await until(lambda: hub.counters.messages >= 1)
        assert not by_type.buffer
        assert not no_events.buffer
    finally:
        await hub.aclose()
        await bus.stop()
        await registry.close()
