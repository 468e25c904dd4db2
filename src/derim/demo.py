"""A sample fleet and synthetic telemetry, so a fresh ``make demo`` has something to show.

The profiles are simple physics-shaped curves (a clear-sky-like PV bell, a battery that charges from
midday surplus and discharges in the evening, a household load with morning and evening peaks, an
evening EV session) with a little deterministic noise; they are demo data, not measurements.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from typing import Literal

from derim.models.common import ConnectorStatus, DeviceType, OperatingState
from derim.models.device import DERDevice, Location, SimulatedConnection
from derim.models.telemetry import (
    BatteryTelemetry,
    DERTelemetry,
    EVChargerTelemetry,
    MeterTelemetry,
    SolarTelemetry,
)

SITE = Location(latitude=52.52, longitude=13.40, address="Demo site, Berlin")


POLLED_DEVICES = ("pv-roof-1", "battery-1", "meter-site")
"""Sample devices that ``sample_fleet(sunspec_port)`` polls on the simulator's gateway."""
CHARGERS: dict[str, Literal["1.6", "2.0.1"]] = {"evse-1": "1.6", "evse-2": "2.0.1"}
"""Sample chargers, simulated charge points that connect over OCPP in these versions."""
CARPORT = "carport"
"""The group of the sample chargers, a site that the demo gives a shared power limit."""
CARPORT_LIMIT_KW = 15.0


def sample_fleet(sunspec_port: int | None = None) -> list[DERDevice]:
    """Two PV inverters, a battery, a site meter, a household load and two EV chargers.

    With ``sunspec_port``, the ``POLLED_DEVICES`` are polled over Modbus TCP on the simulator's
    gateway at 127.0.0.1:``sunspec_port`` (see ``derim.sim.sunspec_fleet``): ``pv-roof-1``
    (unit 1) and ``battery-1`` (unit 2) as SunSpec devices, ``meter-site`` (unit 3) as a Modbus
    device with the ``generic_meter`` profile. The ``CHARGERS`` are OCPP chargers of the
    ``CARPORT`` site (charge point id = device id).
    """
    sim = SimulatedConnection(protocol="simulated")

    def gateway(unit_id: int, protocol: str = "sunspec", **extra: object) -> object:
        if sunspec_port is None:
            return sim
        return {"protocol": protocol, "host": "127.0.0.1", "port": sunspec_port,
                "unit_id": unit_id, **extra}  # fmt: skip

    def device(device_id: str, name: str, kind: DeviceType, **extra: object) -> DERDevice:
        return DERDevice.model_validate(
            {
                "id": device_id,
                "name": name,
                "device_type": kind,
                "connection": sim,
                "location": SITE,
                "groups": ["demo-site"],
                **extra,
            }
        )

    return [
        device(
            "pv-roof-1",
            "Rooftop PV east",
            DeviceType.SOLAR_PV,
            rated_power_kw=8.0,
            connection=gateway(1),
        ),
        device("pv-roof-2", "Rooftop PV west", DeviceType.SOLAR_PV, rated_power_kw=6.0),
        device(
            "battery-1",
            "Home battery",
            DeviceType.BATTERY,
            rated_power_kw=5.0,
            rated_energy_kwh=13.5,
            connection=gateway(2),
        ),
        device(
            "meter-site",
            "Site meter (PCC)",
            DeviceType.METER,
            connection=gateway(3, "modbus", profile="generic_meter"),
        ),
        device("load-house", "Household load", DeviceType.LOAD, rated_power_kw=12.0),
        device(
            "evse-1",
            "Wallbox (OCPP 1.6)",
            DeviceType.EV_CHARGER,
            rated_power_kw=11.0,
            groups=["demo-site", CARPORT],
            connection={"protocol": "ocpp", "charge_point_id": "evse-1"},
        ),
        device(
            "evse-2",
            "Wallbox (OCPP 2.0.1)",
            DeviceType.EV_CHARGER,
            rated_power_kw=22.0,
            groups=["demo-site", CARPORT],
            connection={"protocol": "ocpp", "charge_point_id": "evse-2"},
        ),
    ]


def solar_fraction(moment: datetime) -> float:
    """A clear-sky-like daylight bell between 06:00 and 20:00 UTC, 0 to 1."""
    hour = moment.hour + moment.minute / 60
    return max(0.0, math.sin(math.pi * (hour - 6) / 14)) ** 1.5 if 6 <= hour <= 20 else 0.0


def _load_kw(moment: datetime) -> float:
    hour = moment.hour + moment.minute / 60
    morning = 1.5 * math.exp(-((hour - 7.5) ** 2) / 2)
    evening = 2.5 * math.exp(-((hour - 19) ** 2) / 4)
    return 0.4 + morning + evening


