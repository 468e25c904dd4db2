"""Commands mapped onto SunSpec control models, as pure functions.

A command is carried out through the first control model the device has, in order of preference:

- ``set_power_limit`` (% or kW of rating) / ``clear_power_limit``: DER AC controls (704)
  ``WMaxLimPct`` + ``WMaxLimPctEna``, else immediate controls (123) ``WMaxLimPct`` +
  ``WMaxLim_Ena``.
- ``connect`` / ``disconnect``: 123 ``Conn``.
- ``set_power_factor`` (a signed power factor: positive over-excited, injecting vars; negative
  under-excited, absorbing): 704 ``PFWInj.PF`` / ``PFWInj.Ext`` + ``PFWInjEna``, else 123
  ``OutPFSet`` + ``OutPFSet_Ena``.
- ``set_reactive_power`` (kvar, or % of maximum vars): 704 ``VarSet`` / ``VarSetPct`` with
  ``VarSetMod`` + ``VarSetEna``, else (% only) 123 ``VArMaxPct`` with ``VArPct_Mod`` +
  ``VArPct_Ena``.
- ``set_active_power`` (kW, discharge positive; also ``battery_charge`` / ``battery_discharge``):
  storage controls (124) ``OutWRte`` / ``InWRte`` (% of ``WChaMax``) with ``StorCtl_Mod``, else
  704 ``WSet`` with ``WSetMod`` + ``WSetEna``.

Values are engineering values by point path (``PFWInj.PF`` for a point of a sub-group); setpoints
come before the flags that enable them, so a device never enables a stale setpoint.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from derim.adapters.modbus.codec import MISSING
from derim.adapters.sunspec.decode import DecodedBlock, DecodedValue
from derim.adapters.sunspec.models import PointDef, model_definition
from derim.errors import InvalidRequestError, ProtocolError
from derim.models.command import CommandRequest, CommandType

DER_CONTROLS, IMMEDIATE_CONTROLS, STORAGE_CONTROLS = 704, 123, 124
KILO = 1000.0
CHARGE, DISCHARGE = 1, 2
"""``StorCtl_Mod`` bits (model 124)."""
VAR_MAX_PCT, VARS = 1, 4
"""``VarSetMod`` codes (model 704)."""
WATTS = 1
"""``WSetMod`` code (model 704)."""
VAR_MAX = 2
"""``VArPct_Mod`` code (model 123)."""

MODELS_BY_COMMAND: dict[CommandType, tuple[int, ...]] = {
    CommandType.SET_POWER_LIMIT: (DER_CONTROLS, IMMEDIATE_CONTROLS),
    CommandType.CLEAR_POWER_LIMIT: (DER_CONTROLS, IMMEDIATE_CONTROLS),
    CommandType.CONNECT: (IMMEDIATE_CONTROLS,),
    CommandType.DISCONNECT: (IMMEDIATE_CONTROLS,),
    CommandType.SET_POWER_FACTOR: (DER_CONTROLS, IMMEDIATE_CONTROLS),
    CommandType.SET_REACTIVE_POWER: (DER_CONTROLS, IMMEDIATE_CONTROLS),
    CommandType.SET_ACTIVE_POWER: (STORAGE_CONTROLS, DER_CONTROLS),
}
"""Control models that can carry out each command, preferred first."""


@dataclass(frozen=True, slots=True)
class PointAt:
    """A control point and its offset (registers) from its model's ``ID`` register."""

    point: PointDef
    offset: int
    group: str | None


def choose_model(command: CommandRequest, present: Collection[int]) -> int:
    """The control model that will carry out ``command``; ``InvalidRequestError`` if the device
    has none of the models it needs."""
    candidates = MODELS_BY_COMMAND.get(command.command)
    if candidates is None:
        supported = ", ".join(sorted(c.value for c in MODELS_BY_COMMAND))
        raise InvalidRequestError("command", f"SunSpec devices take {supported}")
    for model_id in candidates:
        if model_id in present:
            return model_id
    raise InvalidRequestError(
        "command",
        f"{command.command.value} needs SunSpec model {' or '.join(map(str, candidates))}",
    )


