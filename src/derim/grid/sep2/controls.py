"""IEEE 2030.5 DER control modes <-> DERIM commands.

``modes_of`` reduces a ``DERControlBase`` to plain values in DERIM units; ``commands_for``
turns the modes in force into one command per channel for each mapped device. Watt values are
shared among the devices in proportion to their rating (equally when none has one); percent
values apply to each device's own rating (``setMaxW`` is the sum of the ratings).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from envoy_schema.server.schema.sep2.der import (
    DefaultDERControl,
    DERControlBase,
    DERControlResponse,
    DERControlType,
)

from derim.errors import ProtocolError
from derim.grid.sep2.events import ControlEvent, DefaultControl, EventStatus, ModeValue
from derim.models.command import CommandType
from derim.models.device import DERDevice

SUPPORTED_MODES = (
    DERControlType.OP_MOD_CONNECT
    | DERControlType.OP_MOD_FIXED_PF_INJECT_W
    | DERControlType.OP_MOD_FIXED_W
    | DERControlType.OP_MOD_MAX_LIM_W
    | DERControlType.OP_MOD_TARGET_VAR
    | DERControlType.OP_MOD_TARGET_W
)
"""The DERControlType bits this client carries out (reported as modesSupported/Enabled)."""


class Channel(StrEnum):
    """What a command sets on a device; one command per channel is in force at a time."""

    LIMIT = "limit"
    CONNECTION = "connection"
    POWER_FACTOR = "power_factor"
    ACTIVE_POWER = "active_power"
    REACTIVE_POWER = "reactive_power"


@dataclass(frozen=True)
class Setpoint:
    """One command a device should be under: its type, value and unit."""

    command: CommandType
    value: float | None
    unit: str


def _scaled(value: int, multiplier: int) -> float:
    """``value`` x 10^``multiplier``, dividing for negative powers (0.95, not 0.9500...01)."""
    return value * 10.0**multiplier if multiplier >= 0 else value / 10.0**-multiplier


def modes_of(base: DERControlBase) -> dict[str, ModeValue]:
    """The modes a DERControlBase sets: percent (of setMaxW), W, var, signed power factor
    (negative when absorbing reactive power, i.e. under-excited) or on/off."""
    modes: dict[str, ModeValue] = {}
    if base.opModMaxLimW is not None:
        modes["opModMaxLimW"] = base.opModMaxLimW / 100.0
    if base.opModGenLimW is not None:
        modes["opModGenLimW"] = _scaled(base.opModGenLimW.value, base.opModGenLimW.multiplier)
    if base.opModConnect is not None:
        modes["opModConnect"] = base.opModConnect
    if base.opModFixedPFInjectW is not None:
        pf = base.opModFixedPFInjectW
        magnitude = _scaled(pf.displacement, pf.multiplier)
        modes["opModFixedPFInjectW"] = -magnitude if pf.excitation else magnitude
    if base.opModFixedW is not None:
        modes["opModFixedW"] = base.opModFixedW / 100.0
    if base.opModTargetW is not None:
        modes["opModTargetW"] = _scaled(base.opModTargetW.value, base.opModTargetW.multiplier)
    if base.opModTargetVar is not None:
        target = base.opModTargetVar
        modes["opModTargetVar"] = _scaled(target.value, target.multiplier)
    return modes


def event_of(control: DERControlResponse, primacy: int) -> ControlEvent:
    """A DERControl of a program with ``primacy`` as the event rules see it; ``ProtocolError``
    when its status is not one the spec defines."""
    status = control.EventStatus_
    if status.currentStatus not in set(EventStatus):
        raise ProtocolError(f"DERControl {control.mRID}: unknown status {status.currentStatus}")
    return ControlEvent(
        mrid=control.mRID.upper(),
        primacy=primacy,
        creation_time=control.creationTime,
        start=control.interval.start,
        duration=control.interval.duration,
        modes=modes_of(control.DERControlBase_),
        randomize_start=control.randomizeStart or 0,
        randomize_duration=control.randomizeDuration or 0,
        status=EventStatus(status.currentStatus),
        status_time=status.dateTime,
    )


def default_of(control: DefaultDERControl, primacy: int) -> DefaultControl:
    """A program's DefaultDERControl as the event rules see it."""
    return DefaultControl(control.mRID.upper(), primacy, modes_of(control.DERControlBase_))


