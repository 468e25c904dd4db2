"""The device registry's canonical description of a DER (nameplate, protocol, location, groups)."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from derim.models.common import DeviceId, DeviceType, Text, UtcDatetime
from derim.models.standards import measurement

MRID_NAMESPACE = uuid.UUID("6f1c1d3e-8f4a-5b7e-9a51-2d5c0e7b4a10")
"""Namespace of the UUID v5 mRIDs DERIM derives from device ids."""

Label = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[\w.:@-]+$")]
"""A group name or tag key: 1-64 word characters or ``. : @ -``."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PushConnection(_Strict):
    """The device (or its gateway) pushes readings to ``POST /api/v1/telemetry``."""

    protocol: Literal["http"] = "http"


class ModbusConnection(_Strict):
    """A Modbus device (or a unit behind a gateway) on TCP (``host``) or RTU (``serial_port``)."""

    protocol: Literal["modbus", "sunspec"]
    host: Text | None = Field(None, min_length=1, max_length=253, description="TCP host.")
    port: int = Field(502, ge=1, le=65535, description="TCP port.")
    serial_port: Text | None = Field(
        None, min_length=1, max_length=256, description="RTU serial device, such as /dev/ttyUSB0."
    )
    baudrate: int = Field(19200, ge=300, le=921600, description="RTU bits per second.")
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit_id: int = Field(1, ge=0, le=255)
    profile: Text | None = Field(
        None,
        max_length=256,
        description="Device profile (Modbus): a shipped profile name such as generic_meter, "
        "or the path of a YAML profile file.",
    )
    poll_interval_s: float = Field(1.0, gt=0, le=3600, description="Seconds between polls.")
    timeout_s: float = Field(2.0, gt=0, le=60, description="Seconds one poll may take.")

    @model_validator(mode="after")
    def _one_link(self) -> ModbusConnection:
        if (self.host is None) == (self.serial_port is None):
            raise ValueError("give either host (Modbus TCP) or serial_port (Modbus RTU)")
        return self


class Iec61850Connection(_Strict):
    """An IEC 61850 IED reached over MMS (TCP), read and written through a profile."""

    protocol: Literal["iec61850"]
    host: Text = Field(min_length=1, max_length=253, description="TCP host of the IED.")
    port: int = Field(102, ge=1, le=65535, description="TCP port (MMS: 102).")
    ied_name: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z][A-Za-z0-9_]*$",
        description="IED name in its SCL file; with a logical device instance it makes the "
        "MMS domain (IED BESS1 + LD DER = BESS1DER).",
    )
    profile: Text = Field(
        min_length=1,
        max_length=256,
        description="IEC 61850 profile: a shipped profile name such as generic_der_battery, "
        "or the path of a YAML profile file.",
    )
    poll_interval_s: float = Field(1.0, gt=0, le=3600, description="Seconds between polls.")
    timeout_s: float = Field(2.0, gt=0, le=60, description="Seconds one request may take.")


class MqttConnection(_Strict):
    """A device whose readings arrive on MQTT topics."""

    protocol: Literal["mqtt"]
    topic: Text = Field(min_length=1, max_length=256)


class OcppConnection(_Strict):
    """An EV charger that connects to DERIM's OCPP central system."""

    protocol: Literal["ocpp"]
    charge_point_id: Text = Field(min_length=1, max_length=48)


class SimulatedConnection(_Strict):
    """A device simulated inside DERIM (demo and tests)."""

    protocol: Literal["simulated"]


Connection = Annotated[
    PushConnection
    | ModbusConnection
    | Iec61850Connection
    | MqttConnection
    | OcppConnection
    | SimulatedConnection,
    Field(discriminator="protocol"),
]


class ControlLimits(_Strict):
    """Bounds every command to the device must respect, beyond its nameplate rating."""

    min_power_kw: float | None = Field(None, description="Lowest setpoint, kW (grid-positive).")
    max_power_kw: float | None = Field(None, description="Highest setpoint, kW.")
    soc_min_percent: float | None = Field(
        None, ge=0, le=100, description="No discharge at or below this state of charge."
    )
    soc_max_percent: float | None = Field(
        None, ge=0, le=100, description="No charge at or above this state of charge."
    )
    ramp_kw_per_s: float | None = Field(
        None, gt=0, description="Largest change between two setpoints per second between them."
    )

    @model_validator(mode="after")
    def _ordered(self) -> ControlLimits:
        pairs = (
            (self.min_power_kw, self.max_power_kw),
            (self.soc_min_percent, self.soc_max_percent),
        )
        for low, high in pairs:
            if low is not None and high is not None and low > high:
                raise ValueError("a minimum is above its maximum")
        return self


