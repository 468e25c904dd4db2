"""Pure mapping between DERIM and DNP3 points: stored readings to input values, written
outputs to command requests, and DERIM's outcome of a command to a DNP3 control status."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from statistics import fmean

from dnp3.core.enums import CommandStatus as ControlStatus
from dnp3.core.enums import ControlCode, OperationType, TripCloseCode

from derim.errors import DerimError, InvalidRequestError, NotFoundError, TransportError
from derim.grid.dnp3.config import (
    AnalogInputPoint,
    AnalogOutputPoint,
    BinaryInputPoint,
    BinaryOutputPoint,
    Dnp3Config,
    Target,
)
from derim.grid.fleet import fresh
from derim.models.command import CommandRequest, CommandResult, CommandStatus, CommandType
from derim.models.common import OperatingState
from derim.models.device import DERDevice

SOURCE = "dnp3"
"""The ``source`` of every command the outstation submits (its own arbitration slot)."""

CONNECTED_STATES = frozenset(
    {
        OperatingState.ON,
        OperatingState.THROTTLED,
        OperatingState.CHARGING,
        OperatingState.DISCHARGING,
        OperatingState.IDLE,
    }
)
"""Operating states in which a device exchanges (or stands ready to exchange) power with the
grid; standby, off, sleeping, starting, shutting down and fault count as not connected."""

RECORD_STATUS = {
    CommandStatus.ACKNOWLEDGED: ControlStatus.SUCCESS,
    CommandStatus.VALIDATED: ControlStatus.SUCCESS,
    CommandStatus.SENT: ControlStatus.TIMEOUT,
    CommandStatus.REQUESTED: ControlStatus.TIMEOUT,
    CommandStatus.TIMED_OUT: ControlStatus.TIMEOUT,
    CommandStatus.REJECTED: ControlStatus.HARDWARE_ERROR,
    CommandStatus.FAILED: ControlStatus.DOWNSTREAM_FAIL,
    CommandStatus.EXPIRED: ControlStatus.CANCELLED,
}
"""A command record's status as the control status the master sees. ``validated`` is a
SELECT's dry run; ``sent`` means the device had not answered within DERIM's wait."""

AGGREGATES: dict[str, Callable[[list[float]], float]] = {
    "sum": math.fsum,
    "mean": fmean,
    "min": min,
    "max": max,
}
"""How a group's values combine into one analog input."""


@dataclass(frozen=True)
class AnalogValue:
    """An analog input's wire value (None: nothing to report) and whether every targeted
    device contributed a fresh reading."""

    index: int
    value: int | None
    online: bool


@dataclass(frozen=True)
class BinaryValue:
    """A binary input's state and whether it is known."""

    index: int
    value: bool
    online: bool


@dataclass(frozen=True)
class Snapshot:
    """Every input point's value at one refresh."""

    analogs: list[AnalogValue]
    binaries: list[BinaryValue]


def target_ids(target: Target, devices: Sequence[DERDevice]) -> list[str]:
    """The registered devices a point addresses, in registry order (empty if none)."""
    if target.device is not None:
        return [d.id for d in devices if d.id == target.device]
    return [d.id for d in devices if target.group in d.groups]


def analog_value(
    point: AnalogInputPoint, ids: Sequence[str], readings: Mapping[str, Mapping[str, object]]
) -> AnalogValue:
    """The point's field over the targeted devices' fresh readings, combined and scaled.

    Devices whose reading lacks the field (a PV inverter's ``soc_percent``) are left out;
    the point is online only while every targeted device has a fresh reading.
    """
    values = [
        float(value)
        for device_id in ids
        if isinstance(value := readings.get(device_id, {}).get(point.field), int | float)
        and not isinstance(value, bool)
    ]
    online = bool(ids) and all(device_id in readings for device_id in ids)
    if not values:
        return AnalogValue(point.index, None, False)
    combined = AGGREGATES[point.aggregate](values)
    return AnalogValue(point.index, round(combined * point.scale), online)