def _shares(devices: Sequence[DERDevice]) -> dict[str, float]:
    """Each device's share of a site-wide watt value: by rating, or equal."""
    ratings = {d.id: d.rated_power_kw or 0.0 for d in devices}
    total = sum(ratings.values())
    if total <= 0:
        return {d.id: 1.0 / len(devices) for d in devices}
    return {device_id: rating / total for device_id, rating in ratings.items()}


def commands_for(
    modes: Mapping[str, ModeValue], devices: Sequence[DERDevice]
) -> dict[str, dict[Channel, Setpoint]]:
    """For each device, the setpoint of each channel the modes in force ask for."""
    if not devices:
        return {}
    shares = _shares(devices)
    plan: dict[str, dict[Channel, Setpoint]] = {}
    for device in devices:
        rating = device.rated_power_kw
        share = shares[device.id]
        channels: dict[Channel, Setpoint] = {}
        limits: list[Setpoint] = []
        if "opModMaxLimW" in modes:
            percent = float(modes["opModMaxLimW"])
            limits.append(
                Setpoint(CommandType.SET_POWER_LIMIT, percent, "%")
                if rating is None
                else Setpoint(CommandType.SET_POWER_LIMIT, round(rating * percent / 100, 3), "kW")
            )
        if "opModGenLimW" in modes:
            kw = round(float(modes["opModGenLimW"]) * share / 1000, 3)
            limits.append(Setpoint(CommandType.SET_POWER_LIMIT, kw, "kW"))
        if limits:
            units = {limit.unit for limit in limits}
            chosen = [limit for limit in limits if limit.unit == "kW"] if len(units) > 1 else limits
            channels[Channel.LIMIT] = min(chosen, key=lambda s: s.value or 0.0)
        if "opModConnect" in modes:
            kind = CommandType.CONNECT if modes["opModConnect"] else CommandType.DISCONNECT
            channels[Channel.CONNECTION] = Setpoint(kind, None, "kW")
        if "opModFixedPFInjectW" in modes:
            pf = float(modes["opModFixedPFInjectW"])
            channels[Channel.POWER_FACTOR] = Setpoint(CommandType.SET_POWER_FACTOR, pf, "")
        if "opModTargetW" in modes:
            kw = round(float(modes["opModTargetW"]) * share / 1000, 3)
            channels[Channel.ACTIVE_POWER] = Setpoint(CommandType.SET_ACTIVE_POWER, kw, "kW")
        elif "opModFixedW" in modes and rating is not None:
            kw = round(rating * float(modes["opModFixedW"]) / 100, 3)
            channels[Channel.ACTIVE_POWER] = Setpoint(CommandType.SET_ACTIVE_POWER, kw, "kW")
        if "opModTargetVar" in modes:
            kvar = round(float(modes["opModTargetVar"]) * share / 1000, 3)
            channels[Channel.REACTIVE_POWER] = Setpoint(
                CommandType.SET_REACTIVE_POWER, kvar, "kvar"
            )
        plan[device.id] = channels
    return plan


CHANNEL_MODES: dict[Channel, tuple[str, ...]] = {
    Channel.LIMIT: ("opModMaxLimW", "opModGenLimW"),
    Channel.CONNECTION: ("opModConnect",),
    Channel.POWER_FACTOR: ("opModFixedPFInjectW",),
    Channel.ACTIVE_POWER: ("opModTargetW", "opModFixedW"),
    Channel.REACTIVE_POWER: ("opModTargetVar",),
}
"""The modes each channel's setpoint is made from."""

RELEASE: dict[Channel, Setpoint] = {
    Channel.LIMIT: Setpoint(CommandType.CLEAR_POWER_LIMIT, None, "kW"),
    Channel.CONNECTION: Setpoint(CommandType.CONNECT, None, "kW"),
}
"""What is sent when a channel's control ends; other channels are left as the device has them
(DERIM has no command that hands a setpoint back to the device's own default)."""
