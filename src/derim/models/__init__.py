"""Canonical, vendor-neutral models of devices, telemetry and commands."""

from derim.models.command import CommandRequest, CommandResult, CommandStatus, CommandType
from derim.models.common import (
    ConnectorStatus,
    DeviceId,
    DeviceType,
    OperatingState,
    Quality,
    UtcDatetime,
)
from derim.models.device import DERDevice, DevicePatch, Location, apply_patch
from derim.models.telemetry import (
    TELEMETRY_BY_DEVICE_TYPE,
    TELEMETRY_CLASSES,
    BatteryTelemetry,
    DERTelemetry,
    EVChargerTelemetry,
    MeterTelemetry,
    SolarTelemetry,
    telemetry_fields,
)

__all__ = [
    "TELEMETRY_BY_DEVICE_TYPE",
    "TELEMETRY_CLASSES",
    "BatteryTelemetry",
    "CommandRequest",
    "CommandResult",
    "CommandStatus",
    "CommandType",
    "ConnectorStatus",
    "DERDevice",
    "DERTelemetry",
    "DeviceId",
    "DevicePatch",
    "DeviceType",
    "EVChargerTelemetry",
    "Location",
    "MeterTelemetry",
    "OperatingState",
    "Quality",
    "SolarTelemetry",
    "UtcDatetime",
    "apply_patch",
    "telemetry_fields",
]
