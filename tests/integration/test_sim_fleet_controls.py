"""The simulated site's SunSpec DER models, its controls and its meter, over real Modbus TCP.

The simulator runs on a fixed clock at a sunny TMY hour and is stepped with ``sim.update()``;
control points are written as raw registers at offsets taken from the SunSpec model definitions.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from async_helpers import Sink
from derim.adapters.base import PollingAdapter
from derim.adapters.manager import AdapterManager
from derim.adapters.modbus.adapter import ModbusAdapter
from derim.adapters.modbus.codec import ReadRequest
from derim.adapters.modbus.profile import shipped_profile
from derim.adapters.modbus.transport import ModbusTransport
from derim.adapters.sunspec.adapter import SunSpecAdapter
from derim.adapters.sunspec.decode import DecodedBlock, decode_model
from derim.adapters.sunspec.models import HEADER_SIZE, model_definition
from derim.demo import POLLED_DEVICES, sample_fleet
from derim.models.common import DeviceType
from derim.models.telemetry import (
    BatteryTelemetry,
    DERTelemetry,
    MeterTelemetry,
    SolarTelemetry,
)
from derim.sim.sunspec_fleet import BATTERY_UNIT, METER_UNIT, PV_UNIT, SunSpecFleetSim

PV_RATING_KW = 8.0
BATTERY_RATING_KW = 5.0
SUNNY = datetime(2024, 6, 30, 17, 0, tzinfo=UTC)
"""Local noon at the TMY station (UTC-5) on a clear June day: PV near 87 % of rating, and the
battery's daily schedule charging at 60 % of its rating."""
PF = 0.9


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Site:
    sim: SunSpecFleetSim
    clock: Clock
    transport: ModbusTransport
    pv: SunSpecAdapter
    battery: SunSpecAdapter


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    clock = Clock(SUNNY)
    sim = await SunSpecFleetSim(
        pv_rating_w=round(PV_RATING_KW * 1000),
        battery_rating_w=round(BATTERY_RATING_KW * 1000),
        step_s=3600,
        clock=clock,
    ).start()
    transport = ModbusTransport.tcp("127.0.0.1", sim.port)
    pv = SunSpecAdapter("pv", DeviceType.SOLAR_PV, transport, PV_UNIT)
    battery = SunSpecAdapter("bat", DeviceType.BATTERY, transport, BATTERY_UNIT)
    try:
        await pv.connect()
        await battery.connect()
        yield Site(sim, clock, transport, pv, battery)
    finally:
        transport.close()
        await sim.stop()


def model_address(adapter: SunSpecAdapter, model_id: int) -> int:
    return next(entry.address for entry in adapter.models if entry.model_id == model_id)


def offset(model_id: int, point: str, group: str | None = None) -> int:
    """Offset of a point from its model's ID register; a single sub-group's points follow the
    top-level points and the sub-groups before it."""
    top = model_definition(model_id).group
    if group is None:
        return top.point(point).offset
    start = top.points_size
    for sub in top.groups:
        if sub.name == group:
            return start + sub.point(point).offset
        start += sub.points_size
    raise KeyError(group)


async def write(
    adapter: SunSpecAdapter, model_id: int, point: str, raw: int, group: str | None = None
) -> None:
    address = model_address(adapter, model_id) + offset(model_id, point, group)
    await adapter.transport.write(address, [raw & 0xFFFF], adapter.unit_id)


async def read_model(adapter: SunSpecAdapter, model_id: int) -> DecodedBlock:
    entry = next(entry for entry in adapter.models if entry.model_id == model_id)
    request = ReadRequest("holding", None, entry.address, HEADER_SIZE + entry.length)
    return decode_model(model_id, await adapter.transport.read(request, adapter.unit_id))


async def raw_value(adapter: SunSpecAdapter, model_id: int, sf_point: str, value: float) -> int:
    """``value`` as the raw register value under the device's own scale factor ``sf_point``."""
    exponent = (await read_model(adapter, model_id))[sf_point]
    assert isinstance(exponent, int)
    return round(value / 10.0**exponent)


async def reading(adapter: PollingAdapter) -> DERTelemetry:
    return (await adapter.read_once())[0]


def power(record: DERTelemetry) -> float:
    assert record.power_kw is not None
    return record.power_kw


