"""Canonical telemetry records, one class per kind of DER.

Sign convention (one for the whole system): **active power delivered to the grid is positive**. A PV
inverter producing 4 kW reports ``power_kw=4``; a battery discharging reports positive power and a
charging one negative; an EV charger drawing 7 kW reports ``power_kw=-7``; a meter at the point of
common coupling reports positive power while the site exports. Reactive power is positive when the
device delivers reactive power to the grid (over-excited). Timestamps are UTC instants: a timestamp
with an offset is converted, a naive one is read as UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import get_args

from pydantic import BaseModel, ConfigDict, Field

from derim.models.common import (
    ConnectorStatus,
    DeviceId,
    DeviceType,
    OperatingState,
    Quality,
    UtcDatetime,
)
from derim.models.standards import measurement


class DERTelemetry(BaseModel):
    """One reading of a device at one instant; every field but the keys is optional."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    device_id: DeviceId = Field(description="Identifier of the device the reading belongs to.")
    timestamp: UtcDatetime = Field(
        description="When the device measured the values (UTC, 1970 or later).",
        ge=datetime(1970, 1, 1, tzinfo=UTC),
    )
    power_kw: float | None = measurement(
        "Active power, kW; positive when delivered to the grid.",
        unit="kW",
        ieee2030_5="MirrorMeterReading (ReadingType uom=38 W, powerOfTenMultiplier=3)",
        cim="Analog measurementType=ThreePhaseActivePower; PowerElectronicsConnection.p",
    )
    reactive_power_kvar: float | None = measurement(
        "Reactive power, kvar; positive when delivered to the grid (over-excited).",
        unit="kvar",
        ieee2030_5="MirrorMeterReading (ReadingType uom=63 var, powerOfTenMultiplier=3)",
        cim="Analog measurementType=ThreePhaseReactivePower; PowerElectronicsConnection.q",
    )
    voltage_v: float | None = measurement(
        "RMS voltage at the device terminals, V (line-to-neutral average).",
        unit="V",
        ieee2030_5="MirrorMeterReading (ReadingType uom=29 V)",
        cim="Analog measurementType=PhaseVoltage",
        ge=0,
    )
    current_a: float | None = measurement(
        "RMS current, A (average of the phases).",
        unit="A",
        ieee2030_5="MirrorMeterReading (ReadingType uom=5 A)",
        cim="Analog measurementType=LineCurrent",
        ge=0,
    )
    frequency_hz: float | None = measurement(
        "Grid frequency, Hz.",
        unit="Hz",
        ieee2030_5="MirrorMeterReading (ReadingType uom=33 Hz)",
        cim="Analog measurementType=Frequency",
        ge=0,
    )
    energy_kwh: float | None = measurement(
        "Lifetime energy delivered by the device (monotonic counter), kWh.",
        unit="kWh",
        ieee2030_5="MirrorMeterReading (ReadingType uom=72 Wh, accumulationBehaviour=9)",
        cim="Accumulator measurementType=ThreePhaseActiveEnergy (IEC 61968-9 ReadingType)",
        ge=0,
    )
    state: OperatingState | None = measurement(
        "Operating state of the device.",
        unit="",
        ieee2030_5="DERStatus.inverterStatus / DERStatus.operationalModeStatus",
        cim="Discrete measurementType=OperatingMode",
    )
    quality: Quality = measurement(
        "Quality of the reading.",
        unit="",
        ieee2030_5="ReadingBase.qualityFlags",
        cim="MeasurementValueQuality (IEC 61850 validity)",
        default=Quality.GOOD,
    )


class SolarTelemetry(DERTelemetry):
    """A reading of a PV inverter."""

    irradiance_w_m2: float | None = measurement(
        "Plane-of-array irradiance, W/m2.",
        unit="W/m2",
        ieee2030_5="(no 2030.5 equivalent; manufacturer extension)",
        cim="Analog measurementType=Irradiance (PhotoVoltaicUnit)",
        ge=0,
    )
    panel_temperature_c: float | None = measurement(
        "PV module temperature, degrees C.",
        unit="degC",
        ieee2030_5="(no 2030.5 equivalent; manufacturer extension)",
        cim="Analog measurementType=Temperature (PhotoVoltaicUnit)",
    )
    dc_power_kw: float | None = measurement(
        "DC power from the PV array, kW.",
        unit="kW",
        ieee2030_5="(no 2030.5 equivalent; manufacturer extension)",
        cim="Analog measurementType=DCPower (PowerElectronicsConnection)",
    )


