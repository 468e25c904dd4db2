"""Modbus RTU end to end over a pseudo-terminal pair (socat) with a pymodbus serial server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from modbus_server import RtuServer

from async_helpers import Sink, until
from derim.adapters.base import Backoff, ConnectionState, PollSettings
from derim.adapters.modbus import shipped_profile
from derim.adapters.modbus.adapter import ModbusAdapter
from derim.adapters.modbus.transport import ModbusTransport
from derim.models.telemetry import BatteryTelemetry
from derim.sim.server import SimUnit

UNIT = 5


@pytest.fixture
async def rtu_battery(serial_pair: tuple[str, str]) -> AsyncIterator[SimUnit]:
    unit = SimUnit(UNIT, 256)
    unit.set(0, [0, 1500, 805, 990, 200, 2, 50, 1, 0, 0, 0x4248, 0])
    server = await RtuServer(unit, serial_pair[0], baudrate=19200).start()
    yield unit
    await server.stop()


async def test_rtu_device_is_polled_and_decoded(
    rtu_battery: SimUnit, serial_pair: tuple[str, str]
) -> None:
    """The battery profile reads over RTU exactly as over TCP."""
    transport = ModbusTransport.rtu(serial_pair[1], baudrate=19200, timeout_s=1.0)
    settings = PollSettings(interval_s=0.05, timeout_s=2.0, backoff=Backoff(0.05, 0.1))
    adapter = ModbusAdapter(
        "rtu-bat", shipped_profile("generic_battery"), transport, UNIT, settings
    )
    sink = Sink()
    task = asyncio.create_task(adapter.run(sink))
    try:
        await until(lambda: len(sink.records) >= 2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await adapter.aclose()
    record = sink.records[-1]
    assert isinstance(record, BatteryTelemetry)
    assert record.power_kw == pytest.approx(1.5)
    assert record.soc_percent == pytest.approx(80.5)
    assert record.state == "charging"
    assert record.charge_rate_kw == pytest.approx(0.5)
    assert record.frequency_hz == pytest.approx(50.0)
    assert adapter.status.state is ConnectionState.ONLINE
    assert rtu_battery.reads, "requests really crossed the serial line"