async def test_der_maps_hold_their_models_in_order(site: Site) -> None:
    """Discovery finds the inverter's DER models after 1, 103 and 123, and the battery's 124;
    the nameplate, capacity and enter-service models carry the ratings and defaults."""
    nameplate = await read_model(site.pv, 120)
    capacity = await read_model(site.pv, 702)
    enter_service = await read_model(site.pv, 703)
    assert [entry.model_id for entry in site.pv.models] == [1, 103, 120, 123, 701, 702, 703, 704]
    assert [entry.model_id for entry in site.battery.models] == [1, 802, 124]
    assert nameplate["WRtg"] == pytest.approx(PV_RATING_KW * 1000)
    assert capacity["WMaxRtg"] == pytest.approx(PV_RATING_KW * 1000)
    assert capacity["PFOvrExtRtg"] == pytest.approx(0.8)
    assert capacity["PFUndExtRtg"] == pytest.approx(0.8)
    assert enter_service["ES"] == 1


async def test_704_power_limit_caps_output_and_the_tighter_limit_wins(site: Site) -> None:
    """A 30 % limit through model 704 caps W at the next update and stays written; a looser
    123 limit changes nothing, a tighter one takes over."""
    before = await reading(site.pv)
    await write(site.pv, 704, "WMaxLimPct", await raw_value(site.pv, 704, "WMaxLimPct_SF", 30))
    await write(site.pv, 704, "WMaxLimPctEna", 1)
    site.sim.update()
    limited = await reading(site.pv)
    controls = await read_model(site.pv, 704)
    await write(site.pv, 123, "WMaxLimPct", await raw_value(site.pv, 123, "WMaxLimPct_SF", 50))
    await write(site.pv, 123, "WMaxLim_Ena", 1)
    site.sim.update()
    looser = await reading(site.pv)
    await write(site.pv, 123, "WMaxLimPct", await raw_value(site.pv, 123, "WMaxLimPct_SF", 10))
    site.sim.update()
    tighter = await reading(site.pv)
    assert power(before) > 0.5 * PV_RATING_KW, "the sun is up: the limit binds"
    assert power(limited) <= 0.3 * PV_RATING_KW
    assert power(limited) == pytest.approx(0.3 * PV_RATING_KW)
    assert limited.state == "throttled"
    assert controls["WMaxLimPctEna"] == 1
    assert controls["WMaxLimPct"] == pytest.approx(30)
    assert power(looser) == pytest.approx(0.3 * PV_RATING_KW)
    assert power(tighter) == pytest.approx(0.1 * PV_RATING_KW)


@pytest.mark.parametrize(
    ("source", "sign"),
    [("704 over-excited", 1), ("704 under-excited", -1), ("123 negative OutPFSet", -1)],
)
async def test_power_factor_setpoint_gives_reactive_power_of_its_sign(
    site: Site, source: str, sign: int
) -> None:
    """An enabled PF setpoint makes var = W * tan(acos(PF)), positive over-excited, in both
    701 ``Var`` and 103 ``VAr``; without one the inverter runs at unity PF."""
    before = await reading(site.pv)
    if source.startswith("704"):
        raw_pf = await raw_value(site.pv, 704, "PF_SF", PF)
        await write(site.pv, 704, "PF", raw_pf, group="PFWInj")
        await write(site.pv, 704, "Ext", 0 if sign > 0 else 1, group="PFWInj")
        await write(site.pv, 704, "PFWInjEna", 1)
    else:
        await write(site.pv, 123, "OutPFSet", -(await raw_value(site.pv, 123, "OutPFSet_SF", PF)))
        await write(site.pv, 123, "OutPFSet_Ena", 1)
    site.sim.update()
    after = await reading(site.pv)
    inverter = await read_model(site.pv, 103)
    assert before.reactive_power_kvar == pytest.approx(0.0)
    assert after.reactive_power_kvar is not None
    expected = sign * power(after) * math.tan(math.acos(PF))
    assert abs(expected) > 1.0
    assert after.reactive_power_kvar == pytest.approx(expected, abs=1e-3)
    assert inverter["VAr"] == pytest.approx(after.reactive_power_kvar * 1000)