class BatteryTelemetry(DERTelemetry):
    """A reading of a battery energy storage system."""

    soc_percent: float | None = measurement(
        "State of charge, percent of usable capacity (0-100).",
        unit="%",
        ieee2030_5="DERStatus.stateOfChargeStatus",
        cim="BatteryUnit.storedE / BatteryUnit.ratedE",
        ge=0,
        le=100,
    )
    soh_percent: float | None = measurement(
        "State of health, percent of nameplate capacity (0-100).",
        unit="%",
        ieee2030_5="(no 2030.5 equivalent; manufacturer extension)",
        cim="(no CIM equivalent)",
        ge=0,
        le=100,
    )
    charge_rate_kw: float | None = measurement(
        "Maximum charge power available now, kW (>= 0).",
        unit="kW",
        ieee2030_5="DERSettings.setMaxChargeRateW",
        cim="(no CIM equivalent)",
        ge=0,
    )
    temperature_c: float | None = measurement(
        "Battery (cell average) temperature, degrees C.",
        unit="degC",
        ieee2030_5="(no 2030.5 equivalent; manufacturer extension)",
        cim="Analog measurementType=Temperature (BatteryUnit)",
    )


class _EnergyRegisters(DERTelemetry):
    """Fields of a device that meters what it exchanges with the grid (meters, EV chargers)."""

    energy_import_kwh: float | None = measurement(
        "Lifetime energy imported from the grid (register), kWh.",
        unit="kWh",
        ieee2030_5="MirrorMeterReading (ReadingType uom=72 Wh, flowDirection=1 forward)",
        cim="Accumulator (IEC 61968-9 ReadingType flowDirection=forward)",
        ge=0,
    )
    energy_export_kwh: float | None = measurement(
        "Lifetime energy exported to the grid (register), kWh.",
        unit="kWh",
        ieee2030_5="MirrorMeterReading (ReadingType uom=72 Wh, flowDirection=19 reverse)",
        cim="Accumulator (IEC 61968-9 ReadingType flowDirection=reverse)",
        ge=0,
    )
    power_factor: float | None = measurement(
        "Displacement power factor (-1 to 1).",
        unit="",
        ieee2030_5="MirrorMeterReading (ReadingType uom=65 cos theta)",
        cim="Analog measurementType=PowerFactor",
        ge=-1,
        le=1,
    )