def binary_value(
    point: BinaryInputPoint, ids: Sequence[str], readings: Mapping[str, Mapping[str, object]]
) -> BinaryValue:
    """Whether every targeted device is online (has a fresh reading) or grid-connected."""
    if not ids:
        return BinaryValue(point.index, False, False)
    if point.kind == "online":
        return BinaryValue(point.index, all(d in readings for d in ids), True)
    states = [readings[d].get("state") for d in ids if d in readings]
    if len(states) < len(ids) or None in states:
        return BinaryValue(point.index, False, False)
    return BinaryValue(point.index, all(s in CONNECTED_STATES for s in states), True)


def snapshot(
    config: Dnp3Config,
    devices: Sequence[DERDevice],
    latest: Mapping[str, Mapping[str, object]],
    now: datetime,
) -> Snapshot:
    """Every configured input point's value from the latest stored readings at ``now``."""
    readings = fresh(latest, now, config.stale_after_s)
    analogs = [
        analog_value(point, target_ids(point, devices), readings) for point in config.analog_inputs
    ]
    binaries = [
        binary_value(point, target_ids(point, devices), readings) for point in config.binary_inputs
    ]
    return Snapshot(analogs, binaries)


def watched_ids(config: Dnp3Config, devices: Sequence[DERDevice]) -> list[str]:
    """Every registered device some input point reads, each once."""
    points: list[Target] = [*config.analog_inputs, *config.binary_inputs]
    return list(dict.fromkeys(d for point in points for d in target_ids(point, devices)))


def setpoint_request(
    point: AnalogOutputPoint, wire_value: float, expires_at: datetime | None
) -> CommandRequest:
    """The command an analog output write asks for: the value divided by the point's scale.
    Raises ``ValueError`` (pydantic's ``ValidationError``) for a value DERIM cannot hold."""
    return CommandRequest(
        command=point.command,
        value=wire_value / point.scale,
        unit=point.unit,
        source=SOURCE,
        expires_at=expires_at,
    )


SWITCH_CODES = {
    (TripCloseCode.NUL, OperationType.LATCH_ON): True,
    (TripCloseCode.CLOSE, OperationType.PULSE_ON): True,
    (TripCloseCode.NUL, OperationType.LATCH_OFF): False,
    (TripCloseCode.TRIP, OperationType.PULSE_ON): False,
}
"""CROB control codes the outstation carries out, and whether each switches on or off."""


def switch_command(point: BinaryOutputPoint, code: ControlCode) -> CommandType | None:
    """The command a CROB control code asks for: latch on or close is ``on``, latch off or
    trip is ``off``; None for any other code (a plain pulse, NUL, a set Clear bit)."""
    switch = None if code.clear else SWITCH_CODES.get((code.tcc, code.op_type))
    if switch is None:
        return None
    return point.on if switch else point.off


def switch_request(command: CommandType) -> CommandRequest:
    """A valueless command from the outstation."""
    return CommandRequest(command=command, source=SOURCE)


def result_status(result: CommandResult) -> ControlStatus:
    """The control status of a command record DERIM returned."""
    return RECORD_STATUS.get(result.status, ControlStatus.HARDWARE_ERROR)


def error_status(error: DerimError) -> ControlStatus:
    """The control status of a command DERIM refused or could not carry out: a setpoint
    outside the device's rating or limits is out of range, a command the device does not
    take or an unknown device is not supported, an unreachable device is a downstream
    failure, and a device's own refusal (or anything else) a hardware error."""
    if isinstance(error, InvalidRequestError):
        return ControlStatus.OUT_OF_RANGE if error.field == "value" else ControlStatus.NOT_SUPPORTED
    if isinstance(error, NotFoundError):
        return ControlStatus.NOT_SUPPORTED
    if isinstance(error, TransportError):
        return ControlStatus.DOWNSTREAM_FAIL
    return ControlStatus.HARDWARE_ERROR


def combined_status(statuses: Sequence[ControlStatus]) -> ControlStatus:
    """One status for a point that addressed several devices: success only if every device
    succeeded, otherwise the first failure (each device's record tells the rest)."""
    if not statuses:
        return ControlStatus.NOT_SUPPORTED
    return next((s for s in statuses if s is not ControlStatus.SUCCESS), ControlStatus.SUCCESS)
