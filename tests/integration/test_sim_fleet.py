"""The simulated SunSpec fleet, read through the real SunSpec adapter over Modbus TCP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from derim.adapters.modbus.transport import ModbusTransport
from derim.adapters.sunspec.adapter import SunSpecAdapter
from derim.errors import InvalidRequestError
from derim.models.command import CommandRequest, CommandStatus, CommandType
from derim.models.common import DeviceType
from derim.models.telemetry import BatteryTelemetry, SolarTelemetry
from derim.sim.sunspec_fleet import BATTERY_UNIT, PV_UNIT, SunSpecFleetSim


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


async def test_pv_follows_daylight_and_battery_integrates_its_power() -> None:
    """Late-morning PV output is most of the rating, night output zero; a charging battery's SoC
    rises. The site's local day is UTC-5 (the TMY station's standard time)."""
    clock = Clock(datetime(2024, 6, 1, 16, 0, tzinfo=UTC))
    sim = await SunSpecFleetSim(step_s=3600, clock=clock).start()
    transport = ModbusTransport.tcp("127.0.0.1", sim.port)
    pv = SunSpecAdapter("pv", DeviceType.SOLAR_PV, transport, PV_UNIT)
    battery = SunSpecAdapter("bat", DeviceType.BATTERY, transport, BATTERY_UNIT)
    try:
        await pv.connect()
        await battery.connect()
        first_pv = (await pv.read_once())[0]
        first_battery = (await battery.read_once())[0]
        clock.now += timedelta(hours=1)
        sim.update()
        later_battery = (await battery.read_once())[0]
        clock.now = datetime(2024, 6, 2, 4, 0, tzinfo=UTC)
        sim.update()
        night_pv = (await pv.read_once())[0]
    finally:
        transport.close()
        await sim.stop()
    assert isinstance(first_pv, SolarTelemetry)
    assert isinstance(first_battery, BatteryTelemetry)
    assert isinstance(later_battery, BatteryTelemetry)
    assert first_pv.power_kw is not None
    assert 5.0 < first_pv.power_kw <= 8.0
    assert first_pv.state == "on"
    assert night_pv.power_kw == pytest.approx(0.0)
    assert night_pv.state == "sleeping"
    assert first_battery.power_kw == pytest.approx(-3.0), "charging draws from the grid"
    assert first_battery.state == "charging"
    assert first_battery.soc_percent is not None
    assert later_battery.soc_percent is not None
    assert later_battery.soc_percent > first_battery.soc_percent


async def test_power_limit_curtails_the_simulated_inverter() -> None:
    """set_power_limit writes model 123, is read back, and caps the inverter's output."""
    clock = Clock(datetime(2024, 6, 1, 17, 0, tzinfo=UTC))
    sim = await SunSpecFleetSim(step_s=3600, clock=clock).start()
    transport = ModbusTransport.tcp("127.0.0.1", sim.port)
    pv = SunSpecAdapter("pv", DeviceType.SOLAR_PV, transport, PV_UNIT, rated_power_kw=8.0)
    try:
        await pv.connect()
        before = (await pv.read_once())[0]
        limit = CommandRequest(command=CommandType.SET_POWER_LIMIT, value=2.0, unit="kW")
        result = await pv.send(limit)
        sim.update()
        curtailed = (await pv.read_once())[0]
        with pytest.raises(InvalidRequestError, match="outside 0-100"):
            pv.validate(CommandRequest(command=CommandType.SET_POWER_LIMIT, value=150, unit="%"))
        cleared = await pv.send(CommandRequest(command=CommandType.CLEAR_POWER_LIMIT))
        sim.update()
        restored = (await pv.read_once())[0]
    finally:
        transport.close()
        await sim.stop()
    assert result.status is CommandStatus.ACKNOWLEDGED
    assert cleared.status is CommandStatus.ACKNOWLEDGED
    assert before.power_kw is not None
    assert before.power_kw > 5.0
    assert curtailed.power_kw == pytest.approx(2.0)
    assert restored.power_kw == pytest.approx(before.power_kw)