class EVChargerTelemetry(_EnergyRegisters):
    """A reading of an EV charger connector; charging power is negative (drawn from the grid)."""

    connector_id: int | None = measurement(
        "Connector (OCPP 1.6) or EVSE (OCPP 2.0.1) number; 0 means the whole charger.",
        unit="",
        ieee2030_5="(no 2030.5 equivalent)",
        cim="(no CIM equivalent)",
        ge=0,
    )
    connector_status: ConnectorStatus | None = measurement(
        "Connector status as reported by the charger.",
        unit="",
        ieee2030_5="(no 2030.5 equivalent)",
        cim="(no CIM equivalent)",
    )
    session_energy_kwh: float | None = measurement(
        "Energy delivered to the vehicle in the current session, kWh.",
        unit="kWh",
        ieee2030_5="(no 2030.5 equivalent)",
        cim="(no CIM equivalent)",
        ge=0,
    )
    transaction_id: str | None = measurement(
        "Charging transaction identifier.",
        unit="",
        ieee2030_5="(no 2030.5 equivalent)",
        cim="(no CIM equivalent)",
        max_length=64,
    )
    current_l1_a: float | None = measurement(
        "RMS current on phase L1, A.",
        unit="A",
        ieee2030_5="MirrorMeterReading (ReadingType uom=5 A, phase=128 A)",
        cim="Analog measurementType=LineCurrent, phases=A",
        ge=0,
    )
    current_l2_a: float | None = measurement(
        "RMS current on phase L2, A.",
        unit="A",
        ieee2030_5="MirrorMeterReading (ReadingType uom=5 A, phase=64 B)",
        cim="Analog measurementType=LineCurrent, phases=B",
        ge=0,
    )
    current_l3_a: float | None = measurement(
        "RMS current on phase L3, A.",
        unit="A",
        ieee2030_5="MirrorMeterReading (ReadingType uom=5 A, phase=32 C)",
        cim="Analog measurementType=LineCurrent, phases=C",
        ge=0,
    )
    voltage_l1_v: float | None = measurement(
        "RMS voltage L1 to neutral, V.",
        unit="V",
        ieee2030_5="MirrorMeterReading (ReadingType uom=29 V, phase=129 AN)",
        cim="Analog measurementType=PhaseVoltage, phases=AN",
        ge=0,
    )
    voltage_l2_v: float | None = measurement(
        "RMS voltage L2 to neutral, V.",
        unit="V",
        ieee2030_5="MirrorMeterReading (ReadingType uom=29 V, phase=65 BN)",
        cim="Analog measurementType=PhaseVoltage, phases=BN",
        ge=0,
    )
    voltage_l3_v: float | None = measurement(
        "RMS voltage L3 to neutral, V.",
        unit="V",
        ieee2030_5="MirrorMeterReading (ReadingType uom=29 V, phase=33 CN)",
        cim="Analog measurementType=PhaseVoltage, phases=CN",
        ge=0,
    )
    offered_current_a: float | None = measurement(
        "Maximum current the charger offers the vehicle, A (per phase).",
        unit="A",
        ieee2030_5="(no 2030.5 equivalent)",
        cim="(no CIM equivalent)",
        ge=0,
    )
    offered_power_kw: float | None = measurement(
        "Maximum power the charger offers the vehicle, kW (>= 0).",
        unit="kW",
        ieee2030_5="(no 2030.5 equivalent)",
        cim="(no CIM equivalent)",
        ge=0,
    )
    interval_energy_kwh: float | None = measurement(
        "Energy imported during the last metering interval (charger-configured length), kWh.",
        unit="kWh",
        ieee2030_5="MirrorMeterReading (ReadingType uom=72 Wh, accumulationBehaviour=4 deltaData)",
        cim="Accumulator (IEC 61968-9 ReadingType accumulation=deltaData)",
        ge=0,
    )
    soc_percent: float | None = measurement(
        "State of charge of the vehicle battery, percent (0-100).",
        unit="%",
        ieee2030_5="(no 2030.5 equivalent; PEVInfo carries only targetStateOfCharge)",
        cim="(no CIM equivalent)",
        ge=0,
        le=100,
    )
    temperature_c: float | None = measurement(
        "Temperature at the connector, cable, charger body or vehicle, degrees C.",
        unit="degC",
        ieee2030_5="(no 2030.5 equivalent)",
        cim="Analog measurementType=Temperature",
    )


class MeterTelemetry(_EnergyRegisters):
    """A reading of a revenue or sub-meter; positive power is export at the meter."""


TELEMETRY_CLASSES: tuple[type[DERTelemetry], ...] = (
    DERTelemetry,
    SolarTelemetry,
    BatteryTelemetry,
    EVChargerTelemetry,
    MeterTelemetry,
)

TELEMETRY_BY_DEVICE_TYPE: dict[DeviceType, type[DERTelemetry]] = {
    DeviceType.SOLAR_PV: SolarTelemetry,
    DeviceType.BATTERY: BatteryTelemetry,
    DeviceType.EV_CHARGER: EVChargerTelemetry,
    DeviceType.METER: MeterTelemetry,
    DeviceType.LOAD: MeterTelemetry,
    DeviceType.WIND: DERTelemetry,
    DeviceType.GENERIC: DERTelemetry,
}
"""Which telemetry class validates readings of each device type."""

ENUM_FIELDS: dict[str, type[OperatingState] | type[ConnectorStatus]] = {
    "state": OperatingState,
    "connector_status": ConnectorStatus,
}
"""Canonical fields whose values come from an enumeration, and that enumeration."""
METADATA_FIELDS = frozenset({"device_id", "timestamp", "quality"})
"""Fields of a record that say whose and when, not what was measured."""


def telemetry_fields() -> dict[str, type]:
    """Every measurement field across all telemetry classes, with its Python value type.

    Numbers map to ``float`` (``int`` for counters such as ``connector_id``), everything else to
    ``str``. Keys are in declaration order, base class first.
    """
    fields: dict[str, type] = {}
    for cls in TELEMETRY_CLASSES:
        for name, info in cls.model_fields.items():
            if name in ("device_id", "timestamp") or name in fields:
                continue
            types = set(get_args(info.annotation)) - {type(None)} or {info.annotation}
            if float in types:
                fields[name] = float
            elif int in types:
                fields[name] = int
            else:
                fields[name] = str
    return fields