def check(command: CommandRequest, model_id: int, rated_power_kw: float | None) -> None:
    """Check ``command``'s value and unit without device data; ``InvalidRequestError`` if wrong."""
    kind, value, unit = command.command, command.value, command.unit
    if kind in (CommandType.CLEAR_POWER_LIMIT, CommandType.CONNECT, CommandType.DISCONNECT):
        return
    if value is None:
        raise InvalidRequestError("value", f"{kind.value} needs a value")
    if kind is CommandType.SET_POWER_LIMIT:
        limit_percent(value, unit, rated_power_kw)
    elif kind is CommandType.SET_POWER_FACTOR:
        if not 0 < abs(value) <= 1:
            raise InvalidRequestError("value", "a power factor is between -1 and 1, not 0")
    elif kind is CommandType.SET_REACTIVE_POWER:
        if unit == "%" and not -100 <= value <= 100:
            raise InvalidRequestError("value", f"{value} % is outside -100..100 %")
        if unit not in ("%", "kvar") or (unit == "kvar" and model_id == IMMEDIATE_CONTROLS):
            allowed = "%" if model_id == IMMEDIATE_CONTROLS else "kvar or %"
            raise InvalidRequestError("unit", f"reactive power is given in {allowed} here")
    elif unit != "kW":
        raise InvalidRequestError("unit", "active power is given in kW")


def limit_percent(value: float, unit: str, rated_power_kw: float | None) -> float:
    """A power limit in percent of rating, from ``%`` or ``kW``; ``InvalidRequestError`` when
    outside 0-100 % or given in kW for a device without a rating."""
    if unit == "%":
        percent = value
    elif unit == "kW":
        if not rated_power_kw:
            raise InvalidRequestError("unit", "a limit in kW needs the device's rated_power_kw")
        percent = 100 * value / rated_power_kw
    else:
        raise InvalidRequestError("unit", "a power limit is given in % or kW")
    if not 0 <= percent <= 100:
        raise InvalidRequestError("value", f"{percent:.1f} % is outside 0-100 % of rating")
    return percent


def targets(
    command: CommandRequest, model_id: int, current: DecodedBlock, rated_power_kw: float | None
) -> dict[str, float]:
    """Engineering values to write into ``model_id`` by point path, setpoints before enables.

    ``current`` is the model as just read (for 124, ``WChaMax`` converts kW to a rate).
    """
    kind, value = command.command, command.value or 0.0
    if kind is CommandType.SET_POWER_LIMIT:
        percent = limit_percent(value, command.unit, rated_power_kw)
        enable = "WMaxLimPctEna" if model_id == DER_CONTROLS else "WMaxLim_Ena"
        return {"WMaxLimPct": percent, enable: 1}
    if kind is CommandType.CLEAR_POWER_LIMIT:
        return {"WMaxLimPctEna" if model_id == DER_CONTROLS else "WMaxLim_Ena": 0}
    if kind in (CommandType.CONNECT, CommandType.DISCONNECT):
        return {"Conn": 1 if kind is CommandType.CONNECT else 0}
    if kind is CommandType.SET_POWER_FACTOR:
        if model_id == DER_CONTROLS:
            return {"PFWInj.PF": abs(value), "PFWInj.Ext": 0 if value > 0 else 1, "PFWInjEna": 1}
        return {"OutPFSet": value, "OutPFSet_Ena": 1}
    if kind is CommandType.SET_REACTIVE_POWER:
        if model_id == IMMEDIATE_CONTROLS:
            return {"VArMaxPct": value, "VArPct_Mod": VAR_MAX, "VArPct_Ena": 1}
        if command.unit == "%":
            return {"VarSetPct": value, "VarSetMod": VAR_MAX_PCT, "VarSetEna": 1}
        return {"VarSet": value * KILO, "VarSetMod": VARS, "VarSetEna": 1}
    if model_id == DER_CONTROLS:
        return {"WSet": value * KILO, "WSetMod": WATTS, "WSetEna": 1}
    return _storage_targets(value, current)


