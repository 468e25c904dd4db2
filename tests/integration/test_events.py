"""Events from the real sources: a Modbus device going offline and back, an OCPP charger
connecting and leaving, commands' results and anomalies found by a scan, all on the event hub
of ``running_services``."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from modbus_server import RegisterServer
from ocpp_helpers import charger
from pymodbus.constants import ExcCodes

from async_helpers import until
from derim.adapters.base import ConnectionState, DeviceStatus
from derim.bus.events import Event, EventSubscription, EventType
from derim.config import load_settings
from derim.errors import DeviceRejected
from derim.models.command import CommandRequest, CommandStatus, CommandType
from derim.models.common import DeviceType
from derim.models.device import DERDevice, ModbusConnection
from derim.models.telemetry import DERTelemetry
from derim.services import Services, running_services

UNIT = 2
DEVICE = "bat"
T0 = datetime(2024, 3, 4, tzinfo=UTC)


def battery_image(server: RegisterServer) -> None:
    """Sane registers of the shipped generic battery profile (as in test_modbus_adapter)."""
    high, low = struct.unpack(">HH", struct.pack(">f", 50.0))
    server.set(0, [0, 2500, 505, 0xFFFF, 251, 3, 500, 1, 0, 0])
    server.set(10, [high, low])


@pytest.fixture
async def battery() -> AsyncIterator[RegisterServer]:
    server = await RegisterServer(unit_id=UNIT, size=512).start()
    battery_image(server)
    yield server
    await server.stop()


@pytest.fixture
async def services(tmp_path: Path, battery: RegisterServer) -> AsyncIterator[Services]:
    """The core with the battery polled every 0.2 s and the OCPP central on a free port."""
    device = DERDevice(
        id=DEVICE,
        device_type=DeviceType.BATTERY,
        rated_power_kw=4.0,
        connection=ModbusConnection(
            protocol="modbus",
            host="127.0.0.1",
            port=battery.port,
            unit_id=UNIT,
            profile="generic_battery",
            poll_interval_s=0.2,
            timeout_s=1.0,
        ),
    )
    settings = load_settings(data_dir=tmp_path, devices=[device], control_wait_s=5.0)
    async with running_services(settings) as running:
        yield running


@pytest.fixture
async def events(services: Services) -> AsyncIterator[EventSubscription]:
    subscription = services.events.subscribe()
    yield subscription
    subscription.close()


async def online(services: Services) -> DeviceStatus:
    """The battery's status once it is online (its event was published during the start,
    before any test could subscribe)."""
    status = services.adapters.status(DEVICE)
    assert status is not None
    await until(lambda: status.state is ConnectionState.ONLINE)
    return status


async def next_event(
    events: EventSubscription, device_id: str, *types: EventType, timeout_s: float = 10.0
) -> Event:
    """The next event about ``device_id`` of one of ``types`` (others are skipped)."""
    async with asyncio.timeout(timeout_s):
        while True:
            event = await events.get()
            if event.device_id == device_id and event.type in types:
                return event


async def test_a_modbus_device_going_offline_and_back_is_published_once_each_way(
    services: Services, battery: RegisterServer, events: EventSubscription
) -> None:
    """Offline (with the error and last_seen) when its server stops, online again when it
    returns: one event per change, however many polls fail."""
    states = (EventType.DEVICE_ONLINE, EventType.DEVICE_DEGRADED, EventType.DEVICE_OFFLINE)
    status = await online(services)
    await battery.stop()
    offline = await next_event(events, DEVICE, *states)
    assert offline.type is EventType.DEVICE_OFFLINE
    assert offline.data["previous"] == "online"
    assert offline.data["reason"]
    assert offline.data["last_seen"] is not None
    await until(lambda: status.consecutive_failures >= 2)
    await battery.start()
    battery_image(battery)
    back = await next_event(events, DEVICE, *states)
    assert back.type is EventType.DEVICE_ONLINE
    assert back.data["previous"] == "offline"
    assert back.data["reason"] is None
    assert datetime.fromisoformat(back.data["last_seen"]) > datetime.fromisoformat(
        offline.data["last_seen"]
    )


async def test_an_ocpp_charger_connecting_and_leaving_is_published(
    services: Services, events: EventSubscription
) -> None:
    """A charger's connection makes it online; closing it makes it offline, "disconnected"."""
    async with charger(services, "cp-events"):
        online = await next_event(events, "cp-events", EventType.DEVICE_ONLINE)
        assert online.data["previous"] == "connecting"
    offline = await next_event(events, "cp-events", EventType.DEVICE_OFFLINE)
    assert offline.data["previous"] == "online"
    assert offline.data["reason"] == "disconnected"


async def test_command_results_are_published_when_final(
    services: Services, battery: RegisterServer, events: EventSubscription
) -> None:
    """An acknowledged setpoint, a setpoint the device refuses and an expired command each
    publish their result; a dry run publishes nothing."""
    await online(services)
    controller = services.controller
    setpoint = CommandRequest(command=CommandType.SET_ACTIVE_POWER, value=-2.5, source="ems")
    await controller.submit(DEVICE, setpoint.model_copy(update={"dry_run": True}))
    done = await controller.submit(DEVICE, setpoint)
    assert done.status is CommandStatus.ACKNOWLEDGED
    acknowledged = await next_event(events, DEVICE, EventType.COMMAND_RESULT)
    assert acknowledged.data["command_id"] == str(done.command_id)
    assert acknowledged.data["command"] == "set_active_power"
    assert acknowledged.data["status"] == "acknowledged"
    assert acknowledged.data["source"] == "ems"
    assert acknowledged.data["message"] == done.message

    battery.exception = ExcCodes.ILLEGAL_VALUE
    with pytest.raises(DeviceRejected):
        await controller.submit(DEVICE, setpoint)
    rejected = await next_event(events, DEVICE, EventType.COMMAND_RESULT)
    assert rejected.data["status"] == "rejected"
    assert rejected.data["message"]

    past = datetime.now(UTC) - timedelta(minutes=1)
    expired = await controller.submit(DEVICE, setpoint.model_copy(update={"expires_at": past}))
    event = await next_event(events, DEVICE, EventType.COMMAND_RESULT)
    assert event.data["command_id"] == str(expired.command_id)
    assert event.data["status"] == "expired"


async def test_anomalies_are_published_once_when_first_stored(
    services: Services, events: EventSubscription
) -> None:
    """A scan publishes each anomaly it stores (kind, field, times, severity, reason); scanning
    the same readings again publishes nothing."""
    await services.registry.upsert(
        DERDevice(id="meter", device_type=DeviceType.METER, rated_power_kw=10.0)
    )
    values = [1.0 + (i % 7) * 0.3 for i in range(96)]
    values[40:60] = [2.5] * 20  # five hours on one reading: a stuck meter
    await services.ingest(
        [
            DERTelemetry(device_id="meter", timestamp=T0 + timedelta(minutes=15 * i), power_kw=v)
            for i, v in enumerate(values)
        ]
    )
    end = T0 + timedelta(days=1)
    found = await services.twin.anomalies("meter", "power_kw", T0, end)
    assert found
    published = [await next_event(events, "meter", EventType.ANOMALY) for _ in found]
    assert [e.data for e in published] == [a.model_dump(mode="json") for a in found]
    assert {"kind", "field", "start", "end", "severity", "reason"} <= published[0].data.keys()
    assert await services.twin.anomalies("meter", "power_kw", T0, end) == found
    with pytest.raises(TimeoutError):  # a scan's events are queued before it returns
        await next_event(events, "meter", EventType.ANOMALY, timeout_s=0.1)