async def test_storage_discharge_command_overrides_the_schedule(site: Site) -> None:
    """StorCtl_Mod DISCHARGE at OutWRte 60 % discharges at 60 % of WChaMax and drains the
    battery across updates; clearing the bits hands back to the daily schedule (charging)."""
    scheduled = await reading(site.battery)
    raw_rate = await raw_value(site.battery, 124, "InOutWRte_SF", 60)
    await write(site.battery, 124, "OutWRte", raw_rate)
    await write(site.battery, 124, "StorCtl_Mod", 0b10)
    site.sim.update()
    discharging = await reading(site.battery)
    site.clock.now += timedelta(minutes=30)
    site.sim.update()
    later = await reading(site.battery)
    controls = await read_model(site.battery, 124)
    await write(site.battery, 124, "StorCtl_Mod", 0)
    site.sim.update()
    released = await reading(site.battery)
    assert isinstance(discharging, BatteryTelemetry)
    assert isinstance(later, BatteryTelemetry)
    assert power(scheduled) == pytest.approx(-0.6 * BATTERY_RATING_KW)
    assert power(discharging) == pytest.approx(0.6 * BATTERY_RATING_KW)
    assert discharging.state == "discharging"
    assert power(later) == pytest.approx(0.6 * BATTERY_RATING_KW)
    assert discharging.soc_percent is not None
    assert later.soc_percent is not None
    drained = 100 * 0.6 * BATTERY_RATING_KW * 0.5 / 13.5
    assert later.soc_percent == pytest.approx(discharging.soc_percent - drained, abs=1)
    assert controls["StorCtl_Mod"] == 0b10
    assert controls["ChaState"] == pytest.approx(later.soc_percent, abs=0.5)
    assert power(released) == pytest.approx(-0.6 * BATTERY_RATING_KW)


async def test_meter_reads_pv_plus_battery_minus_load_and_counts_energy(site: Site) -> None:
    """The generic_meter on unit 3 decodes to PV + battery - household load (export positive),
    and its export counter grows by that power over the hour to the next update."""
    meter = ModbusAdapter("meter", shipped_profile("generic_meter"), site.transport, METER_UNIT)
    first = await reading(meter)
    pv, battery = await reading(site.pv), await reading(site.battery)
    load_kw = site.sim.site.load_w / 1000
    site.clock.now += timedelta(hours=1)
    site.sim.update()
    second = await reading(meter)
    pv_later, battery_later = await reading(site.pv), await reading(site.battery)
    load_later_kw = site.sim.site.load_w / 1000
    assert isinstance(first, MeterTelemetry)
    assert isinstance(second, MeterTelemetry)
    assert 0.2 < load_kw < 5.0
    assert power(first) == pytest.approx(power(pv) + power(battery) - load_kw, abs=2e-3)
    assert power(second) == pytest.approx(
        power(pv_later) + power(battery_later) - load_later_kw, abs=2e-3
    )
    assert power(first) > 0, "noon PV covers the charging battery and the load"
    assert first.voltage_v is not None
    assert 225 < first.voltage_v < 240
    assert first.frequency_hz == pytest.approx(50.0)
    assert first.current_a is not None
    assert first.current_a > 0
    assert first.energy_export_kwh is not None
    assert second.energy_export_kwh == pytest.approx(
        first.energy_export_kwh + power(first) * 1.0, abs=2e-3
    )
    assert second.energy_import_kwh == pytest.approx(first.energy_import_kwh)


async def test_demo_fleet_polls_pv_battery_and_meter_on_the_gateway(site: Site) -> None:
    """``sample_fleet(port)`` gives exactly the ``POLLED_DEVICES`` adapters; built as the app
    builds them, they read the inverter, the battery and the meter from their units."""
    manager = AdapterManager(Sink())
    prepared = {device.id: manager.prepare(device) for device in sample_fleet(site.sim.port)}
    adapters = {device_id: a for device_id, a in prepared.items() if a is not None}
    readings: dict[str, DERTelemetry] = {}
    try:
        for device_id, adapter in adapters.items():
            await adapter.connect()
            readings[device_id] = await reading(adapter)
    finally:
        for adapter in adapters.values():
            await adapter.aclose()
    assert sorted(adapters) == sorted(POLLED_DEVICES)
    assert isinstance(readings["pv-roof-1"], SolarTelemetry)
    assert isinstance(readings["battery-1"], BatteryTelemetry)
    assert isinstance(readings["meter-site"], MeterTelemetry)
    site_kw = power(readings["pv-roof-1"]) + power(readings["battery-1"])
    load_kw = site.sim.site.load_w / 1000
    assert power(readings["meter-site"]) == pytest.approx(site_kw - load_kw, abs=2e-3)