def _storage_targets(power_kw: float, current: DecodedBlock) -> dict[str, float]:
    """Model 124 values for ``power_kw`` (discharge positive; 0 returns to the device's own
    schedule)."""
    if power_kw == 0:
        return {"StorCtl_Mod": 0}
    rate_w = current.get("WChaMax")
    if not isinstance(rate_w, int | float) or rate_w <= 0:
        raise ProtocolError("model 124 has no usable WChaMax to express a rate against")
    percent = 100 * abs(power_kw) * KILO / rate_w
    if percent > 100:
        raise InvalidRequestError(
            "value", f"{abs(power_kw)} kW is above the battery's WChaMax of {rate_w / KILO} kW"
        )
    if power_kw > 0:
        return {"OutWRte": percent, "StorCtl_Mod": DISCHARGE}
    return {"InWRte": percent, "StorCtl_Mod": CHARGE}


def locate(model_id: int, path: str) -> PointAt:
    """Where the point ``path`` (``name`` or ``group.name``) of ``model_id`` sits."""
    group = model_definition(model_id).group
    group_name, _, name = path.rpartition(".")
    offset = 0
    if group_name:
        offset = group.points_size
        for sub in group.groups:
            if sub.name == group_name:
                group = sub
                break
            if sub.repeating or sub.groups:
                raise ProtocolError(f"model {model_id}: cannot place group {group_name}")
            offset += sub.points_size
        else:
            raise ProtocolError(f"model {model_id} has no group {group_name}")
    try:
        point = group.point(name)
    except KeyError:
        raise ProtocolError(f"model {model_id} has no point {path}") from None
    return PointAt(point, offset + point.offset, group_name or None)


def encode(model_id: int, path: str, value: float, current: DecodedBlock) -> list[int]:
    """Registers holding ``value`` at point ``path``, scaled by the scale factor in ``current``
    (the model as just read); ``InvalidRequestError`` if the point cannot hold it."""
    at = locate(model_id, path)
    point = at.point
    exponent = _exponent(at, current)
    raw = round(value / 10**exponent)
    bits = 16 * point.size
    signed = point.type in ("int16", "int32")
    low, high = (-(1 << (bits - 1)) + 1, (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 2)
    if not low <= raw <= high:
        raise InvalidRequestError("value", f"{value} does not fit {path} ({point.type})")
    unsigned = raw & ((1 << bits) - 1)
    return [(unsigned >> (16 * (point.size - 1 - i))) & 0xFFFF for i in range(point.size)]


def read_back_matches(
    model_id: int, written: Mapping[str, float], after: DecodedBlock
) -> dict[str, DecodedValue]:
    """The points of ``written`` that the model, read again, does not hold (within the scale
    factor's resolution), with what it holds instead; empty when all match."""
    wrong: dict[str, DecodedValue] = {}
    for path, expected in written.items():
        at = locate(model_id, path)
        held = _value(at, after)
        step = 10 ** _exponent(at, after)
        if not isinstance(held, int | float) or not math.isclose(
            held, expected, abs_tol=step / 2 + 1e-9
        ):
            wrong[path] = held
    return wrong


def _value(at: PointAt, block: DecodedBlock) -> DecodedValue:
    """The decoded value of the point ``at`` in ``block`` (MISSING when absent)."""
    scope = block.get(at.group) if at.group else block
    if not isinstance(scope, dict):
        return MISSING
    return scope.get(at.point.name, MISSING)


def _exponent(at: PointAt, block: DecodedBlock) -> int:
    """The point's power-of-ten scale factor as ``block`` holds it (0 when unscaled)."""
    sf = at.point.sf
    if sf is None:
        return 0
    if isinstance(sf, int):
        return sf
    group = block.get(at.group) if at.group else None
    value = group.get(sf) if isinstance(group, dict) and sf in group else block.get(sf)
    if not isinstance(value, int):
        raise ProtocolError(f"{at.point.name}: scale factor {sf} is not implemented")
    return value