def readings_at(
    moment: datetime, rng: random.Random, soc: list[float], clearness: float = 1.0
) -> list[DERTelemetry]:
    """One reading of every sample device at ``moment``; ``soc`` carries the battery state and
    ``clearness`` (0-1) scales the sunshine (the day's weather)."""
    sun = solar_fraction(moment) * clearness
    noise = 1 + rng.uniform(-0.03, 0.03)
    pv1 = round(8.0 * 0.85 * sun * noise, 3)
    pv2 = round(6.0 * 0.85 * sun * noise, 3)
    load = round(_load_kw(moment) * (1 + rng.uniform(-0.1, 0.1)), 3)
    hour = moment.hour + moment.minute / 60
    ev = -11.0 if 18 <= hour < 20 else 0.0
    surplus = pv1 + pv2 - load
    battery = -min(5.0, surplus) if surplus > 0 and soc[0] < 95 else 0.0
    if surplus <= 0 and soc[0] > 10:
        battery = min(5.0, -surplus)
    soc[0] = min(100.0, max(0.0, soc[0] - battery / 13.5 * (1 / 60) * 100))
    net = round(pv1 + pv2 + battery - load + ev, 3)
    voltage = round(230 + rng.uniform(-2, 2), 2)
    freq = round(50 + rng.uniform(-0.03, 0.03), 3)
    solar_state = OperatingState.ON if sun > 0 else OperatingState.SLEEPING
    battery_state = (
        OperatingState.DISCHARGING
        if battery > 0
        else OperatingState.CHARGING
        if battery < 0
        else OperatingState.IDLE
    )
    common = {"timestamp": moment, "voltage_v": voltage, "frequency_hz": freq}
    return [
        SolarTelemetry(
            device_id="pv-roof-1",
            power_kw=pv1,
            state=solar_state,
            irradiance_w_m2=round(1000 * sun, 1),
            **common,
        ),
        SolarTelemetry(device_id="pv-roof-2", power_kw=pv2, state=solar_state, **common),
        BatteryTelemetry(
            device_id="battery-1",
            power_kw=round(battery, 3),
            state=battery_state,
            soc_percent=round(soc[0], 2),
            temperature_c=25.0,
            **common,
        ),
        MeterTelemetry(device_id="meter-site", power_kw=net, **common),
        MeterTelemetry(device_id="load-house", power_kw=-load, **common),
        EVChargerTelemetry(
            device_id="evse-1",
            power_kw=ev,
            connector_id=1,
            connector_status=ConnectorStatus.CHARGING if ev else ConnectorStatus.AVAILABLE,
            **common,
        ),
    ]


STUCK_SPAN = (timedelta(hours=10), timedelta(hours=6))
"""From when to when before now the demo's household meter repeats one value: the anomaly the
demo injects for the twin to find, in the day of one-minute readings so that the dashboard's
24-hour chart shows it."""


def sample_day(end: datetime, step: timedelta = timedelta(minutes=1)) -> list[DERTelemetry]:
    """A day of readings of the sample fleet ending at ``end`` (UTC), one every ``step``, with
    the household meter stuck during ``STUCK_SPAN``."""
    rng = random.Random(42)
    soc = [50.0]
    start = end.astimezone(UTC).replace(second=0, microsecond=0) - timedelta(days=1)
    stuck_from, stuck_until = end - STUCK_SPAN[0], end - STUCK_SPAN[1]
    stuck_kw: float | None = None
    records: list[DERTelemetry] = []
    moment = start
    while moment <= end:
        for reading in readings_at(moment, rng, soc):
            if reading.device_id == "load-house" and stuck_from <= moment < stuck_until:
                stuck_kw = reading.power_kw if stuck_kw is None else stuck_kw
                reading = reading.model_copy(update={"power_kw": stuck_kw})
            records.append(reading)
        moment += step
    return records


HISTORY_DAYS = 60
"""Days of 15-min history the demo loads, enough for the twin to backtest and train on."""


def sample_history(end: datetime, days: int = HISTORY_DAYS) -> list[DERTelemetry]:
    """``days`` days of 15-min readings of the sample fleet up to a day before ``end``, with
    day-to-day weather (clearness following a persistent random walk)."""
    rng = random.Random(60)
    soc = [50.0]
    last = end.astimezone(UTC).replace(second=0, microsecond=0) - timedelta(days=1)
    moment = last.replace(minute=last.minute - last.minute % 15) - timedelta(days=days)
    clearness, day = 0.7, moment.date()
    records: list[DERTelemetry] = []
    while moment < last:
        if moment.date() != day:
            day = moment.date()
            clearness = min(1.0, max(0.15, 0.6 * clearness + 0.4 * rng.uniform(0.1, 1.0)))
        records.extend(readings_at(moment, rng, soc, clearness))
        moment += timedelta(minutes=15)
    return records