class Location(_Strict):
    """Where the device is installed (WGS 84)."""

    latitude: float = Field(ge=-90, le=90, description="Degrees north.")
    longitude: float = Field(ge=-180, le=180, description="Degrees east.")
    altitude_m: float | None = Field(
        None, ge=-12_000, le=12_000, description="Metres above sea level."
    )
    address: Text | None = Field(None, max_length=256)


class DERDevice(_Strict):
    """A registered device. ``mrid`` is its IEC 61970 CIM master resource identifier."""

    id: DeviceId = measurement(
        "Unique device identifier.",
        unit="",
        ieee2030_5="EndDevice.lFDI / EndDevice.sFDI (as text)",
        cim="IdentifiedObject.name (unique key)",
        default=...,
    )
    name: Text = measurement(
        "Human-readable name.",
        unit="",
        ieee2030_5="MirrorUsagePoint.description",
        cim="IdentifiedObject.description",
        default="",
        max_length=256,
    )
    device_type: DeviceType = measurement(
        "Kind of DER.",
        unit="",
        ieee2030_5="DERCapability.type (DERType)",
        cim="PowerElectronicsUnit subclass (PhotoVoltaicUnit, BatteryUnit, ...) / EnergyConsumer",
        default=DeviceType.GENERIC,
    )
    connection: Connection = Field(
        default_factory=PushConnection,
        description="Protocol and its connection settings.",
    )
    rated_power_kw: float | None = measurement(
        "Nameplate active power, kW.",
        unit="kW",
        ieee2030_5="DERCapability.rtgMaxW",
        cim="PowerElectronicsConnection.maxP / PowerElectronicsUnit.maxP",
        ge=0,
    )
    rated_energy_kwh: float | None = measurement(
        "Usable energy capacity (storage), kWh.",
        unit="kWh",
        ieee2030_5="DERCapability.rtgMaxWh",
        cim="BatteryUnit.ratedE",
        ge=0,
    )
    location: Location | None = None
    limits: ControlLimits | None = Field(None, description="Bounds every command must respect.")
    groups: list[Label] = Field(default_factory=list, max_length=32)
    tags: dict[Label, Annotated[Text, StringConstraints(max_length=256)]] = Field(
        default_factory=dict, max_length=32
    )
    mrid: uuid.UUID | None = measurement(
        "CIM master resource identifier; derived from the id (UUID v5) when not given.",
        unit="",
        ieee2030_5="MirrorUsagePoint.mRID (IdentifiedObject.mRID)",
        cim="IdentifiedObject.mRID",
    )
    manufacturer: Text | None = Field(None, max_length=128)
    model: Text | None = Field(None, max_length=128)
    serial_number: Text | None = Field(None, max_length=128)
    firmware_version: Text | None = Field(None, max_length=128)
    created_at: UtcDatetime | None = None

    @model_validator(mode="after")
    def _derive_mrid(self) -> DERDevice:
        if self.mrid is None:
            self.mrid = uuid.uuid5(MRID_NAMESPACE, self.id)
        return self

    @property
    def protocol(self) -> str:
        """The protocol the device speaks (``connection.protocol``)."""
        return self.connection.protocol


class DevicePatch(_Strict):
    """Fields of a device that ``PATCH`` may change; absent fields stay as they are."""

    name: Text | None = Field(None, max_length=256)
    device_type: DeviceType | None = None
    connection: Connection | None = None
    rated_power_kw: float | None = Field(None, ge=0)
    rated_energy_kwh: float | None = Field(None, ge=0)
    location: Location | None = None
    limits: ControlLimits | None = None
    groups: list[Label] | None = Field(None, max_length=32)
    tags: dict[Label, Annotated[Text, StringConstraints(max_length=256)]] | None = Field(
        None, max_length=32
    )
    manufacturer: Text | None = Field(None, max_length=128)
    model: Text | None = Field(None, max_length=128)
    serial_number: Text | None = Field(None, max_length=128)
    firmware_version: Text | None = Field(None, max_length=128)


def apply_patch(device: DERDevice, patch: DevicePatch) -> DERDevice:
    """A copy of ``device`` with the fields set in ``patch`` replaced, re-validated."""
    changes = patch.model_dump(exclude_unset=True)
    merged = device.model_dump() | changes
    return DERDevice.model_validate(merged)
