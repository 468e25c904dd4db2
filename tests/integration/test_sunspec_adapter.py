"""The SunSpec adapter against a real pymodbus server holding a SunSpec map built by pysunspec2."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from modbus_server import RegisterServer
from pymodbus.constants import ExcCodes

from async_helpers import Sink, until
from derim.adapters.base import Backoff, ConnectionState, PollSettings
from derim.adapters.modbus.transport import ModbusTransport
from derim.adapters.sunspec import build_image
from derim.adapters.sunspec.adapter import SunSpecAdapter
from derim.models.common import DeviceType
from derim.models.telemetry import SolarTelemetry

UNIT = 1
BASE = 40000
FAST = PollSettings(interval_s=0.02, timeout_s=1.0, backoff=Backoff(initial_s=0.05, max_s=0.1))
COMMON = {"Mn": "DERIM", "Md": "SIM-PV", "SN": "PV0001", "Vr": "1.0", "DA": 1}
INVERTER = {"W": 475, "W_SF": 1, "PhVphA": 2301, "PhVphB": 2299, "PhVphC": 2300, "V_SF": -1}
INVERTER |= {"Hz": 5001, "Hz_SF": -2, "WH": 1234567, "WH_SF": 0, "St": 4, "A": 2065, "A_SF": -2}


def image(inverter: Mapping[str, Any]) -> list[int]:
    return build_image([(1, COMMON), (103, dict(inverter))])


@pytest.fixture
async def inverter() -> AsyncIterator[RegisterServer]:
    server = await RegisterServer(unit_id=UNIT, size=BASE + 400).start()
    server.set(BASE, image(INVERTER))
    yield server
    await server.stop()


@pytest.fixture
async def adapter(inverter: RegisterServer) -> AsyncIterator[SunSpecAdapter]:
    transport = ModbusTransport.tcp("127.0.0.1", inverter.port, timeout_s=1.0)
    device = SunSpecAdapter("pv-1", DeviceType.SOLAR_PV, transport, UNIT, FAST)
    yield device
    await device.aclose()


async def test_discovers_the_map_and_decodes_scaled_values(adapter: SunSpecAdapter) -> None:
    """'SunS' at 40000 is found, the chain walked, and W=475 with W_SF=1 reads as 4.75 kW."""
    sink = Sink()
    task = asyncio.create_task(adapter.run(sink))
    await until(lambda: len(sink.records) >= 1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert [m.model_id for m in adapter.models] == [1, 103]
    record = sink.records[0]
    assert isinstance(record, SolarTelemetry)
    assert record.power_kw == pytest.approx(4.75)
    assert record.voltage_v == pytest.approx(230.0)
    assert record.frequency_hz == pytest.approx(50.01)
    assert record.energy_kwh == pytest.approx(1234.567)
    assert record.state == "on"


async def test_changed_scale_factor_applies_at_the_next_poll(
    adapter: SunSpecAdapter, inverter: RegisterServer
) -> None:
    """Scale factors are read with their values on every poll, never cached."""
    sink = Sink()
    task = asyncio.create_task(adapter.run(sink))
    await until(lambda: len(sink.records) >= 1)
    inverter.set(BASE, image(INVERTER | {"W_SF": 0}))
    await until(lambda: sink.records[-1].power_kw == pytest.approx(0.475))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_unmapped_candidate_bases_do_not_stop_discovery() -> None:
    """A device whose map sits at 50000 is found even though 40000 and 0 hold no marker."""
    server = await RegisterServer(unit_id=UNIT, size=50000 + 400).start()
    server.set(50000, image(INVERTER))
    transport = ModbusTransport.tcp("127.0.0.1", server.port, timeout_s=1.0)
    device = SunSpecAdapter("pv-2", DeviceType.SOLAR_PV, transport, UNIT, FAST)
    try:
        await transport.connect()
        models = await device.discover()
    finally:
        await device.aclose()
        await server.stop()
    assert models[0].address == 50002


async def test_exceptions_during_polls_degrade_then_recover(
    adapter: SunSpecAdapter, inverter: RegisterServer
) -> None:
    """An inverter answering with exceptions is degraded, not dead, and recovers by itself."""
    sink = Sink()
    task = asyncio.create_task(adapter.run(sink))
    await until(lambda: len(sink.records) >= 1)
    inverter.exception = ExcCodes.DEVICE_BUSY
    await until(lambda: adapter.status.state is not ConnectionState.ONLINE)
    inverter.exception = None
    count = len(sink.records)
    await until(lambda: len(sink.records) > count)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert adapter.status.state is ConnectionState.ONLINE


async def test_a_refused_model_flags_the_reading_and_degrades_the_device() -> None:
    """When one model read fails, the rest is still published, flagged questionable."""
    mppt = {"DCW_SF": 0, "DCV_SF": -1, "N": 2, "module": [{"ID": 1, "DCW": 2400, "DCV": 3805}]}
    mppt["module"] += [{"ID": 2, "DCW": 2500, "DCV": 3790}]
    server = await RegisterServer(unit_id=UNIT, size=BASE + 400).start()
    server.set(BASE, build_image([(1, COMMON), (103, INVERTER), (160, mppt)]))
    transport = ModbusTransport.tcp("127.0.0.1", server.port, timeout_s=1.0)
    device = SunSpecAdapter("pv-3", DeviceType.SOLAR_PV, transport, UNIT, FAST)
    sink = Sink()
    task = asyncio.create_task(device.run(sink))
    try:
        await until(lambda: len(sink.records) >= 1)
        assert sink.records[-1].quality == "good"
        assert getattr(sink.records[-1], "dc_power_kw", None) == pytest.approx(4.9)
        mppt_at = next(m.address for m in device.models if m.model_id == 160)
        server.unit.failing = [range(mppt_at, mppt_at + 1)]
        await until(lambda: sink.records[-1].quality == "questionable")
        assert sink.records[-1].power_kw == pytest.approx(4.75)
        assert device.status.state is ConnectionState.DEGRADED
        server.unit.failing = []
        await until(lambda: device.status.state is ConnectionState.ONLINE)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await device.aclose()
        await server.stop()
