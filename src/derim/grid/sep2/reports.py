"""What the client reports about a site: DERCapability, DERSettings, DERStatus and mirrored
meter readings (MirrorUsagePoint), built from the registry and the latest stored readings.

A site's figures are those of its mapped devices together: ratings and powers add up, voltage
and frequency are averaged. Power values are W, reactive power var, energy Wh, voltage V,
frequency Hz, each scaled into the Int16 / Int48 ranges of the schema with a power-of-ten
multiplier.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from envoy_schema.server.schema.sep2.der import (
    ConnectStatusType,
    ConnectStatusTypeValue,
    DERCapability,
    DERSettings,
    DERStatus,
    DERType,
    InverterStatusType,
    InverterStatusTypeValue,
    OperationalModeStatusType,
    OperationalModeStatusTypeValue,
    StateOfChargeStatusValue,
)
from envoy_schema.server.schema.sep2.der_control_types import ActivePower
from envoy_schema.server.schema.sep2.metering import Reading, ReadingType
from envoy_schema.server.schema.sep2.metering_mirror import (
    MirrorMeterReading,
    MirrorMeterReadingRequest,
    MirrorUsagePointRequest,
)
from envoy_schema.server.schema.sep2.types import (
    AccumulationBehaviourType,
    DateTimeIntervalType,
    FlowDirectionType,
    KindType,
    RoleFlagsType,
    ServiceKind,
    UomType,
)
from pydantic_xml import element

from derim.grid.sep2.controls import SUPPORTED_MODES
from derim.models.common import DeviceType, OperatingState
from derim.models.device import DERDevice

INT16_MAX = 32767
Fields = Mapping[str, object]


class PlainDERCapability(DERCapability, tag="DERCapability"):
    """envoy-schema's DERCapability without its mandatory CSIP-AUS ``doeModesSupported``, so
    that the body stays valid against the plain IEEE 2030.5 schema."""

    doeModesSupported: str | None = element(ns="csipaus", default=None)  # type: ignore[assignment]  # noqa: N815 - sep2 element name


def active_power(watts: float) -> ActivePower:
    """``watts`` as an ActivePower whose Int16 value keeps the most precision."""
    multiplier = 0
    while abs(watts) / 10.0**multiplier > INT16_MAX:
        multiplier += 1
    return ActivePower(value=round(watts / 10.0**multiplier), multiplier=multiplier)


def _der_type(devices: Sequence[DERDevice]) -> DERType:
    kinds = {device.device_type for device in devices}
    if kinds == {DeviceType.SOLAR_PV}:
        return DERType.PHOTOVOLTAIC_SYSTEM
    if kinds == {DeviceType.BATTERY}:
        return DERType.OTHER_STORAGE_SYSTEM
    if kinds == {DeviceType.SOLAR_PV, DeviceType.BATTERY}:
        return DERType.COMBINED_PV_AND_STORAGE
    if kinds == {DeviceType.EV_CHARGER}:
        return DERType.EVSE
    return DERType.VIRTUAL_OR_MIXED


def rated_watts(devices: Sequence[DERDevice]) -> float:
    """The site's rating (setMaxW), W: the sum of the devices' ratings."""
    return sum((device.rated_power_kw or 0.0) * 1000 for device in devices)


def capability(devices: Sequence[DERDevice]) -> PlainDERCapability:
    """The site's DERCapability: its type, rating and the control modes carried out."""
    return PlainDERCapability(
        modesSupported=f"{int(SUPPORTED_MODES):08X}",
        rtgMaxW=active_power(rated_watts(devices)),
        type_=_der_type(devices),
    )


def settings(devices: Sequence[DERDevice], now: int) -> DERSettings:
    """The site's DERSettings: setMaxW is the rating; no ramp limit is set (setGradW 0)."""
    return DERSettings(
        modesEnabled=f"{int(SUPPORTED_MODES):08X}",
        setGradW=0,
        setMaxW=active_power(rated_watts(devices)),
        updatedTime=now,
    )


_INVERTER_STATUS = {
    OperatingState.OFF: InverterStatusType.OFF,
    OperatingState.SLEEPING: InverterStatusType.SLEEPING,
    OperatingState.STARTING: InverterStatusType.STARTING,
    OperatingState.ON: InverterStatusType.TRACKING_MPPT_POWER_POINT,
    OperatingState.THROTTLED: InverterStatusType.FORCED_POWER_REDUCTION,
    OperatingState.SHUTTING_DOWN: InverterStatusType.SHUTTING_DOWN,
    OperatingState.FAULT: InverterStatusType.ONE_OR_MORE_FAULTS,
    OperatingState.STANDBY: InverterStatusType.STANDBY,
}
_RUNNING = {
    OperatingState.ON,
    OperatingState.THROTTLED,
    OperatingState.CHARGING,
    OperatingState.DISCHARGING,
}
"""States in which a device delivers or takes power (ConnectStatus Operating)."""
_CONNECTED = _RUNNING | {
    OperatingState.SLEEPING,
    OperatingState.STARTING,
    OperatingState.SHUTTING_DOWN,
    OperatingState.IDLE,
}
"""States of a device connected to the grid; off, standby (what a disconnect command leaves an
inverter in) and fault are not."""
_UNAVAILABLE = {OperatingState.OFF, OperatingState.FAULT}
"""States of a device that could not operate if asked."""


