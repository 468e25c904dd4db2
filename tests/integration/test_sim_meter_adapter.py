"""The simulated plain-Modbus meter, polled over TCP by the adapter the manager builds for it."""

from __future__ import annotations

import pytest

from async_helpers import Sink, until
from derim.adapters.base import ConnectionState
from derim.adapters.manager import AdapterManager
from derim.adapters.modbus.adapter import ModbusAdapter
from derim.models.common import DeviceType, Quality
from derim.models.device import DERDevice, ModbusConnection
from derim.models.telemetry import MeterTelemetry
from derim.sim.meter import IMAGE_SIZE, MeterValues, meter_image
from derim.sim.server import SimServer, SimUnit

UNIT = 4
IMPORTING = MeterValues(
    power_kw=-3.42,
    reactive_power_kvar=0.85,
    voltage_v=231.7,
    current_a=15.06,
    frequency_hz=49.97,
    power_factor=-0.97,
    energy_import_kwh=4_500_000.25,
    energy_export_kwh=1_234.5,
    serial_number="SIM-METER-0001",
)


def assert_reading(record: MeterTelemetry, values: MeterValues) -> None:
    """The record carries ``values`` within their register resolution, as a good reading."""
    assert record.quality is Quality.GOOD
    assert record.power_kw == pytest.approx(values.power_kw, abs=1e-3)
    assert record.reactive_power_kvar == pytest.approx(values.reactive_power_kvar, abs=1e-3)
    assert record.voltage_v == pytest.approx(values.voltage_v, abs=1e-3)
    assert record.current_a == pytest.approx(values.current_a, abs=1e-3)
    assert record.frequency_hz == pytest.approx(values.frequency_hz, abs=0.01)
    assert record.power_factor == pytest.approx(values.power_factor, abs=1e-3)
    assert record.energy_import_kwh == pytest.approx(values.energy_import_kwh, abs=1e-3)
    assert record.energy_export_kwh == pytest.approx(values.energy_export_kwh, abs=1e-3)


async def test_simulated_meter_is_read_as_canonical_meter_telemetry() -> None:
    """A manager-built ModbusAdapter with the generic_meter profile decodes the image, including
    import as negative power and a counter beyond 32 bits, and follows new values."""
    unit = SimUnit(UNIT, IMAGE_SIZE)
    unit.set(0, meter_image(IMPORTING))
    server = await SimServer([unit]).start()
    sink = Sink()
    manager = AdapterManager(sink)
    device = DERDevice(
        id="sim-meter",
        device_type=DeviceType.METER,
        connection=ModbusConnection(
            protocol="modbus",
            host="127.0.0.1",
            port=server.port,
            unit_id=UNIT,
            profile="generic_meter",
            poll_interval_s=0.02,
        ),
    )
    adapter = manager.prepare(device)
    assert isinstance(adapter, ModbusAdapter)
    exporting = MeterValues(power_kw=5.5, current_a=24.0, energy_export_kwh=1_240.0)
    try:
        manager.start(device.id, adapter)
        await until(lambda: len(sink.records) >= 1)
        first = sink.records[0]
        unit.set(0, meter_image(exporting))
        await until(lambda: getattr(sink.records[-1], "power_kw", None) == pytest.approx(5.5))
        last = sink.records[-1]
        assert adapter.status.state is ConnectionState.ONLINE
    finally:
        await manager.aclose()
        await server.stop()
    assert isinstance(first, MeterTelemetry)
    assert first.device_id == "sim-meter"
    assert_reading(first, IMPORTING)
    assert isinstance(last, MeterTelemetry)
    assert_reading(last, exporting)
    assert (0, 28) in unit.reads, "the measurements were read as one request"