def connect_status(states: Sequence[OperatingState]) -> ConnectStatusType | None:
    """The site's ConnectStatus from its devices' known states: connected, available and
    operating when any device is, fault when any device is; None without a known state."""
    known = [state for state in states if state is not OperatingState.UNKNOWN]
    if not known:
        return None
    status = ConnectStatusType(0)
    if any(state in _CONNECTED for state in known):
        status |= ConnectStatusType.CONNECTED
    if any(state not in _UNAVAILABLE for state in known):
        status |= ConnectStatusType.AVAILABLE
    if any(state in _RUNNING for state in known):
        status |= ConnectStatusType.OPERATING
    if OperatingState.FAULT in known:
        status |= ConnectStatusType.FAULT_ERROR
    return status


def status(readings: Mapping[str, Fields], now: int) -> DERStatus:
    """The site's DERStatus from its devices' latest readings (the first device with a known
    state gives inverterStatus); what no reading tells is left out."""
    states = [
        OperatingState(str(r["state"])) for r in readings.values() if r.get("state") is not None
    ]
    socs = [
        float(str(r["soc_percent"])) for r in readings.values() if r.get("soc_percent") is not None
    ]
    connected = connect_status(states)
    inverter = next((_INVERTER_STATUS[s] for s in states if s in _INVERTER_STATUS), None)
    return DERStatus(
        readingTime=now,
        genConnectStatus=None
        if connected is None
        else ConnectStatusTypeValue(dateTime=now, value=f"{int(connected):02X}"),
        inverterStatus=None
        if inverter is None
        else InverterStatusTypeValue(dateTime=now, value=inverter),
        operationalModeStatus=OperationalModeStatusTypeValue(
            dateTime=now, value=OperationalModeStatusType.OPERATIONAL_MODEL
        ),
        stateOfChargeStatus=None
        if not socs
        else StateOfChargeStatusValue(dateTime=now, value=round(sum(socs) / len(socs) * 100)),
    )


@dataclass(frozen=True)
class Quantity:
    """One mirrored quantity: the reading field, how it combines, and its ReadingType."""

    field: str
    uom: UomType
    kind: KindType
    scale: float
    summed: bool = True
    direction: FlowDirectionType = FlowDirectionType.REVERSE
    accumulation: AccumulationBehaviourType = AccumulationBehaviourType.INSTANTANEOUS


_NO_FLOW = FlowDirectionType.NOT_APPLICABLE
QUANTITIES = (
    Quantity("power_kw", UomType.REAL_POWER_WATT, KindType.POWER, 1000),
    Quantity("reactive_power_kvar", UomType.REACTIVE_POWER_VAR, KindType.POWER, 1000),
    Quantity("voltage_v", UomType.VOLTAGE, KindType.NOT_APPLICABLE, 1, False, _NO_FLOW),
    Quantity("frequency_hz", UomType.FREQUENCY_HZ, KindType.NOT_APPLICABLE, 1, False, _NO_FLOW),
    Quantity(
        "energy_kwh",
        UomType.REAL_ENERGY_WATT_HOURS,
        KindType.ENERGY,
        1000,
        accumulation=AccumulationBehaviourType.CUMULATIVE,
    ),
)
MULTIPLIER = -2
"""Readings are sent in hundredths of their unit (powerOfTenMultiplier -2)."""


def mrid(*parts: str) -> str:
    """A stable 128-bit mRID (32 hex digits) for the named parts."""
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:32].upper()


def _combined(quantity: Quantity, readings: Mapping[str, Fields]) -> float | None:
    values = [
        float(str(r[quantity.field]))
        for r in readings.values()
        if r.get(quantity.field) is not None
    ]
    if not values:
        return None
    total = sum(values)
    return total if quantity.summed else total / len(values)


def meter_readings(
    lfdi: str, readings: Mapping[str, Fields], now: int
) -> list[MirrorMeterReadingRequest]:
    """One MirrorMeterReading per quantity any device reports, site-combined, at ``now``."""
    mirrored: list[MirrorMeterReadingRequest] = []
    for quantity in QUANTITIES:
        value = _combined(quantity, readings)
        if value is None:
            continue
        reading_type = ReadingType(
            accumulationBehaviour=quantity.accumulation,
            flowDirection=quantity.direction,
            kind=quantity.kind,
            powerOfTenMultiplier=MULTIPLIER,
            uom=quantity.uom,
        )
        reading = Reading(
            timePeriod=DateTimeIntervalType(start=now, duration=0),
            value=round(value * quantity.scale / 10.0**MULTIPLIER),
        )
        mirrored.append(
            MirrorMeterReadingRequest(
                mRID=mrid(lfdi, quantity.field),
                description=quantity.field,
                lastUpdateTime=now,
                reading=reading,
                readingType=reading_type,
            )
        )
    return mirrored


def usage_point(lfdi: str, readings: Sequence[MirrorMeterReading]) -> MirrorUsagePointRequest:
    """The site's MirrorUsagePoint (a DER mirror) carrying ``readings``."""
    return MirrorUsagePointRequest(
        mRID=mrid(lfdi, "mup"),
        description="DERIM site",
        roleFlags=f"{int(RoleFlagsType.IS_MIRROR | RoleFlagsType.IS_DER):04X}",
        serviceCategoryKind=ServiceKind.ELECTRICITY,
        status=1,
        deviceLFDI=lfdi,
        mirrorMeterReadings=list(readings),
    )
